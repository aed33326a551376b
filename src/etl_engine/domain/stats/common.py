"""Small pure helpers shared by the per-type statistics: local time, rounding, statistics.

Why here: every processor needs the same notion of "local date" (the record's own zone
offset, None read as UTC) and the same percentile and rounding rules, so that figures in
different statistics blocks agree with each other and with the narratives.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import repeat
from operator import itemgetter
from typing import Any

from etl_engine.domain.checks import zone_offset_seconds
from etl_engine.domain.model import Record

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


# --- record access -----------------------------------------------------------------------------
def offset_ms(zone: object) -> int:
    """Zone id to milliseconds; None or an unparseable id (validation drops those) is UTC."""
    seconds = zone_offset_seconds(zone)
    return (seconds or 0) * 1000


def start_ms(rec: Record) -> int:
    """Start of an interval record, or the time of an instant record."""
    value: int | None = rec.get("startTimeEpochMillis")
    if value is None:
        value = rec["timeEpochMillis"]
    return value


def end_ms(rec: Record) -> int:
    """End of an interval record, or the time of an instant record."""
    value: int | None = rec.get("endTimeEpochMillis")
    if value is None:
        value = rec["timeEpochMillis"]
    return value


def start_offset_ms(rec: Record) -> int:
    """Zone offset (ms) in force at the record's start (or its only instant)."""
    if "startTimeEpochMillis" in rec:
        return offset_ms(rec.get("startZoneOffsetId"))
    return offset_ms(rec.get("zoneOffsetId"))


def end_offset_ms(rec: Record) -> int:
    """Zone offset (ms) in force at the record's end (or its only instant)."""
    if "endTimeEpochMillis" in rec:
        return offset_ms(rec.get("endZoneOffsetId"))
    return offset_ms(rec.get("zoneOffsetId"))


def origin(rec: Record) -> str:
    """The app that wrote the record (validation guarantees a non-empty string)."""
    return str(rec["metadata"]["dataOriginPackageName"])


def record_id(rec: Record) -> str:
    """``metadata.id``, used only to break ties deterministically."""
    return str(rec["metadata"]["id"])


_get = dict.get
_META = itemgetter("metadata")
_ORIGIN = itemgetter("dataOriginPackageName")
_ID = itemgetter("id")


def _times_of(records: list[Record], key: str) -> list[int] | None:
    """``key`` of every record, or the instant time if no record has ``key``; None when the
    records mix both kinds (the caller then goes record by record)."""
    out: list[Any] = list(map(_get, records, repeat(key)))
    if None not in out:
        return out
    if out.count(None) == len(out):
        return list(map(itemgetter("timeEpochMillis"), records))
    return None


def starts_of(records: list[Record]) -> list[int]:
    """``start_ms`` of each record (column-wise, at C speed, for the usual list)."""
    out = _times_of(records, "startTimeEpochMillis")
    return list(map(start_ms, records)) if out is None else out


def ends_of(records: list[Record]) -> list[int]:
    """``end_ms`` of each record."""
    out = _times_of(records, "endTimeEpochMillis")
    return list(map(end_ms, records)) if out is None else out


def origins_of(records: list[Record]) -> list[str]:
    """``origin`` of each record."""
    return list(map(str, map(_ORIGIN, map(_META, records))))


def record_ids_of(records: list[Record]) -> list[str]:
    """``record_id`` of each record."""
    return list(map(str, map(_ID, map(_META, records))))


# --- local time --------------------------------------------------------------------------------
def local_date(epoch_ms: int, off_ms: int) -> date:
    """Calendar date on the wall clock of a zone offset."""
    return date.fromordinal(_EPOCH_ORDINAL + (epoch_ms + off_ms) // DAY_MS)


def day_from_index(index: int) -> date:
    """Date of a day number counted from 1970-01-01 (``(ms + offset) // DAY_MS``)."""
    return date.fromordinal(_EPOCH_ORDINAL + index)


def local_minute_of_day(epoch_ms: int, off_ms: int) -> int:
    """Minutes since local midnight (0-1439)."""
    return ((epoch_ms + off_ms) % DAY_MS) // MINUTE_MS


def iso_utc(epoch_ms: int) -> str:
    """ISO-8601 UTC timestamp with milliseconds and a ``Z`` suffix."""
    if type(epoch_ms) is int and _ISO_FAST_MIN <= epoch_ms < _ISO_FAST_MAX:
        days, ms = divmod(epoch_ms, DAY_MS)
        h, ms = divmod(ms, HOUR_MS)
        m, ms = divmod(ms, MINUTE_MS)
        s, ms = divmod(ms, 1000)
        return f"{_iso_day(days)}T{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"
    dt = _EPOCH + timedelta(milliseconds=epoch_ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


# Years 1000-9999, where ``date.isoformat`` writes the year as ``%Y`` does (four digits).
_ISO_FAST_MIN = (date(1000, 1, 1).toordinal() - _EPOCH_ORDINAL) * DAY_MS
_ISO_FAST_MAX = (date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * DAY_MS


@lru_cache(maxsize=256)
def _iso_day(index: int) -> str:
    return day_from_index(index).isoformat()


def hhmm(minute_of_day: float) -> str:
    """``HH:MM`` for a (possibly >24 h, wrapped) minute count."""
    m = round(minute_of_day) % 1440
    return f"{m // 60:02d}:{m % 60:02d}"


# --- numbers -----------------------------------------------------------------------------------
def rnd(value: float | None, digits: int = 1) -> float | None:
    """Round for output; keeps None; turns -0.0 into 0.0 so JSON stays tidy."""
    if value is None:
        return None
    out = round(float(value), digits)
    return 0.0 if out == 0 else out


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean with compensated summation (long CGM/heart-rate series)."""
    return math.fsum(values) / len(values)


def sample_sd(values: Sequence[float], centre: float | None = None) -> float | None:
    """Sample standard deviation (n - 1); None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = mean(values) if centre is None else centre
    # sum((v - m) ** 2), at C speed: a long series has millions of values
    squares = map(pow, map(operator.sub, values, repeat(m)), repeat(2))
    return math.sqrt(math.fsum(squares) / (n - 1))


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile (Hyndman-Fan type 7, numpy's default) of sorted data."""
    n = len(sorted_values)
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def percentages(weights: Sequence[float], decimals: int = 1) -> list[float]:
    """Shares of a total in percent, rounded so that they add up to exactly 100.

    Largest-remainder rounding: narratives quote these numbers, and "31.2 % + 68.9 %" that
    does not add to 100 reads as an error. Ties go to the earlier entry. All-zero -> zeros.
    """
    total = math.fsum(weights)
    if total <= 0:
        return [0.0] * len(weights)
    unit = 10**decimals
    exact = [w / total * 100 * unit for w in weights]
    floors = [math.floor(x) for x in exact]
    missing = 100 * unit - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:missing]:
        floors[i] += 1
    return [f / unit for f in floors]


def slope_per_day(times_ms: Sequence[int], values: Sequence[float]) -> float | None:
    """Least-squares slope of value against time, per day; None if times do not vary."""
    n = len(values)
    if n < 2:
        return None
    t0 = times_ms[0]
    xs = [(t - t0) / DAY_MS for t in times_ms]
    mx = math.fsum(xs) / n
    my = math.fsum(values) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True))
    return sxy / sxx


def summary(values: Iterable[float], digits: int = 1) -> dict[str, Any]:
    """count/min/max/mean of a numeric series (mean None for an empty series)."""
    vals = list(values)
    if not vals:
        return {"count": 0, "min": None, "max": None, "mean": None}
    return {"count": len(vals), "min": rnd(min(vals), digits), "max": rnd(max(vals), digits),
            "mean": rnd(mean(vals), digits)}
