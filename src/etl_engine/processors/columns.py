"""Column stores for the long series: CGM readings and heart-rate samples.

Why: a CGM export can hold a million readings and a watch export a million heart-rate
samples. Kept as decoded records (nested dicts), a million readings take ~1.5 GB; the
statistics need only a time, a zone offset, a value and an origin per reading, which fit in
~26 bytes as typed arrays. Validation hands each valid record to ``add`` (so no record is
kept after it was checked), and the processors compute from the columns. The list API
(``compute_statistics(records, config)``) builds the same columns with ``from_records``,
so there is one implementation of every statistic.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from datetime import date
from operator import itemgetter

from etl_engine.processors._common import local_date, offset_ms
from etl_engine.stages import Record

_TIME = itemgetter("timeEpochMillis")
_BPM = itemgetter("beatsPerMinute")


class _Origins:
    """Origin names <-> small integers, in first-seen order."""

    __slots__ = ("index", "names")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def id(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i


class _Offsets:
    """Zone id -> offset in ms, cached (a file repeats a handful of zones)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[object, int] = {}

    def ms(self, zone: object) -> int:
        off = self._cache.get(zone)
        if off is None:
            off = self._cache[zone] = offset_ms(zone)
        return off


def _bounds(starts: array, ends: array, offs: array) -> tuple[int, int, date, date]:
    """Like ``processors._bounds`` over records: earliest start, latest end, and the local
    dates of the earliest and latest start (ties: the earlier / later local date)."""
    first_s = last_s = starts[0]
    first_o = last_o = offs[0]
    latest_end = ends[0]
    for s, e, o in zip(starts, ends, offs, strict=True):
        if s < first_s or (s == first_s and o < first_o):
            first_s, first_o = s, o
        if s > last_s or (s == last_s and o > last_o):
            last_s, last_o = s, o
        if e > latest_end:
            latest_end = e
    return first_s, latest_end, local_date(first_s, first_o), local_date(last_s, last_o)


class Readings:
    """Instant readings of one value (``timeEpochMillis``, ``zoneOffsetId``, origin)."""

    __slots__ = ("_add_o", "_add_off", "_add_t", "_add_v", "_offsets", "offsets",
                 "origin_ids", "origins", "times", "value_key", "values")

    def __init__(self, value_key: str) -> None:
        self.value_key = value_key
        self.times = array("q")
        self.values = array("d")
        self.offsets = array("q")
        self.origin_ids = array("H")
        self.origins = _Origins()
        self._offsets = _Offsets()
        # bound once: ``add`` runs for every reading of a file
        self._add_t = self.times.append
        self._add_v = self.values.append
        self._add_off = self.offsets.append
        self._add_o = self.origin_ids.append

    def add(self, rec: Record) -> None:
        self._add_t(rec["timeEpochMillis"])
        self._add_v(float(rec[self.value_key]))
        zone = rec.get("zoneOffsetId")
        off = self._offsets._cache.get(zone)
        self._add_off(self._offsets.ms(zone) if off is None else off)
        name = rec["metadata"]["dataOriginPackageName"]
        o = self.origins.index.get(name)
        self._add_o(self.origins.id(name) if o is None else o)

    @classmethod
    def from_records(cls, records: Iterable[Record], value_key: str) -> Readings:
        out = cls(value_key)
        for rec in records:
            out.add(rec)
        return out

    def __len__(self) -> int:
        return len(self.times)

    def origin_count(self) -> int:
        return len(self.origins.names)

    def bounds(self) -> tuple[int, int, date, date]:
        return _bounds(self.times, self.times, self.offsets)


class Samples:
    """Interval records carrying a series of samples (heart rate): per-record columns and
    the samples of all records back to back (record ``i`` owns ``[first[i], first[i+1])``)."""

    __slots__ = ("_offsets", "bpms", "ends", "first", "offsets", "origin_ids", "origins",
                 "sample_times", "starts")

    def __init__(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.offsets = array("q")
        self.origin_ids = array("H")
        self.first = array("q", [0])
        self.sample_times = array("q")
        self.bpms = array("d")
        self.origins = _Origins()
        self._offsets = _Offsets()

    def add(self, rec: Record) -> None:
        self.starts.append(rec["startTimeEpochMillis"])
        self.ends.append(rec["endTimeEpochMillis"])
        self.offsets.append(self._offsets.ms(rec.get("startZoneOffsetId")))
        self.origin_ids.append(self.origins.id(rec["metadata"]["dataOriginPackageName"]))
        samples = rec["samples"]
        self.sample_times.fromlist(list(map(_TIME, samples)))  # fromlist: faster than extend
        self.bpms.fromlist(list(map(_BPM, samples)))
        self.first.append(len(self.sample_times))

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Samples:
        out = cls()
        for rec in records:
            out.add(rec)
        return out

    def __len__(self) -> int:
        return len(self.starts)

    def origin_count(self) -> int:
        return len(self.origins.names)

    def bounds(self) -> tuple[int, int, date, date]:
        return _bounds(self.starts, self.ends, self.offsets)
