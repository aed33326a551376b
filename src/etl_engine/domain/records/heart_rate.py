"""Heart-rate statistics over all samples of the chosen origin per day.

Why these choices:

* **Lowest sustained heart rate** = 5th percentile of all samples, sleep included. It is
  *not* a resting heart rate: this engine reads no other record type (no sleep, no
  activity), so it cannot tell samples taken awake and at rest from samples taken asleep,
  and in real exports most samples are often taken asleep (heart rate during sleep runs
  below the awake resting rate). So the figure is never compared with awake resting norms
  (60-100 bpm) and no lifestyle or fitness inference is drawn from it. The low tail rather
  than the minimum, so that the odd artefact below it does not set the figure.
* **Zones** use a fixed, age-free reference maximum of 190 bpm (the exports carry no age;
  190 is 220 - 30 and close to Tanaka's 208 - 0.7 x age at 25). Zones by % of that maximum:
  below zone 1 < 50 %, zone 1 50-60 %, zone 2 60-70 %, zone 3 70-80 %, zone 4 80-90 %,
  zone 5 >= 90 %; i.e. boundaries at 95, 114, 133, 152 and 171 bpm (lower bound inclusive).
* **Time in zones** is time-weighted, because watches sample densely during exercise and
  sparsely at rest: each sample stands for the time until the next one, capped at 5 min
  (the last sample repeats the previous gap, capped). A single sample falls back to counts.
  Shares are rounded to add up to exactly 100.
* **Sufficiency** says how much the figures rest on: ``days_covered`` (local calendar days,
  by the record's start zone offset, holding samples of the chosen origin),
  ``hours_covered`` (union of the chosen records' intervals) and ``samples_per_hour``
  (samples / hours covered; None when the records cover no time).
* One origin per local day: ``origin_priority``, else the most covered time, then the most
  samples (both apps sample the same windows: the denser series wins); samples with the same
  timestamp, once.
"""

from __future__ import annotations

import math
import operator
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from itertools import accumulate, chain, compress, count, islice, repeat
from typing import Any

from etl_engine.domain.checks import CheckResult, get, is_num
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.columns import Samples
from etl_engine.domain.stats.common import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    day_from_index,
    iso_utc,
    mean,
    percentages,
    percentile,
    rnd,
    sample_sd,
)
from etl_engine.domain.stats.origins import choose_origin, covered_length, union_length
from etl_engine.domain.stats.schema import (
    AMOUNT,
    COUNT,
    ORIGIN_BY_DAY,
    PERCENT,
    closed,
    each,
    per_origin,
)
from etl_engine.domain.wording import Stats, cap, join, num, origin_note, plural

HR_MAX_BPM = 190
ZONE_NAMES = ("below_zone_1", "zone_1", "zone_2", "zone_3", "zone_4", "zone_5")
ZONE_LOWER_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
ZONE_BOUNDS_BPM = tuple(round(HR_MAX_BPM * f) for f in ZONE_LOWER_FRACTIONS)  # 95..171
SAMPLE_WEIGHT_CAP_MS = 5 * MINUTE_MS
LOW_PERCENTILE = 5
LOW_METHOD = "p5_of_all_samples_sleep_included"


def zone_index(bpm: float) -> int:
    """Index into ``ZONE_NAMES`` for a heart rate."""
    i = 0
    for bound in ZONE_BOUNDS_BPM:
        if bpm < bound:
            return i
        i += 1
    return i


_ZONE_OF = partial(bisect_right, ZONE_BOUNDS_BPM)  # == zone_index, in C
# bytes.translate tables: zone z -> 1, any other zone -> 0 (a mask for itertools.compress)
_ZONE_MASKS = [bytes(int(i == z) for i in range(256)) for z in range(len(ZONE_NAMES))]
_FEW_DISTINCT = 4096
# Series up to this many samples are worked on as lists rather than typed arrays: reading
# an array element builds a new int or float each time, and the statistics read each
# sample several times. Longer series stay arrays (8 bytes a value instead of ~32).
_LIST_MAX = 50_000


class _CountedOrder(Sequence[float]):
    """The sorted values, held as (value, count) runs: a day of heart rate has millions of
    samples but a few hundred distinct rates, and sorting the samples is the costly part."""

    def __init__(self, values: Sequence[float], counts: Mapping[float, int]) -> None:
        self._keys = sorted(counts)
        self._counts = [counts[k] for k in self._keys]
        self._ends = list(accumulate(self._counts))  # exclusive run ends
        self._n = len(values)

    def sample_sd(self, centre: float) -> float | None:
        """``sample_sd(values, centre)``, bit for bit: the same terms, and ``math.fsum`` is
        exact, so summing each distinct term ``count`` times gives the same float."""
        if self._n < 2:
            return None
        terms = chain.from_iterable(repeat((k - centre) ** 2, c)
                                    for k, c in zip(self._keys, self._counts, strict=True))
        return math.sqrt(math.fsum(terms) / (self._n - 1))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k: int) -> float:  # type: ignore[override]
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError(k)
        return self._keys[bisect_right(self._ends, k)]


def _ordered(values: Sequence[float], counts: Mapping[float, int]) -> Sequence[float]:
    """``sorted(values)``, or the same order as counted runs when few values are distinct
    (``counts``: how often each value occurs)."""
    if len(counts) <= _FEW_DISTINCT:
        return _CountedOrder(values, counts)
    return sorted(values)


def samples_of(records: list[Record]) -> tuple[Sequence[int], Sequence[float]]:
    """Time-ordered (times, bpm) of the records' samples, one per timestamp."""
    cols = Samples.from_records(records)
    return _series(cols, range(len(cols)))


def _series(cols: Samples, records: Sequence[int]) -> tuple[Sequence[int], Sequence[float]]:
    """(times, bpm) of the samples of ``records`` (indices into ``cols``): records taken in
    start order (stable), samples in file order; when that is not strictly increasing in
    time, re-sorted by (time, bpm) and one sample kept per timestamp.

    Typed arrays rather than lists of objects: a long export has millions of samples.
    """
    starts, first = cols.starts, cols.first
    all_times, all_bpms = cols.sample_times, cols.bpms
    ordered = sorted(records, key=starts.__getitem__)
    times: Sequence[int]
    bpms: Sequence[float]
    if len(ordered) == len(cols) and ordered == list(range(len(cols))):
        times, bpms = all_times, all_bpms  # every record, already in order: no copy
    else:
        picked_times, picked_bpms = array("q"), array("d")
        for r in ordered:
            lo, hi = first[r], first[r + 1]
            picked_times.extend(all_times[lo:hi])
            picked_bpms.extend(all_bpms[lo:hi])
        times, bpms = picked_times, picked_bpms
    if len(times) <= _LIST_MAX:  # every later pass reads these values again: box them once
        times, bpms = list(times), list(bpms)
    if not all(map(operator.lt, times, islice(times, 1, None))):  # strictly increasing?
        order = sorted(range(len(times)), key=lambda i: (times[i], bpms[i]))
        t_out = array("q")
        b_out = array("d")
        last: int | None = None
        for i in order:
            if times[i] != last:
                t_out.append(times[i])
                b_out.append(bpms[i])
                last = times[i]
        return t_out, b_out
    return times, bpms


def sample_weights(times: Sequence[int]) -> list[int]:
    """Milliseconds each sample stands for (see module doc)."""
    n = len(times)
    if n < 2:
        return [0] * n
    cap = SAMPLE_WEIGHT_CAP_MS
    weights = [min(times[i + 1] - times[i], cap) for i in range(n - 1)]
    weights.append(weights[-1])
    return weights


def _zone_ms(times: Sequence[int], zones: bytes, zone_counts: list[int]) -> list[int]:
    """``sample_weights(times)`` summed per zone (``zones[i]``: sample i's zone), in whole ms.

    The weights are whole ms, so the sums are exact in any order: the zone holding most
    samples gets the total minus the others. When the other zones hold few samples (a day
    mostly at rest), they are summed over their own samples only (found with
    ``bytes.find``) and the total is the span less what the capped gaps lose; otherwise
    over a list of weights, one C-speed pass per zone.
    """
    zone_int = [0] * len(zone_counts)
    n = len(times)
    if n < 2:
        return zone_int
    cap = SAMPLE_WEIGHT_CAP_MS
    gaps = map(operator.sub, islice(times, 1, None), times)
    capped = list(compress(count(), map(operator.gt, gaps, repeat(cap))))  # long gaps: few
    main = max(range(len(zone_counts)), key=zone_counts.__getitem__)
    others = [z for z, c in enumerate(zone_counts) if c and z != main]
    if (n - zone_counts[main]) * 8 > n:
        weights = list(map(operator.sub, islice(times, 1, None), times))
        for i in capped:
            weights[i] = cap
        weights.append(weights[-1])
        for z in others:
            zone_int[z] = sum(compress(weights, zones.translate(_ZONE_MASKS[z])))
        zone_int[main] = sum(weights) - sum(zone_int)
        return zone_int
    long_gaps = set(capped)

    def weight(i: int) -> int:  # sample i stands for the time to the next (the last: as i-1)
        if i == n - 1:
            i -= 1
        return cap if i in long_gaps else times[i + 1] - times[i]

    for z in others:
        zone_int[z] = sum(map(weight, _positions(zones, z)))
    total = times[n - 1] - times[0] - sum(times[i + 1] - times[i] - cap for i in capped)
    zone_int[main] = total + weight(n - 1) - sum(zone_int)
    return zone_int


def _positions(data: bytes, value: int) -> Iterator[int]:
    """Indices of ``value`` in ``data``."""
    find = data.find
    i = find(value)
    while i >= 0:
        yield i
        i = find(value, i + 1)


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Mean/min/max, lowest sustained rate, time in zones, span, coverage, per-origin."""
    return statistics(Samples.from_records(records), config)


def _choose_records(cols: Samples,
                    config: DomainConfig) -> tuple[list[int], list[tuple[str, str, int]]]:
    """Records of the chosen origin of each local day (of the record's start), and per day
    (local date, origin, origins present): one origin a day, so nothing counts twice."""
    names = cols.origins.names
    groups: dict[int, dict[int, list[int]]] = {}
    for r, (s, off, o) in enumerate(zip(cols.starts, cols.offsets, cols.origin_ids,
                                        strict=True)):
        groups.setdefault((s + off) // DAY_MS, {}).setdefault(o, []).append(r)
    chosen_records: list[int] = []
    choices: list[tuple[str, str, int]] = []
    for day in sorted(groups):
        by_o = groups[day]
        cov = {names[o]: float(union_length((cols.starts[r], cols.ends[r]) for r in recs))
               for o, recs in by_o.items()}
        dense = {names[o]: sum(cols.first[r + 1] - cols.first[r] for r in recs)
                 for o, recs in by_o.items()}
        name = choose_origin(cov, config.origin_priority, dense)  # same windows: denser
        chosen_records.extend(by_o[cols.origins.index[name]])
        choices.append((day_from_index(day).isoformat(), name, len(by_o)))
    return chosen_records, choices


def _local_days(cols: Samples, records: Sequence[int], starts: Sequence[int],
                ends: Sequence[int], offs: Sequence[int]) -> set[int]:
    """Local day numbers holding samples of ``records`` (``starts``/``ends``/``offs``: their
    columns). A record whose interval starts and ends on one local day puts all its samples
    on that day (validation keeps samples inside their record), so only the few records
    crossing midnight have their samples' days read; all at C speed (a file can hold a
    million one-sample records)."""
    first_days = list(map(operator.floordiv, map(operator.add, starts, offs), repeat(DAY_MS)))
    last_days = map(operator.floordiv, map(operator.add, ends, offs), repeat(DAY_MS))
    days = set(first_days)
    times, first = cols.sample_times, cols.first
    for i in compress(count(), map(operator.ne, first_days, last_days)):
        r, off = records[i], offs[i]
        shifted = map(operator.add, times[first[r]:first[r + 1]], repeat(off))
        days.update(map(operator.floordiv, shifted, repeat(DAY_MS)))
    return days


def _sufficiency(cols: Samples, records: Sequence[int], n: int) -> dict[str, Any]:
    """How much the figures rest on (module doc): days, hours and sampling density."""
    columns: tuple[Sequence[int], Sequence[int], Sequence[int]]
    if len(records) == len(cols):  # every record (one origin): the columns as they are
        columns = cols.starts, cols.ends, cols.offsets
        records = range(len(cols))
    else:
        columns = (list(map(cols.starts.__getitem__, records)),
                   list(map(cols.ends.__getitem__, records)),
                   list(map(cols.offsets.__getitem__, records)))
    covered_ms = covered_length(columns[0], columns[1])
    return {
        "days_covered": len(_local_days(cols, records, *columns)),
        "hours_covered": rnd(covered_ms / HOUR_MS),
        "samples_per_hour": rnd(n / (covered_ms / HOUR_MS)) if covered_ms > 0 else None,
    }


def _per_origin(cols: Samples, bpms: Sequence[float], m: float) -> dict[str, Any]:
    """Every origin's own sample count and mean (the chosen figures use one origin a day)."""
    names = cols.origins.names
    origins = {}
    for name in sorted(names):
        if len(names) == 1:
            own, own_mean = bpms, m
        else:
            o = cols.origins.index[name]
            own = _series(cols, [r for r, x in enumerate(cols.origin_ids) if x == o])[1]
            own_mean = mean(own)
        origins[name] = {"samples": len(own), "mean_bpm": rnd(own_mean)}
    return origins


def statistics(cols: Samples, config: DomainConfig) -> dict[str, Any]:
    """``compute_statistics`` over column-stored records (validation streams into them)."""
    chosen_records, choices = _choose_records(cols, config)
    times, bpms = _series(cols, chosen_records)
    n = len(bpms)
    counts = Counter(bpms)
    ordered = _ordered(bpms, counts)
    m = mean(bpms)
    zone_of = {b: _ZONE_OF(b) for b in counts}  # a few hundred distinct rates
    zones = bytes(map(zone_of.__getitem__, bpms))
    zone_counts = [zones.count(z) for z in range(len(ZONE_NAMES))]
    zone_int = _zone_ms(times, zones, zone_counts)
    zone_ms = [float(ms) for ms in zone_int]
    shares = percentages(zone_ms if sum(zone_ms) > 0 else zone_counts)
    return {
        "sample_count": n,
        "record_count": len(chosen_records),
        "days": len(choices),
        "first_sample": iso_utc(times[0]),
        "last_sample": iso_utc(times[-1]),
        "span_minutes": rnd((times[-1] - times[0]) / MINUTE_MS),
        "mean_bpm": rnd(m),
        "median_bpm": rnd(percentile(ordered, 50)),
        "sd_bpm": rnd(ordered.sample_sd(m) if isinstance(ordered, _CountedOrder)
                      else sample_sd(bpms, m)),
        "min_bpm": rnd(ordered[0]),
        "max_bpm": rnd(ordered[-1]),
        "lowest_sustained_bpm": rnd(percentile(ordered, LOW_PERCENTILE)),
        "lowest_sustained_method": LOW_METHOD,
        "sufficiency": _sufficiency(cols, chosen_records, n),
        "hr_max_reference_bpm": HR_MAX_BPM,
        "zone_lower_bounds_bpm": dict(zip(ZONE_NAMES[1:], ZONE_BOUNDS_BPM, strict=True)),
        "time_in_zones_percent": dict(zip(ZONE_NAMES, shares, strict=True)),
        "time_in_zones_minutes": {
            name: rnd(ms / MINUTE_MS) for name, ms in zip(ZONE_NAMES, zone_ms, strict=True)
        },
        "origins": _per_origin(cols, bpms, m),
        "origin_by_day": {day: name for day, name, _ in choices},
        "days_with_multiple_origins": sum(1 for _, _, present in choices if present > 1),
    }


# --- validation -------------------------------------------------------------------------------
HEART_RATE_RANGE = (25, 250)
CHUNK_RECORDS = 16  # a record can carry thousands of samples; a chunk is held while checked
_NO_SAMPLES = CheckResult("heart_rate_no_samples")


def check_record(rec: Record, s: int, e: int) -> CheckResult | None:
    """Samples present; each within the record's interval and 25-250 bpm, or dropped."""
    samples = rec.get("samples")
    if not samples or type(samples) is not list:
        return _NO_SAMPLES
    lo, hi = HEART_RATE_RANGE
    try:  # fast path: every sample well-formed and plausible, nothing copied
        for smp in samples:
            if not (s <= smp["timeEpochMillis"] <= e and lo <= smp["beatsPerMinute"] <= hi):
                raise ValueError
        return None
    except (KeyError, TypeError, ValueError):
        pass
    return _filter_samples(rec, samples, s, e)


def _filter_samples(rec: Record, samples: list[Any], s: int, e: int) -> CheckResult:
    """Slow path: drop bad samples and count each one under its reason code."""
    lo, hi = HEART_RATE_RANGE
    kept: list[Any] = []
    drops: dict[str, int] = {}
    for smp in samples:
        t: Any = smp.get("timeEpochMillis") if type(smp) is dict else None
        b: Any = smp.get("beatsPerMinute") if type(smp) is dict else None
        if type(t) is not int or not is_num(b):
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
        return CheckResult("heart_rate_no_valid_samples", None, 0.0, inconsistent, drops)
    out = dict(rec)  # shallow copy: only the samples list differs
    out["samples"] = kept
    return CheckResult(None, out, len(kept) / len(samples), inconsistent, drops)


def check_chunk(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    """Every record has samples, and every sample lies in its record's interval and range
    (``check_record``'s fast path; a malformed sample raises, which means "no")."""
    lists = list(map(get, chunk, repeat("samples")))
    if set(map(type, lists)) != {list} or not all(lists):
        return False
    lo, hi = HEART_RATE_RANGE
    for samples, s, e in zip(lists, starts, ends, strict=True):  # as fast as map here
        for smp in samples:
            if not (s <= smp["timeEpochMillis"] <= e and lo <= smp["beatsPerMinute"] <= hi):
                return False
    return True


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How was my heart rate {period}?",
    "Can you summarize my heart-rate data {period}?",
    "What does my heart rate {period} tell me?",
)


def narrative(s: Stats, period: str) -> str:
    """Average and range, coverage, lowest sustained rate (sleep included, so never set
    against awake norms), time in zones."""
    low, suff = s["lowest_sustained_bpm"], s["sufficiency"]
    hours, rate = suff["hours_covered"], suff["samples_per_hour"]
    span = plural(hours, "hour") if hours >= 0.1 else "a few minutes"
    cover = (f"the records cover {span} on {plural(suff['days_covered'], 'day')}"
             + (f", about {num(rate)} samples per hour" if rate is not None else ""))
    lower = s["zone_lower_bounds_bpm"]
    b = [lower[f"zone_{i}"] for i in range(1, 6)]
    labels = [f"below zone 1 (under {b[0]} bpm)"]
    labels += [f"in zone {i} ({b[i - 1]}-{b[i] - 1} bpm)" for i in range(1, 5)]
    labels.append(f"in zone 5 ({b[4]} bpm and above)")
    zones = s["time_in_zones_percent"]
    keys = ["below_zone_1"] + [f"zone_{i}" for i in range(1, 6)]
    parts = [f"{num(zones[k])}% {label}" for k, label in zip(keys, labels, strict=True)]
    return (
        f"{cap(period)}, {plural(s['sample_count'], 'heart-rate sample')} "
        f"{'was' if s['sample_count'] == 1 else 'were'} recorded; {cover}. The average heart "
        f"rate was {num(s['mean_bpm'])} bpm, ranging from {num(s['min_bpm'])} to "
        f"{num(s['max_bpm'])} bpm. The lowest sustained heart rate (the 5th percentile of all "
        f"samples, including any taken during sleep) was about {num(low)} bpm. The data do "
        "not show which samples were taken awake or asleep, so this figure is not compared "
        "with reference ranges. "
        f"Using a reference maximum of {num(s['hr_max_reference_bpm'])} bpm, the time was "
        f"{join(parts)}." + origin_note(s["days_with_multiple_origins"], "days")
    )


# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="heartRateStatistics",
    schema={
        "type": "object",
        "description": "HeartRateRecord statistics (domain/records/heart_rate.py).",
        "required": [
            "sample_count", "record_count", "days", "first_sample", "last_sample", "span_minutes",
            "mean_bpm", "median_bpm", "sd_bpm", "min_bpm", "max_bpm", "lowest_sustained_bpm",
            "lowest_sustained_method", "sufficiency", "hr_max_reference_bpm",
            "zone_lower_bounds_bpm", "time_in_zones_percent", "time_in_zones_minutes", "origins",
            "origin_by_day", "days_with_multiple_origins",
        ],
        "properties": {
            "sample_count": {"type": "integer", "minimum": 1},
            "record_count": {"type": "integer", "minimum": 1},
            "days": {"type": "integer", "minimum": 1},
            "first_sample": {"$ref": "#/$defs/utcTimestamp"},
            "last_sample": {"$ref": "#/$defs/utcTimestamp"},
            "span_minutes": {"type": "number", "minimum": 0},
            "mean_bpm": {"type": "number"},
            "median_bpm": {"type": "number"},
            "sd_bpm": {"type": ["number", "null"]},
            "min_bpm": {"type": "number"},
            "max_bpm": {"type": "number"},
            "lowest_sustained_bpm": {
                "type": "number",
                "description": (
                    "5th percentile (linear interpolation) of all samples of the chosen origins, "
                    "sleep included. Not a resting heart rate: the engine cannot tell awake "
                    "samples from asleep ones, so this is never compared with awake resting norms."
                ),
            },
            "lowest_sustained_method": {
                "const": "p5_of_all_samples_sleep_included",
                "description": "How lowest_sustained_bpm was computed.",
            },
            "sufficiency": {
                "type": "object",
                "description": "How much the figures rest on (chosen origin of each day only).",
                "required": ["days_covered", "hours_covered", "samples_per_hour"],
                "properties": {
                    "days_covered": {
                        "type": "integer",
                        "minimum": 1,
                        "description": (
                            "Local calendar days (record start zone offset) holding samples."
                        ),
                    },
                    "hours_covered": {
                        "type": "number",
                        "minimum": 0,
                        "description": "Union of the chosen records' intervals, hours, 1 decimal.",
                    },
                    "samples_per_hour": {
                        "type": ["number", "null"],
                        "minimum": 0,
                        "description": (
                            "Samples / covered hours, 1 decimal; null when the records cover no "
                            "time."
                        ),
                    },
                },
                "additionalProperties": False,
            },
            "hr_max_reference_bpm": {"type": "integer"},
            "zone_lower_bounds_bpm": closed(each(ZONE_NAMES[1:], {"type": "integer"})),
            "time_in_zones_percent": closed(
                each(ZONE_NAMES, PERCENT),
                "Time-weighted shares, rounded to add up to exactly 100.",
            ),
            "time_in_zones_minutes": closed(each(ZONE_NAMES, AMOUNT)),
            "origins": per_origin({"samples": COUNT, "mean_bpm": {"type": "number"}}),
            **ORIGIN_BY_DAY,
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="samples", heading="Heart rate", unit="bpm", color="#c0392b",
              caption="{count} samples (local time), broken at gaps over 10 minutes",
              gap_minutes=10)


SPEC = RecordTypeSpec(
    name="HeartRateRecord",
    category="cardiovascular_fitness",
    interval=True,
    schema_file="HeartRateRecord.avsc",
    check=check_record,
    clean=check_chunk,
    chunk_records=CHUNK_RECORDS,
    statistics=compute_statistics,
    column_store=Samples,
    column_statistics=statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=20,
)
