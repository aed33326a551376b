"""Validate decoded Health Connect records in one pass: reason codes and a quality score.

Why this exists: a worker must decide, per message and in microseconds per record, which
records are fit to feed statistics and whether the file as a whole is trustworthy enough to
produce a training record or should be quarantined. Everything here is pure: the clock
comes in as ``now_ms``, nothing is read or logged, and only reason *codes* and counts are
reported (never values, which may be health data).

Rules (each failure is a reason code in ``ValidationReport.issue_counts``)
--------------------------------------------------------------------------
Structure and metadata (record excluded)
  ``malformed_record`` record is not a mapping; ``missing_metadata``; ``missing_record_id``;
  ``missing_data_origin``; ``duplicate_record_id`` (second and later use of a
  ``metadata.id`` in the file; the first occurrence is kept).
Timestamps (record excluded)
  ``missing_timestamp`` (absent or not an integer); ``start_after_end``;
  ``timestamp_before_2000`` (before 2000-01-01T00:00Z); ``timestamp_in_future`` (the record
  starts later than its export time plus ``config.max_future_skew_ms``, see below);
  ``bad_zone_offset`` (not ``Z``, ``±HH``, ``±HHMM``, ``±HH:MM`` or ``±HH:MM:SS`` within
  ±18:00).
Days in progress (record kept, not an issue)
  The app exports a running-total day while it is still going: Samsung Health's steps record
  runs 00:00-23:59:59.999 local time and is written at, say, 17:25. Each record's *export
  time* is its ``appRecordFetchTimeEpochMillis`` when that lies between the record's start
  and the upload time plus the allowed skew (the file is hostile input, so the value is
  bounded), else the upload time (``upload_ms``, never later than ``now_ms``), else
  ``now_ms``. An interval of at most 25 h (a running-total day) that ends after its export
  time is *in progress*: it is kept with the export time as its effective end (a shallow
  copy, ``endTimeEpochMillis`` replaced and ``IN_PROGRESS_KEY`` set) and counted in
  ``ValidationReport.in_progress_records``. A sleep session or a longer interval that ends
  after its export time plus skew is ``timestamp_in_future``, as before. So the outcome
  depends on the file and the message, not on when a worker reads them (the worker's
  clock counts only for a message without an upload time).
Values (record excluded)
  ``missing_value`` (measurement absent or not a number); ``unknown_enum_value``;
  ``glucose_out_of_range`` (20-600 mg/dL); ``hrv_out_of_range`` (RMSSD 1-300 ms);
  ``steps_out_of_range`` (0-100000 per record); ``active_calories_out_of_range``
  (0-10000 kcal per record); ``sleep_duration_out_of_range`` (session 0-24 h);
  ``sleep_stage_outside_session``; ``sleep_stage_overlap``;
  ``heart_rate_no_samples`` (empty series); ``heart_rate_no_valid_samples`` (every sample
  was dropped).
Heart-rate samples (sample dropped, counted per sample; the record is kept with the rest)
  ``heart_rate_out_of_range`` (25-250 bpm); ``sample_outside_interval``;
  ``missing_value`` (sample without an integer time or numeric bpm).
Completeness (record kept, only lowers completeness)
  ``missing_zone_offset`` (a zone offset is None: the record is read as UTC);
  ``sleep_no_stages`` (session without stages).
File
  ``empty_file`` (no records at all).

Streaming: ``validate`` takes any iterable of records (``avro.decode_stream`` decodes them
one at a time) and takes them a chunk at a time (256 records; sixteen heart-rate
records, which carry many samples each); given a ``sink``, it hands each chunk's valid
records to ``sink.extend`` instead of keeping them, so a million-record file is never held
as a million dicts. A chunk in which every record passes every rule is checked with a few
C-speed passes over the whole chunk; any other chunk goes record by record. Files of more than
``DIGEST_IDS_ABOVE`` records remember record ids by a 64-bit BLAKE2b digest rather than
the id string (a false ``duplicate_record_id`` has probability ~n^2/2^65: 3e-8 at 1M).

An excluded record is counted once, under the first rule it breaks, in the order above.

Quality score
-------------
With N records, each record r contributes:

* ``usable(r)``: 0 if excluded, 1 if kept whole, and ``kept / total`` samples for a
  heart-rate record kept with some samples dropped;
* ``complete(r)``: 0 if it has a completeness issue, else 1;
* ``consistent(r)``: 0 if it contradicts itself or the file (``duplicate_record_id``,
  ``start_after_end``, ``sleep_stage_overlap``, ``sleep_stage_outside_session``,
  ``sample_outside_interval``), else 1.

``completeness = Σ complete / N``, ``validity = Σ usable / N``,
``consistency = Σ consistent / N`` and

    score = 0.15 * completeness + 0.70 * validity + 0.15 * consistency

Validity dominates because it is the share of the file that statistics will actually use;
a file passes when ``score >= config.quality_threshold`` and at least one record is valid.
With the default threshold 0.7, a fully complete and consistent file passes while at most
~43 % of it is invalid. An empty file scores 0. See ``docs/quality-score.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice, repeat
from operator import is_, le, or_
from typing import Any, Protocol, TypeGuard

from etl_engine.domain.model import DecodedFile, DomainConfig, Record, ValidationReport
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES

MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_OFFSET_SECONDS = 18 * 3600
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

WEIGHT_COMPLETENESS = 0.15
WEIGHT_VALIDITY = 0.70
WEIGHT_CONSISTENCY = 0.15

GLUCOSE_RANGE = (20.0, 600.0)
HEART_RATE_RANGE = (25, 250)
HRV_RANGE = (1.0, 300.0)
STEPS_RANGE = (0, 100_000)
ACTIVE_KCAL_RANGE = (0.0, 10_000.0)
SLEEP_MAX_MS = DAY_MS

MEAL_TYPES = frozenset({"UNKNOWN", "BREAKFAST", "LUNCH", "DINNER", "SNACK"})
RELATIONS_TO_MEAL = frozenset({"UNKNOWN", "GENERAL", "FASTING", "BEFORE_MEAL", "AFTER_MEAL"})
SPECIMEN_SOURCES = frozenset(
    {"INTERSTITIAL_FLUID", "CAPILLARY_BLOOD", "PLASMA", "SERUM", "TEARS", "WHOLE_BLOOD",
     "UNKNOWN"}
)
SLEEP_STAGES = frozenset({"UNKNOWN", "AWAKE", "SLEEPING", "OUT_OF_BED", "LIGHT", "DEEP", "REM"})

# Codes that also mark a record inconsistent (see the module docstring).
CONSISTENCY_CODES = frozenset(
    {"duplicate_record_id", "start_after_end", "sleep_stage_overlap",
     "sleep_stage_outside_session", "sample_outside_interval"}
)

# Set (True) on the copy of a record that was still in progress at its export time.
IN_PROGRESS_KEY = "etlInProgress"
MAX_IN_PROGRESS_MS = 25 * 3_600_000
FETCH_KEY = "appRecordFetchTimeEpochMillis"

KNOWN_RECORD_TYPES: tuple[str, ...] = SUPPORTED_RECORD_TYPES
INSTANT_TYPES = frozenset({"BloodGlucoseRecord", "HeartRateVariabilityRmssdRecord"})
_BY_KEY = {name.lower(): name for name in KNOWN_RECORD_TYPES}


# --- shared helpers (also used by the processors) ------------------------------------------
@lru_cache(maxsize=1024)
def canonical_record_type(name: str) -> str:
    """Map ``BloodGlucoseRecord``, ``AvroBloodGlucoseRecord``, a namespaced Avro name or
    ``blood_glucose`` to the canonical type name; unknown names come back unchanged."""
    short = name.rsplit(".", 1)[-1]
    key = short.replace("_", "").lower()
    if key.startswith("avro"):
        key = key[4:]
    if not key.endswith("record"):
        key += "record"
    return _BY_KEY.get(key, short)


def _offset_uncached(zone: str) -> int | None:
    if zone == "Z":
        return 0
    if len(zone) < 3 or zone[0] not in "+-":
        return None
    body = zone[1:]
    if not body.isascii():
        return None
    n = len(body)
    if n == 2 and body.isdigit():
        h, m, s = int(body), 0, 0
    elif n == 4 and body.isdigit():
        h, m, s = int(body[:2]), int(body[2:]), 0
    elif n == 5 and body[2] == ":" and (body[:2] + body[3:]).isdigit():
        h, m, s = int(body[:2]), int(body[3:]), 0
    elif (n == 8 and body[2] == ":" and body[5] == ":"
          and (body[:2] + body[3:5] + body[6:]).isdigit()):
        h, m, s = int(body[:2]), int(body[3:5]), int(body[6:])
    else:
        return None
    if m >= 60 or s >= 60:
        return None
    total = h * 3600 + m * 60 + s
    if total > MAX_OFFSET_SECONDS:
        return None
    return -total if zone[0] == "-" else total


_offset_cached = lru_cache(maxsize=512)(_offset_uncached)


def zone_offset_seconds(zone: object) -> int | None:
    """Offset in seconds for a zone id; None (=UTC) gives 0; unparseable gives None.

    Cached because a file repeats the same handful of offsets millions of times.
    """
    if zone is None:
        return 0
    if type(zone) is not str:
        return None
    return _offset_cached(zone)


def parse_zone_offset(zone: str | None) -> int:
    """Offset in seconds for a zone id (None means UTC); raises ValueError if malformed."""
    seconds = zone_offset_seconds(zone)
    if seconds is None:
        raise ValueError(f"bad zone offset: {zone!r}")
    return seconds


# --- per-type value checks --------------------------------------------------------------------
# A value check returns (reason code or None, record to keep, usable fraction,
# inconsistent?, per-sample drop counts or None).
_Result = tuple[str | None, Record, float, bool, dict[str, int] | None]
_Check = Callable[[Record, int, int], _Result]
_OK = 1.0


def _is_num(v: object) -> TypeGuard[float]:
    """int or float but not bool (a bool is an int to Python, never a measurement)."""
    t = type(v)
    return t is float or t is int


def _check_glucose(rec: Record, s: int, e: int) -> _Result:
    v = rec.get("levelInMilligramsPerDeciliter")
    if not _is_num(v):
        return "missing_value", rec, 0.0, False, None
    if not GLUCOSE_RANGE[0] <= v <= GLUCOSE_RANGE[1]:
        return "glucose_out_of_range", rec, 0.0, False, None
    meal = rec.get("mealType")
    rel = rec.get("relationToMeal")
    src = rec.get("specimenSource")
    if ((meal is not None and meal not in MEAL_TYPES)
            or (rel is not None and rel not in RELATIONS_TO_MEAL)
            or (src is not None and src not in SPECIMEN_SOURCES)):
        return "unknown_enum_value", rec, 0.0, False, None
    return None, rec, _OK, False, None


def _check_hrv(rec: Record, s: int, e: int) -> _Result:
    v = rec.get("heartRateVariabilityRmssd")
    if not _is_num(v):
        return "missing_value", rec, 0.0, False, None
    if not HRV_RANGE[0] <= v <= HRV_RANGE[1]:
        return "hrv_out_of_range", rec, 0.0, False, None
    return None, rec, _OK, False, None


def _check_steps(rec: Record, s: int, e: int) -> _Result:
    v = rec.get("count")
    if type(v) is not int:
        return "missing_value", rec, 0.0, False, None
    if not STEPS_RANGE[0] <= v <= STEPS_RANGE[1]:
        return "steps_out_of_range", rec, 0.0, False, None
    return None, rec, _OK, False, None


def _check_calories(rec: Record, s: int, e: int) -> _Result:
    v = rec.get("energyInKilocalories")
    if not _is_num(v):
        return "missing_value", rec, 0.0, False, None
    if not ACTIVE_KCAL_RANGE[0] <= v <= ACTIVE_KCAL_RANGE[1]:
        return "active_calories_out_of_range", rec, 0.0, False, None
    return None, rec, _OK, False, None


def _check_sleep(rec: Record, s: int, e: int) -> _Result:
    if e - s > SLEEP_MAX_MS:
        return "sleep_duration_out_of_range", rec, 0.0, False, None
    stages = rec.get("stages")
    if not stages:
        return None, rec, _OK, False, None
    if type(stages) is not list:
        return "malformed_record", rec, 0.0, False, None
    spans: list[tuple[int, int]] = []
    for st in stages:
        if type(st) is not dict:
            return "malformed_record", rec, 0.0, False, None
        a = st.get("startTimeEpochMillis")
        b = st.get("endTimeEpochMillis")
        if type(a) is not int or type(b) is not int:
            return "missing_timestamp", rec, 0.0, False, None
        if a > b:
            return "start_after_end", rec, 0.0, True, None
        if st.get("stage") not in SLEEP_STAGES:
            return "unknown_enum_value", rec, 0.0, False, None
        if a < s or b > e:
            return "sleep_stage_outside_session", rec, 0.0, True, None
        spans.append((a, b))
    spans.sort()
    prev_end = spans[0][1]
    for a, b in spans[1:]:
        if a < prev_end:
            return "sleep_stage_overlap", rec, 0.0, True, None
        prev_end = b
    return None, rec, _OK, False, None


def _check_heart_rate(rec: Record, s: int, e: int) -> _Result:
    samples = rec.get("samples")
    if not samples or type(samples) is not list:
        return "heart_rate_no_samples", rec, 0.0, False, None
    lo, hi = HEART_RATE_RANGE
    try:  # fast path: every sample well-formed and plausible, nothing copied
        for smp in samples:
            if not (s <= smp["timeEpochMillis"] <= e and lo <= smp["beatsPerMinute"] <= hi):
                raise ValueError
        return None, rec, _OK, False, None
    except (KeyError, TypeError, ValueError):
        pass
    return _filter_samples(rec, samples, s, e)


def _filter_samples(
    rec: Record, samples: list[Any], s: int, e: int
) -> _Result:
    """Slow path: drop bad samples and count each one under its reason code."""
    lo, hi = HEART_RATE_RANGE
    kept: list[Any] = []
    drops: dict[str, int] = {}
    for smp in samples:
        t: Any = smp.get("timeEpochMillis") if type(smp) is dict else None
        b: Any = smp.get("beatsPerMinute") if type(smp) is dict else None
        if type(t) is not int or not _is_num(b):
            code = "missing_value"
        elif not s <= t <= e:
            code = "sample_outside_interval"
        elif not lo <= b <= hi:
            code = "heart_rate_out_of_range"
        else:
            kept.append(smp)
            continue
        drops[code] = drops.get(code, 0) + 1
    inconsistent = "sample_outside_interval" in drops
    if not kept:
        return "heart_rate_no_valid_samples", rec, 0.0, inconsistent, drops
    out = dict(rec)  # shallow copy: only the samples list differs
    out["samples"] = kept
    return None, out, len(kept) / len(samples), inconsistent, drops


def _check_none(rec: Record, s: int, e: int) -> _Result:
    return None, rec, _OK, False, None


_VALUE_CHECKS: dict[str, _Check] = {
    "BloodGlucoseRecord": _check_glucose,
    "HeartRateRecord": _check_heart_rate,
    "HeartRateVariabilityRmssdRecord": _check_hrv,
    "SleepSessionRecord": _check_sleep,
    "StepsRecord": _check_steps,
    "ActiveCaloriesBurnedRecord": _check_calories,
}


# --- the pass -------------------------------------------------------------------------------
DIGEST_IDS_ABOVE = 100_000


class Decoded(Protocol):
    """A decoded file: ``DecodedFile`` (a list) or ``avro.DecodeStream`` (an iterator)."""

    @property
    def record_type(self) -> str: ...

    @property
    def records(self) -> Iterable[Any]: ...


class RecordSink(Protocol):
    """Where streamed validation puts valid records (``processors.columns``), a chunk at a
    time and in file order."""

    def extend(self, recs: list[Record]) -> None: ...


def _digest(rid: str) -> bytes:
    return hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest()


# --- whole chunks at once ---------------------------------------------------------------------
# Records are taken a chunk at a time. A chunk in which every record passes every rule (the
# usual export) is checked with C-speed ``map``/``set``/``all`` passes and kept whole; any
# other chunk goes through ``_check_record``, one record at a time, which defines the rules.
# The chunk checks below must accept a chunk exactly when that would keep every record of
# it unchanged (tests compare the two). Heart-rate chunks are short: a record can carry
# thousands of samples, and a chunk is held in memory while it is checked.
FAST_CHUNKS = True
CHUNK_DEFAULT = 256
CHUNK_RECORDS = {"HeartRateRecord": 16}
_ONLY_DICT = frozenset({dict})
_ONLY_STR = frozenset({str})
_ONLY_INT = frozenset({int})
_NUMBER_TYPES = frozenset({int, float})
_get: Callable[..., Any] = dict.get  # map(_get, records, repeat(key)): C-speed field reads
_CleanValues = Callable[[list[Record], list[Any], list[Any]], bool]


def _between(values: list[Any], lo: float, hi: float) -> bool:
    """``lo <= v <= hi`` for every value (False for NaN, as in the per-record checks)."""
    return all(map(le, repeat(lo), values)) and all(map(le, values, repeat(hi)))


def _numbers_between(chunk: list[Record], key: str, lo: float, hi: float) -> bool:
    values = list(map(_get, chunk, repeat(key)))
    return set(map(type, values)) <= _NUMBER_TYPES and _between(values, lo, hi)


def _clean_glucose(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    return (_numbers_between(chunk, "levelInMilligramsPerDeciliter", *GLUCOSE_RANGE)
            and set(map(_get, chunk, repeat("mealType"))) <= _MEAL_OR_NONE
            and set(map(_get, chunk, repeat("relationToMeal"))) <= _RELATION_OR_NONE
            and set(map(_get, chunk, repeat("specimenSource"))) <= _SPECIMEN_OR_NONE)


def _clean_hrv(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    return _numbers_between(chunk, "heartRateVariabilityRmssd", *HRV_RANGE)


def _clean_steps(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    counts = list(map(_get, chunk, repeat("count")))
    return set(map(type, counts)) == _ONLY_INT and _between(counts, *STEPS_RANGE)


def _clean_calories(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    return _numbers_between(chunk, "energyInKilocalories", *ACTIVE_KCAL_RANGE)


def _clean_heart_rate(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    """Every record has samples, and every sample lies in its record's interval and range
    (``_check_heart_rate``'s fast path; a malformed sample raises, which means "no")."""
    lists = list(map(_get, chunk, repeat("samples")))
    if set(map(type, lists)) != {list} or not all(lists):
        return False
    lo, hi = HEART_RATE_RANGE
    for samples, s, e in zip(lists, starts, ends, strict=True):  # as fast as map here
        for smp in samples:
            if not (s <= smp["timeEpochMillis"] <= e and lo <= smp["beatsPerMinute"] <= hi):
                return False
    return True


_MEAL_OR_NONE = MEAL_TYPES | {None}
_RELATION_OR_NONE = RELATIONS_TO_MEAL | {None}
_SPECIMEN_OR_NONE = SPECIMEN_SOURCES | {None}
_CLEAN_VALUES: dict[str, _CleanValues] = {
    "BloodGlucoseRecord": _clean_glucose,
    "HeartRateRecord": _clean_heart_rate,
    "HeartRateVariabilityRmssdRecord": _clean_hrv,
    "StepsRecord": _clean_steps,
    "ActiveCaloriesBurnedRecord": _clean_calories,
}  # sleep sessions (few per file, stages to check) always go record by record


def _clean_chunk(
    chunk: list[Record], clean_values: _CleanValues, instant: bool, seen: set[str | bytes],
    digest: Callable[[str], bytes] | None, min_ms: int, max_ms: int,
) -> tuple[int, int] | None:
    """If every record of ``chunk`` passes every rule and none is in progress: add their ids
    to ``seen`` and return how many lack a zone offset (kept, but incomplete) and the latest
    export time. Otherwise None, nothing changed. ``max_ms``: the latest export time a
    record may claim (upload time plus skew)."""
    try:
        if set(map(type, chunk)) != _ONLY_DICT:
            return None
        metas = list(map(_get, chunk, repeat("metadata")))
        if set(map(type, metas)) != _ONLY_DICT:
            return None
        ids = list(map(_get, metas, repeat("id")))
        if set(map(type, ids)) != _ONLY_STR or not all(ids):
            return None
        origins = set(map(_get, metas, repeat("dataOriginPackageName")))
        if set(map(type, origins)) != _ONLY_STR or "" in origins:
            return None
        keys = ids if digest is None else list(map(digest, ids))
        unique = set(keys)
        if len(unique) != len(keys) or not unique.isdisjoint(seen):
            return None  # a repeated id
        if instant:
            starts = ends = list(map(_get, chunk, repeat("timeEpochMillis")))
            zones1 = zones2 = list(map(_get, chunk, repeat("zoneOffsetId")))
        else:
            starts = list(map(_get, chunk, repeat("startTimeEpochMillis")))
            ends = list(map(_get, chunk, repeat("endTimeEpochMillis")))
            zones1 = list(map(_get, chunk, repeat("startZoneOffsetId")))
            zones2 = list(map(_get, chunk, repeat("endZoneOffsetId")))
            if set(map(type, ends)) != _ONLY_INT or not all(map(le, starts, ends)):
                return None
        if set(map(type, starts)) != _ONLY_INT or min(starts) < min_ms:
            return None
        fetches = list(map(_get, chunk, repeat(FETCH_KEY)))
        if (set(map(type, fetches)) != _ONLY_INT or max(fetches) > max_ms
                or not all(map(le, ends, fetches))):
            return None  # an export time out of bounds, or a record still in progress
        zones = set(zones1).union(zones2)
        if any(zone_offset_seconds(z) is None for z in zones):
            return None
        if not clean_values(chunk, starts, ends):
            return None
    except (TypeError, KeyError):  # unhashable or malformed values: record by record
        return None
    seen.update(keys)  # from a list, not a set: ``seen`` then grows as with one add each
    latest = max(fetches)
    if None not in zones:
        return 0, latest
    if instant:
        return zones1.count(None), latest
    return sum(map(or_, map(is_, zones1, repeat(None)), map(is_, zones2, repeat(None)))), latest


def _export_ms(rec: Record, start: int, ceiling: int, max_ms: int) -> int:
    """The record's export time: the app's fetch time when it is plausible (not before the
    record's start, not after the upload plus skew), else the upload time (``ceiling``)."""
    fetch = rec.get(FETCH_KEY)
    if type(fetch) is int and start <= fetch <= max_ms:
        return fetch
    return ceiling


def _may_be_in_progress(rtype: str, start: int, end: int) -> bool:
    """Only a running total of at most a day (25 h: a DST day) is exported while going; a
    sleep session is written when it ends, and a longer "interval" is a bad timestamp."""
    return rtype != "SleepSessionRecord" and end - start <= MAX_IN_PROGRESS_MS


def _in_progress(rec: Record, end: int) -> Record:
    """A copy of a record that was still going at its export time, ending then."""
    out = dict(rec)
    out["endTimeEpochMillis"] = end
    out[IN_PROGRESS_KEY] = True
    return out


def _add_ones(total: float, n: int) -> float:
    """``total`` after adding 1.0 ``n`` times, as ``_check_record`` does record by record:
    in one addition when that is exact (a whole number below 2**53, the usual case)."""
    if total.is_integer() and total + n < 2**53:
        return total + n
    for _ in range(n):
        total += 1.0
    return total


@dataclass(slots=True)
class _Rules:
    """What the per-record checks need to know about the file and the message."""

    rtype: str
    check: _Check
    known_instant: bool | None  # None: a type we do not know, decided per record
    digest: Callable[[str], bytes] | None
    ceiling: int  # the upload time (never later than the worker's clock)
    skew: int

    @property
    def max_ms(self) -> int:
        return self.ceiling + self.skew


@dataclass(slots=True)
class _Tally:
    """Counts across the file: the quality score and the report are made from these."""

    issues: dict[str, int] = field(default_factory=dict)
    seen: set[str | bytes] = field(default_factory=set)
    usable_sum: float = 0.0
    incomplete: int = 0
    inconsistent: int = 0
    total: int = 0
    kept: int = 0
    in_progress: int = 0
    latest_export: int = 0

    def count(self, code: str, n: int = 1) -> None:
        self.issues[code] = self.issues.get(code, 0) + n


def _identity_code(rec: Record, rules: _Rules, tally: _Tally) -> str | None:
    """The first metadata rule the record breaks (its id joins the seen set if new)."""
    meta = rec.get("metadata")
    if type(meta) is not dict:
        return "missing_metadata"
    rid = meta.get("id")
    if not rid or type(rid) is not str:
        return "missing_record_id"
    key = rid if rules.digest is None else rules.digest(rid)
    if key in tally.seen:
        return "duplicate_record_id"
    tally.seen.add(key)
    origin = meta.get("dataOriginPackageName")
    if not origin or type(origin) is not str:
        return "missing_data_origin"
    return None


def _times(rec: Record, instant: bool) -> tuple[Any, Any, Any, Any]:
    """(start, end, start zone, end zone); an instant's start and end are its one time."""
    if instant:
        t, zone = rec.get("timeEpochMillis"), rec.get("zoneOffsetId")
        return t, t, zone, zone
    return (rec.get("startTimeEpochMillis"), rec.get("endTimeEpochMillis"),
            rec.get("startZoneOffsetId"), rec.get("endZoneOffsetId"))


def _time_code(rec: Record, s: Any, e: Any, z1: Any, z2: Any,
               rules: _Rules) -> tuple[str | None, int]:
    """(the first timestamp rule the record breaks, its export time)."""
    if type(s) is not int or type(e) is not int:
        return "missing_timestamp", 0
    if s > e:
        return "start_after_end", 0
    if s < MIN_TIMESTAMP_MS:
        return "timestamp_before_2000", 0
    export = _export_ms(rec, s, rules.ceiling, rules.max_ms)
    if s > export + rules.skew or (
            e > export + rules.skew and not _may_be_in_progress(rules.rtype, s, e)):
        return "timestamp_in_future", export
    offset = zone_offset_seconds
    if offset(z1) is None or (z2 is not z1 and offset(z2) is None):
        return "bad_zone_offset", export
    return None, export


def _check_record(rec: Any, rules: _Rules, tally: _Tally) -> Record | None:
    """The reference rules for one record: the record to keep (maybe a trimmed copy), or
    None with the reason counted under the first rule it breaks (module doc)."""
    tally.total += 1
    if type(rec) is not dict:
        tally.count("malformed_record")
        return None
    code = _identity_code(rec, rules, tally)
    instant = rules.known_instant
    if instant is None:
        instant = "timeEpochMillis" in rec
    s, e, z1, z2 = _times(rec, instant)
    # completeness is a property of the record, counted whether or not it is kept
    if z1 is None or z2 is None:
        tally.incomplete += 1
        tally.count("missing_zone_offset")
    elif rules.rtype == "SleepSessionRecord" and not rec.get("stages"):
        tally.incomplete += 1
        tally.count("sleep_no_stages")
    export = 0
    if code is None:
        code, export = _time_code(rec, s, e, z1, z2, rules)
    if code is not None:
        tally.count(code)
        tally.inconsistent += code in CONSISTENCY_CODES
        return None
    # still going when it was exported (a long or sleep record here is within skew)
    started = e > export and not instant and _may_be_in_progress(rules.rtype, s, e)
    if started:
        e = max(s, export)
        rec = _in_progress(rec, e)
    vcode, kept, usable, bad_consistency, drops = rules.check(rec, s, e)
    for k, n in (drops or {}).items():
        tally.count(k, n)
    tally.inconsistent += bad_consistency
    if vcode is not None:
        tally.count(vcode)
        return None
    tally.usable_sum += usable
    tally.kept += 1
    tally.in_progress += started
    tally.latest_export = max(tally.latest_export, export)
    return kept


def _take_clean(chunk: list[Record], clean: _CleanValues, rules: _Rules,
                tally: _Tally) -> bool:
    """Count a chunk whose every record passes every rule at once (``_clean_chunk``)."""
    done = _clean_chunk(chunk, clean, bool(rules.known_instant), tally.seen, rules.digest,
                        MIN_TIMESTAMP_MS, rules.max_ms)
    if done is None:
        return False
    missing, chunk_export = done
    n = len(chunk)
    tally.latest_export = max(tally.latest_export, chunk_export)
    tally.total += n
    tally.kept += n
    tally.usable_sum = _add_ones(tally.usable_sum, n)
    if missing:
        tally.incomplete += missing
        tally.count("missing_zone_offset", missing)
    return True


def validate(
    decoded: DecodedFile | Decoded, *, now_ms: int, config: DomainConfig,
    sink: RecordSink | None = None, upload_ms: int | None = None,
) -> ValidationReport:
    """Check every record once; keep the usable ones (in ``valid_records``, or handed to
    ``sink``); score the file (see module doc). ``upload_ms``: the message's upload time,
    which bounds the export times the file may claim (the worker's clock ``now_ms`` bounds
    it in turn)."""
    rtype = canonical_record_type(decoded.record_type)
    records = decoded.records
    expected = getattr(decoded, "record_count", None)
    if expected is None:
        expected = len(records) if isinstance(records, list) else 0
    rules = _Rules(
        rtype=rtype, check=_VALUE_CHECKS.get(rtype, _check_none),
        known_instant=(True if rtype in INSTANT_TYPES
                       else False if rtype in _VALUE_CHECKS else None),
        digest=_digest if expected > DIGEST_IDS_ABOVE else None,
        ceiling=now_ms if upload_ms is None else min(upload_ms, now_ms),
        skew=config.max_future_skew_ms)
    tally = _Tally()
    valid: list[Record] = []
    keep = valid.extend if sink is None else sink.extend
    clean = _CLEAN_VALUES.get(rtype) if FAST_CHUNKS else None
    it = iter(records)
    while chunk := list(islice(it, CHUNK_RECORDS.get(rtype, CHUNK_DEFAULT))):
        if clean is not None and _take_clean(chunk, clean, rules, tally):
            keep(chunk)  # every record kept whole
            continue
        batch = [kept for rec in chunk
                 if (kept := _check_record(rec, rules, tally)) is not None]
        keep(batch)
    return _report(rtype, tally, valid, sink, config.quality_threshold)


def _report(rtype: str, tally: _Tally, valid: list[Record], sink: RecordSink | None,
            threshold: float) -> ValidationReport:
    """Score the file from its tally (module doc) and say whether it passes."""
    total = tally.total
    if total == 0:
        return ValidationReport(
            record_type=rtype, total_records=0, valid_records=[], quality_score=0.0,
            components={"completeness": 0.0, "validity": 0.0, "consistency": 0.0},
            issue_counts={"empty_file": 1}, passed=False, quarantine_reason="empty_file",
        )
    components = {"completeness": (total - tally.incomplete) / total,
                  "validity": tally.usable_sum / total,
                  "consistency": (total - tally.inconsistent) / total}
    score = (WEIGHT_COMPLETENESS * components["completeness"]
             + WEIGHT_VALIDITY * components["validity"]
             + WEIGHT_CONSISTENCY * components["consistency"])
    score = min(1.0, max(0.0, score))
    reason: str | None = None
    if not tally.kept:
        reason = "no_valid_records"
    elif score < threshold:
        reason = "quality_below_threshold"
    return ValidationReport(
        record_type=rtype, total_records=total, valid_records=valid, quality_score=score,
        components=components, issue_counts=dict(sorted(tally.issues.items())),
        passed=reason is None, quarantine_reason=reason, columns=sink,
        valid_count=-1 if sink is None else tally.kept,
        in_progress_records=tally.in_progress, export_ms=tally.latest_export or None,
    )
