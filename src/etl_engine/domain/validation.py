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
Values (record excluded; each type's rules live in its file, ``records/<type>.py``)
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
one at a time) and takes them a chunk at a time (the type's ``chunk_records``: 256
records; sixteen heart-rate records, which carry many samples each); given a ``sink``, it
hands each chunk's valid records to ``sink.extend`` instead of keeping them, so a
million-record file is never held as a million dicts. A chunk in which every record passes
every rule is checked with a few C-speed passes over the whole chunk (the type's ``clean``);
any other chunk goes record by record. Files of more than ``DIGEST_IDS_ABOVE`` records
remember record ids by a 64-bit BLAKE2b digest rather than the id string (a false
``duplicate_record_id`` has probability ~n^2/2^65: 3e-8 at 1M).

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
from itertools import islice, repeat
from operator import is_, le, or_
from typing import Any, Protocol

from etl_engine.domain import registry
from etl_engine.domain.checks import (
    DAY_MS,
    FETCH_KEY,
    HOUR_MS,
    IN_PROGRESS_KEY,
    MAX_OFFSET_SECONDS,
    MIN_TIMESTAMP_MS,
    ONLY_DICT,
    ONLY_INT,
    ONLY_STR,
    CheckResult,
    ChunkCheck,
    ValueCheck,
    get,
    parse_zone_offset,
    zone_offset_seconds,
)
from etl_engine.domain.model import DecodedFile, DomainConfig, Record, ValidationReport
from etl_engine.domain.records.spec import STANDARD_CHUNK_RECORDS, RecordTypeSpec

__all__ = ["CHUNK_STANDARD", "CONSISTENCY_CODES", "DAY_MS", "DIGEST_IDS_ABOVE", "FETCH_KEY",
           "HOUR_MS", "IN_PROGRESS_KEY", "MAX_IN_PROGRESS_MS", "MAX_OFFSET_SECONDS",
           "MIN_TIMESTAMP_MS", "CheckResult", "Decoded", "RecordSink", "ValidationOptions",
           "canonical_record_type", "parse_zone_offset", "validate", "zone_offset_seconds"]

WEIGHT_COMPLETENESS = 0.15
WEIGHT_VALIDITY = 0.70
WEIGHT_CONSISTENCY = 0.15

# Codes that also mark a record inconsistent (see the module docstring).
CONSISTENCY_CODES = frozenset(
    {"duplicate_record_id", "start_after_end", "sleep_stage_overlap",
     "sleep_stage_outside_session", "sample_outside_interval"}
)

MAX_IN_PROGRESS_MS = 25 * 3_600_000
DIGEST_IDS_ABOVE = 100_000
CHUNK_STANDARD = STANDARD_CHUNK_RECORDS  # records a chunk, for a type without a spec

# The old name: map any spelling of a record type to its canonical name (registry).
canonical_record_type = registry.canonical_name


@dataclass(frozen=True, slots=True)
class ValidationOptions:
    """How validation goes about its work, never what it decides: ``fast_chunks`` False
    takes every chunk record by record (tests compare the two paths); ``chunk_records``
    overrides the type's chunk size (None: the spec's)."""

    fast_chunks: bool = True
    chunk_records: int | None = None


STANDARD_OPTIONS = ValidationOptions()


class Decoded(Protocol):
    """A decoded file: ``DecodedFile`` (a list) or ``avro.DecodeStream`` (an iterator)."""

    @property
    def record_type(self) -> str: ...

    @property
    def records(self) -> Iterable[Any]: ...


class RecordSink(Protocol):
    """Where streamed validation puts valid records (``stats/columns.py``), a chunk at a
    time and in file order."""

    def extend(self, recs: list[Record]) -> None: ...


def _digest(rid: str) -> bytes:
    return hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _check_none(rec: Record, s: int, e: int) -> CheckResult | None:
    """The value check of a type without a spec: no value rules."""
    return None


# --- whole chunks at once ---------------------------------------------------------------------
# Records are taken a chunk at a time. A chunk in which every record passes every rule (the
# usual export) is checked with C-speed ``map``/``set``/``all`` passes and kept whole; any
# other chunk goes through ``_check_record``, one record at a time, which defines the rules.
# The chunk checks (here and each type's ``clean``) must accept a chunk exactly when that
# would keep every record of it unchanged (tests compare the two). Heart-rate chunks are
# short: a record can carry thousands of samples, and a chunk is held in memory while it is
# checked.
def _chunk_ids(chunk: list[Record], digest: Callable[[str], bytes] | None,
               seen: set[str | bytes]) -> list[Any] | None:
    """The id keys of a chunk of dicts whose metadata all have a non-empty id and origin
    (strings), none repeated in the chunk or before it; else None."""
    if set(map(type, chunk)) != ONLY_DICT:
        return None
    metas = list(map(get, chunk, repeat("metadata")))
    if set(map(type, metas)) != ONLY_DICT:
        return None
    ids = list(map(get, metas, repeat("id")))
    if set(map(type, ids)) != ONLY_STR or not all(ids):
        return None
    origins = set(map(get, metas, repeat("dataOriginPackageName")))
    if set(map(type, origins)) != ONLY_STR or "" in origins:
        return None
    keys = ids if digest is None else list(map(digest, ids))
    unique = set(keys)
    if len(unique) != len(keys) or not unique.isdisjoint(seen):
        return None  # a repeated id
    return keys


_Times = tuple[list[Any], list[Any], list[Any], list[Any]]


def _chunk_times(chunk: list[Record], instant: bool, min_ms: int) -> _Times | None:
    """(starts, ends, start zones, end zones) when every start and end is an int, no start
    is after its end and none is before ``min_ms``; else None."""
    if instant:
        starts = ends = list(map(get, chunk, repeat("timeEpochMillis")))
        zones1 = zones2 = list(map(get, chunk, repeat("zoneOffsetId")))
    else:
        starts = list(map(get, chunk, repeat("startTimeEpochMillis")))
        ends = list(map(get, chunk, repeat("endTimeEpochMillis")))
        zones1 = list(map(get, chunk, repeat("startZoneOffsetId")))
        zones2 = list(map(get, chunk, repeat("endZoneOffsetId")))
        if set(map(type, ends)) != ONLY_INT or not all(map(le, starts, ends)):
            return None
    if set(map(type, starts)) != ONLY_INT or min(starts) < min_ms:
        return None
    return starts, ends, zones1, zones2


def _missing_zones(zones: set[Any], zones1: list[Any], zones2: list[Any],
                   instant: bool) -> int:
    """How many records of a clean chunk lack a zone offset (start or end)."""
    if None not in zones:
        return 0
    if instant:
        return zones1.count(None)
    return sum(map(or_, map(is_, zones1, repeat(None)), map(is_, zones2, repeat(None))))


def _clean_chunk(
    chunk: list[Record], clean_values: ChunkCheck, instant: bool, seen: set[str | bytes],
    digest: Callable[[str], bytes] | None, min_ms: int, max_ms: int,
) -> tuple[int, int] | None:
    """If every record of ``chunk`` passes every rule and none is in progress: add their ids
    to ``seen`` and return how many lack a zone offset (kept, but incomplete) and the latest
    export time. Otherwise None, nothing changed. ``max_ms``: the latest export time a
    record may claim (upload time plus skew)."""
    try:
        keys = _chunk_ids(chunk, digest, seen)
        times = None if keys is None else _chunk_times(chunk, instant, min_ms)
        if keys is None or times is None:
            return None
        starts, ends, zones1, zones2 = times
        fetches = list(map(get, chunk, repeat(FETCH_KEY)))
        if (set(map(type, fetches)) != ONLY_INT or max(fetches) > max_ms
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
    return _missing_zones(zones, zones1, zones2, instant), max(fetches)


# --- record by record ---------------------------------------------------------------------------
def _export_ms(rec: Record, start: int, ceiling: int, max_ms: int) -> int:
    """The record's export time: the app's fetch time when it is plausible (not before the
    record's start, not after the upload plus skew), else the upload time (``ceiling``)."""
    fetch = rec.get(FETCH_KEY)
    if type(fetch) is int and start <= fetch <= max_ms:
        return fetch
    return ceiling


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
    """What the per-record checks need to know about the type, the file and the message."""

    check: ValueCheck
    known_instant: bool | None  # None: a type we do not know, decided per record
    running_total: bool  # may be exported while still going (spec; True if unknown)
    incomplete: Callable[[Record], str | None] | None
    digest: Callable[[str], bytes] | None
    ceiling: int  # the upload time (never later than the worker's clock)
    skew: int

    @property
    def max_ms(self) -> int:
        return self.ceiling + self.skew

    def may_be_in_progress(self, start: int, end: int) -> bool:
        """Only a running total of at most a day (25 h: a DST day) is exported while going;
        a sleep session is written when it ends, and a longer "interval" is a bad
        timestamp."""
        return self.running_total and end - start <= MAX_IN_PROGRESS_MS


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
            e > export + rules.skew and not rules.may_be_in_progress(s, e)):
        return "timestamp_in_future", export
    offset = zone_offset_seconds
    if offset(z1) is None or (z2 is not z1 and offset(z2) is None):
        return "bad_zone_offset", export
    return None, export


def _count_incomplete(rec: Record, z1: Any, z2: Any, rules: _Rules, tally: _Tally) -> None:
    """Completeness is a property of the record, counted whether or not it is kept."""
    if z1 is None or z2 is None:
        tally.incomplete += 1
        tally.count("missing_zone_offset")
    elif rules.incomplete is not None:
        code = rules.incomplete(rec)
        if code is not None:
            tally.incomplete += 1
            tally.count(code)


def _apply_verdict(verdict: CheckResult, rec: Record, tally: _Tally) -> tuple[Record, float] | None:
    """Count a value check's verdict: (the record to keep, its usable share), or None."""
    if verdict.drops:
        for k, n in verdict.drops.items():
            tally.count(k, n)
    tally.inconsistent += verdict.inconsistent
    if verdict.code is not None:
        tally.count(verdict.code)
        return None
    return (rec if verdict.record is None else verdict.record), verdict.usable


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
    _count_incomplete(rec, z1, z2, rules, tally)
    export = 0
    if code is None:
        code, export = _time_code(rec, s, e, z1, z2, rules)
    if code is not None:
        tally.count(code)
        tally.inconsistent += code in CONSISTENCY_CODES
        return None
    # still going when it was exported (a long or sleep record here is within skew)
    started = e > export and not instant and rules.may_be_in_progress(s, e)
    if started:
        e = max(s, export)
        rec = _in_progress(rec, e)
    verdict = rules.check(rec, s, e)
    usable = 1.0
    if verdict is not None:
        kept = _apply_verdict(verdict, rec, tally)
        if kept is None:
            return None
        rec, usable = kept
    tally.usable_sum += usable
    tally.kept += 1
    tally.in_progress += started
    tally.latest_export = max(tally.latest_export, export)
    return rec


def _take_clean(chunk: list[Record], clean: ChunkCheck, rules: _Rules,
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


def _rules(spec: RecordTypeSpec | None, expected: int, now_ms: int, upload_ms: int | None,
           config: DomainConfig) -> _Rules:
    """The rules for one file: its type's (none for a type without a spec)."""
    return _Rules(
        check=_check_none if spec is None else spec.check,
        known_instant=None if spec is None else not spec.interval,
        running_total=True if spec is None else spec.running_total,
        incomplete=None if spec is None else spec.incomplete,
        digest=_digest if expected > DIGEST_IDS_ABOVE else None,
        ceiling=now_ms if upload_ms is None else min(upload_ms, now_ms),
        skew=config.max_future_skew_ms)


def validate(
    decoded: DecodedFile | Decoded, *, now_ms: int, config: DomainConfig,
    sink: RecordSink | None = None, upload_ms: int | None = None,
    options: ValidationOptions = STANDARD_OPTIONS,
) -> ValidationReport:
    """Check every record once; keep the usable ones (in ``valid_records``, or handed to
    ``sink``); score the file (see module doc). ``upload_ms``: the message's upload time,
    which bounds the export times the file may claim (the worker's clock ``now_ms`` bounds
    it in turn). The type's spec is looked up once, here."""
    rtype = canonical_record_type(decoded.record_type)
    spec = registry.find(rtype)
    records = decoded.records
    expected = getattr(decoded, "record_count", None)
    if expected is None:
        expected = len(records) if isinstance(records, list) else 0
    rules = _rules(spec, expected, now_ms, upload_ms, config)
    tally = _Tally()
    valid: list[Record] = []
    keep = valid.extend if sink is None else sink.extend
    clean = spec.clean if spec is not None and options.fast_chunks else None
    size = options.chunk_records or (CHUNK_STANDARD if spec is None else spec.chunk_records)
    it = iter(records)
    while chunk := list(islice(it, size)):
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
