"""Daily step totals by local date, against common daily-step reference points.

Why: step counts only make sense per day on the person's own clock. Each record counts
toward the local date of its start (its own zone offset). Per day, one origin's total is
used (``origins.py``: priority, else most covered time), overlapping records within that
origin are counted once, and every origin's own daily totals are kept for reference.
Reference points: 10 000 and 7 000 steps a day (the latter is where large cohort studies see
most of the benefit) and fewer than 5 000 steps for a sedentary day.
"""

from __future__ import annotations

from typing import Any

from etl_engine.processors._common import mean, rnd
from etl_engine.processors.columns import Intervals
from etl_engine.processors.origins import interval_daily_totals
from etl_engine.stages import DomainConfig, Record

SEDENTARY_BELOW = 5_000
MODERATE_GOAL = 7_000
CLASSIC_GOAL = 10_000
VALUE_KEY = "count"


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """The list API: the same column store the streaming path fills."""
    return statistics(Intervals.from_records(records, VALUE_KEY), config)


def statistics(cols: Intervals, config: DomainConfig) -> dict[str, Any]:
    """Daily totals (chosen origin), average, goal days, sedentary days, per-origin totals."""
    daily = interval_daily_totals(cols, config.origin_priority)
    days = {d.isoformat(): round(v) for d, v in daily.totals.items()}
    values = list(days.values())
    best_day = min(days, key=lambda d: (-days[d], d))
    origins = {}
    for name in sorted(daily.per_origin):
        per_day = {d.isoformat(): round(v) for d, v in sorted(daily.per_origin[name].items())}
        origins[name] = {"days": len(per_day), "total_steps": sum(per_day.values()),
                         "daily_steps": per_day}
    return {
        "days": len(values),
        "total_steps": sum(values),
        "average_daily_steps": rnd(mean(values)),
        "max_daily_steps": max(values),
        "min_daily_steps": min(values),
        "best_day": best_day,
        "daily_steps": days,
        "days_at_or_above_7000": sum(1 for v in values if v >= MODERATE_GOAL),
        "days_at_or_above_10000": sum(1 for v in values if v >= CLASSIC_GOAL),
        "sedentary_days_below_5000": sum(1 for v in values if v < SEDENTARY_BELOW),
        "origin_by_day": {d.isoformat(): o for d, o in daily.chosen.items()},
        "days_with_multiple_origins": daily.multi_origin_days,
        "origins": origins,
    }
