"""Heart-rate variability (RMSSD) statistics.

Why these choices: RMSSD is noisy reading to reading, so the useful signals are the level
(mean, median), its spread (sample SD) and the direction over the period:

* **trend** = least-squares slope of RMSSD against time, in ms per day, reported only with
  at least 3 readings spanning at least 24 h. ``trend_direction`` is ``stable`` when the
  fitted change over the whole span is under 5 % of the mean, else ``rising``/``falling``;
* **night vs day**: readings taken 00:00-05:59 local time (their own zone offset) against
  the rest; each side is None when it has no readings;
* one origin per local day (``origins.py``); readings with the same timestamp, once.
"""

from __future__ import annotations

from typing import Any

from etl_engine.processors._common import (
    DAY_MS,
    local_minute_of_day,
    mean,
    percentile,
    rnd,
    sample_sd,
    slope_per_day,
    start_ms,
    start_offset_ms,
)
from etl_engine.processors.origins import by_origin, reading_coverage, select_daily
from etl_engine.stages import DomainConfig, Record

VALUE_KEY = "heartRateVariabilityRmssd"
NIGHT_END_MINUTE = 6 * 60
TREND_MIN_READINGS = 3
TREND_MIN_SPAN_MS = DAY_MS
STABLE_CHANGE_FRACTION = 0.05


def _readings(records: list[Record]) -> list[tuple[int, float, int]]:
    """Time-ordered (ms, value, zone offset ms), one per timestamp."""
    out: list[tuple[int, float, int]] = []
    last: int | None = None
    for t, v, off in sorted((start_ms(r), float(r[VALUE_KEY]), start_offset_ms(r))
                            for r in records):
        if t != last:
            out.append((t, v, off))
            last = t
    return out


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Level, spread, trend per day and night-vs-day means."""
    choices = select_daily(records, config.origin_priority, reading_coverage)
    readings = _readings([r for c in choices for r in c.records])
    times = [t for t, _, _ in readings]
    values = [v for _, v, _ in readings]
    n = len(values)
    m = mean(values)
    ordered = sorted(values)

    span_ms = times[-1] - times[0]
    slope = None
    direction = None
    if n >= TREND_MIN_READINGS and span_ms >= TREND_MIN_SPAN_MS:
        slope = slope_per_day(times, values)
        if slope is not None:
            change = slope * span_ms / DAY_MS
            if abs(change) < STABLE_CHANGE_FRACTION * m:
                direction = "stable"
            else:
                direction = "rising" if change > 0 else "falling"

    night = [v for t, v, off in readings if local_minute_of_day(t, off) < NIGHT_END_MINUTE]
    day = [v for t, v, off in readings if local_minute_of_day(t, off) >= NIGHT_END_MINUTE]

    per_origin = by_origin(records)
    origins = {}
    for name in sorted(per_origin):
        vals = values if len(per_origin) == 1 else [v for _, v, _ in _readings(per_origin[name])]
        origins[name] = {"readings": len(vals), "mean_ms": rnd(mean(vals))}

    return {
        "reading_count": n,
        "days": len(choices),
        "span_days": rnd(span_ms / DAY_MS),
        "mean_ms": rnd(m),
        "median_ms": rnd(percentile(ordered, 50)),
        "sd_ms": rnd(sample_sd(values, m)),
        "min_ms": rnd(ordered[0]),
        "max_ms": rnd(ordered[-1]),
        "trend_ms_per_day": rnd(slope, 2),
        "trend_direction": direction,
        "night_readings": len(night),
        "night_mean_ms": rnd(mean(night)) if night else None,
        "day_readings": len(day),
        "day_mean_ms": rnd(mean(day)) if day else None,
        "origins": origins,
        "origin_by_day": {c.period.isoformat(): c.origin for c in choices},
        "days_with_multiple_origins": sum(1 for c in choices if len(c.coverage) > 1),
    }
