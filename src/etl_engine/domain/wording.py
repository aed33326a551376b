"""Wording the narratives share: dates, numbers, plurals, durations, lists.

Why a module of their own: each record type's narrative lives in its file
(``records/<type>.py``) and ``narratives.py`` finds it through the registry, which imports
those files; the helpers both sides use live here, below all of them, so the imports stay
acyclic (``narratives`` re-exports them under their old names). Deterministic: no locale,
no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from functools import lru_cache
from typing import Any

Stats = Mapping[str, Any]

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def long_date(d: date, *, with_year: bool = True) -> str:
    """``March 3, 2024`` without relying on the process locale."""
    text = f"{_MONTHS[d.month - 1]} {d.day}"
    return f"{text}, {d.year}" if with_year else text


def period_phrase(first: date, last: date) -> str:
    """``on March 3, 2024`` or ``between March 3 and March 9, 2024``."""
    if first == last:
        return f"on {long_date(first)}"
    if first.year == last.year:
        return f"between {long_date(first, with_year=False)} and {long_date(last)}"
    return f"between {long_date(first)} and {long_date(last)}"


def num(value: float | int | None) -> str:
    """A statistic as text: thousands separators, no trailing ``.0``."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 night`` / ``3 nights``."""
    return f"{num(n)} {word if n == 1 else (words or word + 's')}"


def duration(minutes: float) -> str:
    """``7 hours 5 minutes`` from a minute count (rounded to the minute)."""
    total = round(minutes)
    h, m = divmod(total, 60)
    parts = []
    if h:
        parts.append(plural(h, "hour"))
    if m or not h:
        parts.append(plural(m, "minute"))
    return " ".join(parts)


def join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(text: str) -> str:
    """The text with its first letter upper case (a sentence that starts with a period)."""
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=64)
def readable_type(record_type: str) -> str:
    """``BodyTemperatureRecord`` -> ``body temperature``."""
    name = record_type.removesuffix("Record")
    out = "".join(" " + c.lower() if c.isupper() else c for c in name).strip()
    return out or record_type


def origin_note(count: int, what: str) -> str:
    """The sentence saying that some ``what`` (days, nights) had more than one source."""
    if count <= 0:
        return ""
    return (f" Some {what} had data from more than one app; for each of them a single source "
            "was used so nothing was counted twice.")


def clock(hhmm_text: str) -> str:
    """``17:25`` -> ``5:25 p.m.`` (the way people say the time of an export)."""
    h, m = (int(x) for x in hhmm_text.split(":"))
    suffix = "a.m." if h < 12 else "p.m."
    return f"{(h % 12) or 12}:{m:02d} {suffix}"


def partial_days(s: Stats, values: str, unit: str) -> list[str]:
    """One sentence per day still in progress at its export: what it had by then (the
    daily additive types, steps and active calories, share it)."""
    out = []
    for day, d in sorted(s["days_detail"].items()):
        if d["complete"]:
            continue
        out.append(f"{long_date(date.fromisoformat(day))} was still in progress when the phone "
                   f"exported it: {num(s[values][day])} {unit} by {clock(d['as_of_local'])}, "
                   f"covering {num(d['hours_covered'])} hours of the day, so it is not "
                   "counted in the figures for complete days.")
    return out
