"""Fallback statistics for any record type: counts, time span, numeric field summaries.

Why: a type without a dedicated processor (or a new Health Connect type) still yields a
truthful, if plain, summary instead of failing the message. Numeric fields are the
top-level int/float fields other than timestamps; no origin selection is attempted because
the meaning of the values (additive or not) is unknown, so the summary is per field over
all valid records, with per-origin record counts alongside.
"""

from __future__ import annotations

from typing import Any

from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.stats.common import (
    HOUR_MS,
    end_ms,
    iso_utc,
    local_date,
    origin,
    rnd,
    start_ms,
    start_offset_ms,
    summary,
)

_SKIP_SUFFIX = "EpochMillis"


def numeric_fields(records: list[Record]) -> dict[str, list[float]]:
    """Top-level numeric (not bool, not timestamp) values by field name."""
    out: dict[str, list[float]] = {}
    for rec in records:
        for key, value in rec.items():
            if key.endswith(_SKIP_SUFFIX) or key == "durationMillis":
                continue
            if type(value) is int or type(value) is float:
                out.setdefault(key, []).append(value)
    return out


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Record count, time span, local days, per-field count/min/max/mean, origins."""
    first = min(start_ms(r) for r in records)
    last = max(end_ms(r) for r in records)
    days = {local_date(start_ms(r), start_offset_ms(r)) for r in records}
    origins: dict[str, int] = {}
    for rec in records:
        name = origin(rec)
        origins[name] = origins.get(name, 0) + 1
    fields = numeric_fields(records)
    return {
        "record_count": len(records),
        "first_time": iso_utc(first),
        "last_time": iso_utc(last),
        "span_hours": rnd((last - first) / HOUR_MS),
        "days": len(days),
        "fields": {name: summary(fields[name], 2) for name in sorted(fields)},
        "origins": {name: {"records": origins[name]} for name in sorted(origins)},
    }
