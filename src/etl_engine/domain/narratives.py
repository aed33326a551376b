"""Plain-language narratives and instructions built from processor statistics.

Why a separate module: the narrative is the training target, so it must be deterministic
(same statistics, same text, no locale, no clock), must only quote numbers that are in the
statistics (already rounded there, so text and metadata never disagree), and must stay
gentle: it describes and gives common reference points, it never diagnoses. The wording of
the *instruction* varies between a few phrasings, picked by a stable hash of a seed (the
message's idempotency key), so a training set is not one repeated question.

Each record type's narrative and phrasings live in its file (``records/<type>.py``) and
are found through the registry; a type without a spec gets the generic wording below. The
shared helpers live in ``wording.py`` and are re-exported here under their old names.
"""

from __future__ import annotations

import zlib
from datetime import date

from etl_engine.domain import registry
from etl_engine.domain.wording import (
    Stats,
    cap,
    clock,
    duration,
    long_date,
    num,
    origin_note,
    partial_days,
    period_phrase,
    plural,
    readable_type,
)

__all__ = ["Stats", "build", "clock", "duration", "generic_narrative", "instruction",
           "long_date", "narrative", "num", "origin_note", "partial_days", "period_phrase",
           "plural", "readable_type"]

_GENERIC_INSTRUCTIONS = (
    "Can you summarize my {thing} data {period}?",
    "What does my {thing} data {period} show?",
)


def generic_narrative(s: Stats, period: str, thing: str = "health") -> str:
    """Record count, span and each numeric field's average and range."""
    n = s["record_count"]
    out = [f"{cap(period)}, {plural(n, thing + ' record')} {'was' if n == 1 else 'were'} "
           f"recorded over {plural(s['days'], 'day')}, spanning {num(s['span_hours'])} hours."]
    for name, f in s["fields"].items():
        out.append(f"{cap(readable_type(name))}: average {num(f['mean'])}, ranging from "
                   f"{num(f['min'])} to "
                   f"{num(f['max'])} across {plural(f['count'], 'record')}.")
    return " ".join(out)


def instruction(record_type: str, first_day: date, last_day: date, seed: str = "") -> str:
    """A natural question about the period; the phrasing is picked by a stable seed hash."""
    period = period_phrase(first_day, last_day)
    spec = registry.find(record_type)
    choices = _GENERIC_INSTRUCTIONS if spec is None else spec.instructions
    pick = choices[zlib.crc32(seed.encode()) % len(choices)]
    return pick.format(period=period, thing=readable_type(record_type))


def narrative(record_type: str, stats: Stats, first_day: date, last_day: date) -> str:
    """The answer: the statistics in plain words (generic wording for unknown types)."""
    period = period_phrase(first_day, last_day)
    spec = registry.find(record_type)
    if spec is None:
        return generic_narrative(stats, period, readable_type(record_type))
    return spec.narrative(stats, period)


def build(
    record_type: str, stats: Stats, *, first_day: date, last_day: date, seed: str = ""
) -> tuple[str, str]:
    """(instruction, output) for one training record."""
    return (instruction(record_type, first_day, last_day, seed),
            narrative(record_type, stats, first_day, last_day))
