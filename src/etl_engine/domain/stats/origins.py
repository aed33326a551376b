"""Multi-origin handling: one source per period, overlaps within a source counted once.

Why: Health Connect merges what several apps write. A phone and a watch can both record the
same day's steps or the same night's sleep; adding them would double the figures. So, per
period (a local day; a night for sleep), the processors keep every origin's own figures but
take the headline figure from exactly one origin:

1. the first origin of ``config.origin_priority`` present in the period wins;
2. otherwise the origin with the most coverage of the period wins (covered time for interval
   records, number of distinct readings for instant records), ties broken by the smaller
   package name so the choice is deterministic.

Within one origin, overlapping records are counted once: additive values (steps, kcal) only
count the part of a record's interval not already covered by an earlier record of the same
origin (pro rata, assuming an even rate over the interval); instant readings and samples
with the same timestamp are kept once; overlapping sleep sessions keep the longest.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import accumulate, chain, compress, groupby, islice, repeat
from operator import itemgetter
from typing import Any

from etl_engine.domain.model import Record
from etl_engine.domain.stats.columns import Intervals
from etl_engine.domain.stats.common import (
    DAY_MS,
    day_from_index,
    end_ms,
    ends_of,
    offset_ms,
    origin,
    record_id,
    start_ms,
    starts_of,
)

Coverage = Callable[[list[Record]], float]
_get = dict.get
_TIME = itemgetter("timeEpochMillis")
_META = itemgetter("metadata")
_ORIGIN = itemgetter("dataOriginPackageName")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


class _Offsets(dict[object, int]):
    """Zone id -> offset in ms, computed on first use."""

    __slots__ = ()

    def __missing__(self, zone: object) -> int:
        off = self[zone] = offset_ms(zone)
        return off


def choose_origin(coverage: Mapping[str, float], priority: Sequence[str] = (),
                  then: Mapping[str, float] | None = None) -> str:
    """Pick the period's origin: first by priority, else most coverage, then the most of
    ``then`` (e.g. samples, when two apps cover the same windows), ties by name."""
    for name in priority:
        if name in coverage:
            return name
    more = then or {}
    return min(coverage, key=lambda name: (-coverage[name], -more.get(name, 0.0), name))


def union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """Total time covered by possibly overlapping ``(start, end)`` intervals."""
    pairs = list(intervals)
    return covered_length([s for s, _ in pairs], [e for _, e in pairs]) if pairs else 0


def covered_length(starts: Sequence[int], ends: Sequence[int]) -> int:
    """Total time covered by the intervals ``(starts[i], ends[i])``, at C speed: in start
    order, each interval adds what reaches past the furthest end before it. An export is
    usually back-to-back records in time order: then the union is plain sums."""
    if not starts:
        return 0
    if all(map(operator.le, ends, islice(starts, 1, None))):  # each ends before the next
        return sum(ends) - sum(starts)
    if not all(map(operator.le, starts, islice(starts, 1, None))):  # not in start order
        order = sorted(range(len(starts)), key=starts.__getitem__)
        starts, ends = list(map(starts.__getitem__, order)), list(map(ends.__getitem__, order))
    reach = list(accumulate(ends, max))  # furthest end so far
    before = chain((starts[0],), islice(reach, len(reach) - 1))
    return sum(map(operator.sub, reach, map(max, starts, before)))


def interval_coverage(records: list[Record]) -> float:
    """Covered time (ms) of interval records, overlaps counted once."""
    return float(union_length(zip(starts_of(records), ends_of(records), strict=True)))


def reading_coverage(records: list[Record]) -> float:
    """Distinct timestamps of instant records: how much of the period they cover."""
    return float(len(set(map(_TIME, records))))


def by_origin(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by ``dataOriginPackageName`` (input order kept within a group)."""
    out: dict[str, list[Record]] = {}
    for rec in records:
        name = rec["metadata"]["dataOriginPackageName"]
        bucket = out.get(name)
        if bucket is None:
            out[name] = [rec]
        else:
            bucket.append(rec)
    return out


def additive_total(items: Iterable[tuple[int, int, float, str | bytes]]) -> float:
    """Sum ``value`` over one origin's ``(start, end, value, id)`` items, overlaps once.

    Items are taken in (start, longest first, id) order; each adds the share of its value
    that falls outside the time already covered. Because every earlier item starts no later,
    the covered part of ``[s, e)`` is exactly ``[s, max_end_so_far)``.
    """
    total = 0.0
    max_end: int | None = None
    instants: set[int] = set()
    for s, e, value, _ in sorted(items, key=lambda it: (it[0], -it[1], it[3])):
        if e == s:  # zero-length record: covered if inside an earlier interval or repeated
            if (max_end is None or s >= max_end) and s not in instants:
                instants.add(s)
                total += value
            continue
        if max_end is None or s >= max_end:
            total += value
        elif e > max_end:
            total += value * (e - max_end) / (e - s)
        if max_end is None or e > max_end:
            max_end = e
    return total


def group_by_day(records: Iterable[Record]) -> dict[date, dict[str, list[Record]]]:
    """Records by local date of their start (own zone offset), then by origin.

    Hot path (every record of a file passes here): interval records are keyed column-wise
    and grouped by runs of equal keys (an export is mostly in time order, one origin).
    """
    by_index: dict[int, dict[str, list[Record]]] = {}
    offsets: dict[object, int] = {}
    records = records if isinstance(records, list) else list(records)
    starts: list[Any] = list(map(_get, records, repeat("startTimeEpochMillis")))
    if None not in starts:
        zones = map(_get, records, repeat("startZoneOffsetId"))
        offs = map(_Offsets().__getitem__, zones)
        days = map(operator.floordiv, map(operator.add, starts, offs), repeat(DAY_MS))
        names = map(_ORIGIN, map(_META, records))
        keys = zip(days, names, strict=True)
        for (idx, name), run in groupby(zip(keys, records, strict=True), key=_FIRST):
            by_origin = by_index.get(idx)
            if by_origin is None:
                by_origin = by_index[idx] = {}
            bucket = by_origin.get(name)
            if bucket is None:
                bucket = by_origin[name] = []
            bucket.extend(map(_SECOND, run))
        return {day_from_index(idx): groups for idx, groups in by_index.items()}
    for rec in records:
        s = rec.get("startTimeEpochMillis")
        if s is None:
            s = rec["timeEpochMillis"]
            zone = rec.get("zoneOffsetId")
        else:
            zone = rec.get("startZoneOffsetId")
        off = offsets.get(zone)
        if off is None:
            off = offsets[zone] = offset_ms(zone)
        idx = (s + off) // DAY_MS
        by_origin = by_index.get(idx)
        if by_origin is None:
            by_origin = by_index[idx] = {}
        name = rec["metadata"]["dataOriginPackageName"]
        bucket = by_origin.get(name)
        if bucket is None:
            by_origin[name] = [rec]
        else:
            bucket.append(rec)
    return {day_from_index(idx): groups for idx, groups in by_index.items()}


@dataclass(slots=True)
class PeriodChoice:
    """The origin chosen for one period, its records, and every origin's coverage."""

    period: date
    origin: str
    records: list[Record]
    coverage: dict[str, float]


def select_daily(
    records: Iterable[Record], priority: Sequence[str], coverage: Coverage
) -> list[PeriodChoice]:
    """One origin per local day (see the module docstring), days in order."""
    out: list[PeriodChoice] = []
    for day, by_origin in sorted(group_by_day(records).items()):
        cov = {name: coverage(recs) for name, recs in sorted(by_origin.items())}
        chosen = choose_origin(cov, priority)
        out.append(PeriodChoice(day, chosen, by_origin[chosen], cov))
    return out


@dataclass(slots=True)
class DailyTotals:
    """Per-day totals of an additive measure, with per-origin figures kept apart."""

    totals: dict[date, float] = field(default_factory=dict)
    chosen: dict[date, str] = field(default_factory=dict)
    per_origin: dict[str, dict[date, float]] = field(default_factory=dict)
    multi_origin_days: int = 0
    # the chosen origin's covered time per day (ms, up to the export time for a day still
    # going), and for such a day the (epoch ms, zone offset ms) it was exported at
    coverage: dict[date, float] = field(default_factory=dict)
    as_of: dict[date, tuple[int, int]] = field(default_factory=dict)


def daily_totals(records: Iterable[Record], value_key: str, priority: Sequence[str]) -> DailyTotals:
    """Local-day totals of ``value_key``: one origin per day, overlaps within it once."""
    return interval_daily_totals(Intervals.from_records(records, value_key), priority)


def interval_daily_totals(cols: Intervals, priority: Sequence[str]) -> DailyTotals:
    """``daily_totals`` over a column store: records grouped by (local day of their start,
    origin) as index arrays, each group's coverage and overlap-free total as before."""
    by_day: dict[int, dict[int, array[int]]] = {}
    days = map(operator.floordiv, map(operator.add, cols.starts, cols.offsets), repeat(DAY_MS))
    for (idx, oid), run in groupby(enumerate(zip(days, cols.origin_ids, strict=True)),
                                   key=_SECOND):
        by_origin = by_day.get(idx)
        if by_origin is None:
            by_origin = by_day[idx] = {}
        ixs = by_origin.get(oid)
        if ixs is None:
            ixs = by_origin[oid] = array("q")
        ixs.extend(map(_FIRST, run))
    names = cols.origins.names
    starts, ends, values, ids = (cols.starts.__getitem__, cols.ends.__getitem__,
                                 cols.values.__getitem__, cols.id_key)
    result = DailyTotals()
    partial = 1 in cols.in_progress
    for idx in sorted(by_day):
        day = day_from_index(idx)
        groups = sorted((names[oid], ixs) for oid, ixs in by_day[idx].items())
        cov: dict[str, float] = {}
        for name, ixs in groups:
            s_, e_ = list(map(starts, ixs)), list(map(ends, ixs))
            cov[name] = float(union_length(zip(s_, e_, strict=True)))  # coverage
            # ids only order identical intervals: read them only when there are some
            tie = len(set(zip(s_, e_, strict=True))) < len(s_)
            id_col = map(ids, ixs) if tie else repeat(b"")
            total = additive_total(zip(s_, e_, map(values, ixs), id_col, strict=False))
            result.per_origin.setdefault(name, {})[day] = total
        chosen = choose_origin(cov, priority)
        result.chosen[day] = chosen
        result.totals[day] = result.per_origin[chosen][day]
        result.coverage[day] = cov[chosen]
        if partial:
            _mark_in_progress(result, day, cols, dict(groups)[chosen])
        if len(groups) > 1:
            result.multi_origin_days += 1
    return result


def _mark_in_progress(result: DailyTotals, day: date, cols: Intervals,
                      ixs: array[int]) -> None:
    """If a record of the day was still going when exported, when that was (local)."""
    cut = list(compress(ixs, map(cols.in_progress.__getitem__, ixs)))
    if cut:
        last = max(cut, key=cols.ends.__getitem__)
        result.as_of[day] = (cols.ends[last], cols.offsets[last])


def clusters(records: Iterable[Record], max_gap_ms: int = 0) -> list[list[Record]]:
    """Groups of records whose intervals overlap (or lie within ``max_gap_ms``), any origin.

    A night recorded by two devices, or split by one app around a short wake, is one group.
    """
    ordered = sorted(records, key=lambda r: (start_ms(r), end_ms(r), origin(r), record_id(r)))
    groups: list[list[Record]] = []
    group_end = 0
    for rec in ordered:
        s, e = start_ms(rec), end_ms(rec)
        if groups and s <= group_end + max_gap_ms:
            groups[-1].append(rec)
            group_end = max(group_end, e)
        else:
            groups.append([rec])
            group_end = e
    return groups


def non_overlapping(records: Iterable[Record]) -> list[Record]:
    """Drop records overlapping a longer one (same origin), result in time order."""
    kept: list[Record] = []
    spans: list[tuple[int, int]] = []
    for rec in sorted(records, key=lambda r: (start_ms(r) - end_ms(r), start_ms(r),
                                              record_id(r))):
        s, e = start_ms(rec), end_ms(rec)
        if all(e <= a or s >= b for a, b in spans):
            kept.append(rec)
            spans.append((s, e))
    kept.sort(key=lambda r: (start_ms(r), record_id(r)))
    return kept
