"""Building blocks of validation that the record types share: zone offsets, number tests,
chunk-wide value tests and the verdict a value check returns.

Why a module of their own: each record type's file (``records/<type>.py``) holds its value
checks, and ``validation.py`` looks the type up in the registry, which imports those files.
The helpers both sides need live here, below all of them, so the imports stay acyclic
(``validation`` re-exports the public ones under their old names).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from itertools import repeat
from operator import le
from typing import Any, NamedTuple, TypeGuard

from etl_engine.domain.model import Record

MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_OFFSET_SECONDS = 18 * 3600
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Set (True) on the copy of a record that was still in progress at its export time.
IN_PROGRESS_KEY = "etlInProgress"
FETCH_KEY = "appRecordFetchTimeEpochMillis"


# --- zone offsets -------------------------------------------------------------------------------
def _hms(body: str) -> tuple[int, int, int] | None:
    """(hours, minutes, seconds) of an offset without its sign: ``HH``, ``HHMM``, ``HH:MM``
    or ``HH:MM:SS``; None for anything else."""
    n = len(body)
    if n == 2 and body.isdigit():
        return int(body), 0, 0
    if n == 4 and body.isdigit():
        return int(body[:2]), int(body[2:]), 0
    if n == 5 and body[2] == ":" and (body[:2] + body[3:]).isdigit():
        return int(body[:2]), int(body[3:]), 0
    if (n == 8 and body[2] == ":" and body[5] == ":"
            and (body[:2] + body[3:5] + body[6:]).isdigit()):
        return int(body[:2]), int(body[3:5]), int(body[6:])
    return None


def _offset_uncached(zone: str) -> int | None:
    if zone == "Z":
        return 0
    if len(zone) < 3 or zone[0] not in "+-":
        return None
    body = zone[1:]
    if not body.isascii():
        return None
    parts = _hms(body)
    if parts is None:
        return None
    h, m, s = parts
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


# --- one record -------------------------------------------------------------------------------
class CheckResult(NamedTuple):
    """A value check's verdict on a record it does not keep whole and unchanged (a check
    returns None for those, the usual case, so nothing is allocated per record).

    ``code``: the reason the record is excluded, or None when it is kept as ``record`` (a
    trimmed copy) with ``usable`` of it usable; ``inconsistent``: it contradicts itself;
    ``drops``: parts dropped (heart-rate samples), counted per reason code.
    """

    code: str | None
    record: Record | None = None
    usable: float = 0.0
    inconsistent: bool = False
    drops: dict[str, int] | None = None


# What a value check gets: the record, its start and (effective) end; None means "keep it".
ValueCheck = Callable[[Record, int, int], CheckResult | None]
# What a chunk check gets: the records, their starts and ends; True means "all pass".
ChunkCheck = Callable[[list[Record], list[Any], list[Any]], bool]

# Verdicts many types share (immutable, so one object serves every record).
MISSING_VALUE = CheckResult("missing_value")
UNKNOWN_ENUM_VALUE = CheckResult("unknown_enum_value")
MALFORMED_RECORD = CheckResult("malformed_record")
MISSING_TIMESTAMP = CheckResult("missing_timestamp")


def is_num(v: object) -> TypeGuard[float]:
    """int or float but not bool (a bool is an int to Python, never a measurement)."""
    t = type(v)
    return t is float or t is int


def number_check(key: str, lo: float, hi: float, out_of_range: str, *,
                 ints_only: bool = False) -> ValueCheck:
    """The value check of a type whose rule is one number in ``[lo, hi]``: ``missing_value``
    when it is absent or not a number (an int, with ``ints_only``), else ``out_of_range``."""
    missing, outside = MISSING_VALUE, CheckResult(out_of_range)

    def check_int(rec: Record, s: int, e: int) -> CheckResult | None:
        v = rec.get(key)
        if type(v) is not int:
            return missing
        if not lo <= v <= hi:
            return outside
        return None

    def check_number(rec: Record, s: int, e: int) -> CheckResult | None:
        v = rec.get(key)
        if not is_num(v):
            return missing
        if not lo <= v <= hi:
            return outside
        return None

    return check_int if ints_only else check_number


# --- whole chunks -------------------------------------------------------------------------------
ONLY_DICT = frozenset({dict})
ONLY_STR = frozenset({str})
ONLY_INT = frozenset({int})
NUMBER_TYPES = frozenset({int, float})
get: Callable[..., Any] = dict.get  # map(get, records, repeat(key)): C-speed field reads


def between(values: list[Any], lo: float, hi: float) -> bool:
    """``lo <= v <= hi`` for every value (False for NaN, as in the per-record checks)."""
    return all(map(le, repeat(lo), values)) and all(map(le, values, repeat(hi)))


def numbers_between(chunk: list[Record], key: str, lo: float, hi: float) -> bool:
    """Every record's ``key`` is an int or float (not a bool) within ``[lo, hi]``."""
    values = list(map(get, chunk, repeat(key)))
    return set(map(type, values)) <= NUMBER_TYPES and between(values, lo, hi)


def number_chunk_check(key: str, lo: float, hi: float, *, ints_only: bool = False) -> ChunkCheck:
    """The chunk check matching ``number_check(key, lo, hi, ...)``."""
    if ints_only:
        def ints(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
            values = list(map(get, chunk, repeat(key)))
            return set(map(type, values)) == ONLY_INT and between(values, lo, hi)
        return ints

    def numbers(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
        return numbers_between(chunk, key, lo, hi)
    return numbers


def enums_within(chunk: list[Record], key: str, allowed: frozenset[Any]) -> bool:
    """Every record's ``key`` is absent, None or one of ``allowed`` (which includes None)."""
    return set(map(get, chunk, repeat(key))) <= allowed
