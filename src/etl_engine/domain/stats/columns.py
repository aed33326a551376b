"""Column stores for the long series: CGM readings, heart-rate samples, and the interval
records of additive values (steps, active calories).

Why: a CGM export can hold a million readings and a watch export a million heart-rate
samples. Kept as decoded records (nested dicts), a million readings take ~1.5 GB; the
statistics need only a time, a zone offset, a value and an origin per reading, which fit in
~26 bytes as typed arrays. Validation hands the valid records to ``extend`` a chunk at a
time (so no record is kept long after it was checked), and the processors compute from the
columns. The list API
(``compute_statistics(records, config)``) builds the same columns with ``from_records``,
so there is one implementation of every statistic.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from datetime import date
from itertools import accumulate, chain, islice, repeat
from operator import itemgetter, methodcaller
from typing import Self

from etl_engine.domain.checks import IN_PROGRESS_KEY
from etl_engine.domain.model import Record
from etl_engine.domain.stats.common import local_date, offset_ms

_TIME = itemgetter("timeEpochMillis")
_BPM = itemgetter("beatsPerMinute")
_START = itemgetter("startTimeEpochMillis")
_END = itemgetter("endTimeEpochMillis")
_SAMPLES = itemgetter("samples")
_META = itemgetter("metadata")
_ORIGIN = itemgetter("dataOriginPackageName")
_ID = itemgetter("id")
_get = dict.get
_ZONE = methodcaller("get", "zoneOffsetId")
_START_ZONE = methodcaller("get", "startZoneOffsetId")


class _Index(dict[str, int]):
    """Origin name -> small integer; looking up a new name gives it the next number."""

    __slots__ = ("names",)

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def __missing__(self, name: str) -> int:
        i = self[name] = len(self.names)
        self.names.append(name)
        return i


class _Origins:
    """Origin names <-> small integers, in first-seen order."""

    __slots__ = ("index", "names")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = _Index(self.names)

    def id(self, name: str) -> int:
        return self.index[name]


class _Offsets(dict[object, int]):
    """Zone id -> offset in ms, computed on first use (a file repeats a handful of zones)."""

    __slots__ = ()

    def __missing__(self, zone: object) -> int:
        off = self[zone] = offset_ms(zone)
        return off

    def ms(self, zone: object) -> int:
        return self[zone]


def _bounds(starts: array, ends: array, offs: array) -> tuple[int, int, date, date]:
    """Like ``transform._bounds`` over records: earliest start, latest end, and the local
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


class _Store:
    """What every column store shares: one record at a time, the origins seen."""

    __slots__ = ()
    origins: _Origins

    def extend(self, recs: list[Record]) -> None:
        raise NotImplementedError

    def add(self, rec: Record) -> None:
        self.extend([rec])

    def origin_count(self) -> int:
        return len(self.origins.names)


class _ValueStore(_Store):
    """A store of one named value a record (``value_key``), with its zone offsets and
    origins; the subclasses add the times."""

    __slots__ = ("_offsets", "_value", "offsets", "origin_ids", "origins", "value_key", "values")

    def __init__(self, value_key: str) -> None:
        self.value_key = value_key
        self._value = itemgetter(value_key)
        self.values = array("d")
        self.offsets = array("q")
        self.origin_ids = array("H")
        self.origins = _Origins()
        self._offsets = _Offsets()

    @classmethod
    def from_records(cls, records: Iterable[Record], value_key: str) -> Self:
        out = cls(value_key)
        out.extend(list(records))
        return out


class Readings(_ValueStore):
    """Instant readings of one value (``timeEpochMillis``, ``zoneOffsetId``, origin)."""

    __slots__ = ("times",)

    def __init__(self, value_key: str) -> None:
        super().__init__(value_key)
        self.times = array("q")

    def extend(self, recs: list[Record]) -> None:
        """Append validated records, column by column (``map`` at C speed, not per record)."""
        self.times.fromlist(list(map(_TIME, recs)))  # fromlist: faster than extend
        self.values.fromlist(list(map(float, map(self._value, recs))))
        self.offsets.fromlist(list(map(self._offsets.__getitem__, map(_ZONE, recs))))
        self.origin_ids.fromlist(list(map(self.origins.index.__getitem__,
                                          map(_ORIGIN, map(_META, recs)))))

    def __len__(self) -> int:
        return len(self.times)

    def bounds(self) -> tuple[int, int, date, date]:
        return _bounds(self.times, self.times, self.offsets)


class Samples(_Store):
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

    def extend(self, recs: list[Record]) -> None:
        """Append validated records and their samples, column by column."""
        self.starts.fromlist(list(map(_START, recs)))
        self.ends.fromlist(list(map(_END, recs)))
        self.offsets.fromlist(list(map(self._offsets.__getitem__, map(_START_ZONE, recs))))
        self.origin_ids.fromlist(list(map(self.origins.index.__getitem__,
                                          map(_ORIGIN, map(_META, recs)))))
        lists = list(map(_SAMPLES, recs))
        self.sample_times.fromlist(list(map(_TIME, chain.from_iterable(lists))))
        self.bpms.fromlist(list(map(_BPM, chain.from_iterable(lists))))
        # record i's samples end where the running total of sample counts reaches it
        ends = accumulate(map(len, lists), initial=self.first[-1])
        self.first.fromlist(list(islice(ends, 1, None)))

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Samples:
        out = cls()
        out.extend(list(records))
        return out

    def __len__(self) -> int:
        return len(self.starts)

    def bounds(self) -> tuple[int, int, date, date]:
        return _bounds(self.starts, self.ends, self.offsets)


class Intervals(_ValueStore):
    """Interval records of one additive value (steps, active kcal): start, end, zone offset
    at the start, value, origin and record id (``origins.daily_totals`` needs every interval
    of a day for the overlap rules). ~80 bytes a record instead of ~1.5 kB of nested dicts:
    the ids, which only break ties between identical intervals, are kept as UTF-8 back to
    back (their byte order is their string order)."""

    __slots__ = ("_id_blob", "_id_first", "ends", "in_progress", "starts")

    def __init__(self, value_key: str) -> None:
        super().__init__(value_key)
        self.starts = array("q")
        self.ends = array("q")  # effective ends: the export time for a day still going
        self.in_progress = bytearray()  # 1: the record was still going when exported
        self._id_blob = bytearray()
        self._id_first = array("q", [0])  # record i's id is _id_blob[first[i]:first[i+1]]

    def extend(self, recs: list[Record]) -> None:
        """Append validated records, column by column."""
        self.starts.fromlist(list(map(_START, recs)))  # both times: required by the schemas
        self.ends.fromlist(list(map(_END, recs)))
        self.offsets.fromlist(list(map(self._offsets.__getitem__, map(_START_ZONE, recs))))
        self.values.fromlist(list(map(float, map(self._value, recs))))
        metas = list(map(_META, recs))
        self.origin_ids.fromlist(list(map(self.origins.index.__getitem__,
                                          map(str, map(_ORIGIN, metas)))))
        encoded = list(map(str.encode, map(str, map(_ID, metas))))
        self._id_first.fromlist(list(islice(
            accumulate(map(len, encoded), initial=self._id_first[-1]), 1, None)))
        self._id_blob += b"".join(encoded)
        self.in_progress += bytes(map(bool, map(_get, recs, repeat(IN_PROGRESS_KEY))))

    def id_key(self, i: int) -> bytes:
        """Record ``i``'s id as UTF-8: sorts like the id."""
        first = self._id_first
        return bytes(self._id_blob[first[i]:first[i + 1]])

    def __len__(self) -> int:
        return len(self.starts)

    def bounds(self) -> tuple[int, int, date, date]:
        return _bounds(self.starts, self.ends, self.offsets)
