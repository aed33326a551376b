"""Daily step totals by local date, against common daily-step reference points.

Why: step counts only make sense per day on the person's own clock. Each record counts
toward the local date of its start (its own zone offset). Per day, one origin's total is
used (``origins.py``: priority, else most covered time, so Samsung Health's 00:00 day wins
over Oura's 04:00 day unless ``origin_priority`` says otherwise), overlapping records within
that origin are counted once, and every origin's own daily totals are kept for reference.
A day still going when the app exported it is *partial* (``daily.py``): its steps so far are
reported, but averages, extremes and the reference points below use complete days only.
Reference points: 10 000 and 7 000 steps a day (the latter is where large cohort studies see
most of the benefit) and fewer than 5 000 steps for a mostly inactive day.
"""

from __future__ import annotations

from typing import Any

from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.stats.columns import Intervals
from etl_engine.domain.stats.common import mean, rnd
from etl_engine.domain.stats.daily import complete_values, day_details, over_complete, sufficiency
from etl_engine.domain.stats.origins import interval_daily_totals

SEDENTARY_BELOW = 5_000
MODERATE_GOAL = 7_000
CLASSIC_GOAL = 10_000
VALUE_KEY = "count"


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """The list API: the same column store the streaming path fills."""
    return statistics(Intervals.from_records(records, VALUE_KEY), config)


def _origins(per_origin: dict[str, dict[Any, float]]) -> dict[str, Any]:
    out = {}
    for name in sorted(per_origin):
        per_day = {d.isoformat(): round(v) for d, v in sorted(per_origin[name].items())}
        out[name] = {"days": len(per_day), "total_steps": sum(per_day.values()),
                     "daily_steps": per_day}
    return out


def statistics(cols: Intervals, config: DomainConfig) -> dict[str, Any]:
    """Daily totals (chosen origin), complete-day figures, partial days, per-origin totals."""
    daily = interval_daily_totals(cols, config.origin_priority)
    days = {d.isoformat(): round(v) for d, v in daily.totals.items()}
    details = day_details(daily)
    done = complete_values(days, details)
    complete_days = {d: v for d, v in days.items() if details[d]["complete"]}
    return {
        "days": len(days),
        "complete_days": len(done),
        "partial_days": len(days) - len(done),
        "partial": len(done) < len(days),
        "total_steps": sum(days.values()),
        "average_daily_steps": over_complete(done, lambda v: rnd(mean(v))),
        "max_daily_steps": over_complete(done, max),
        "min_daily_steps": over_complete(done, min),
        "best_day": over_complete(done, lambda _: min(
            complete_days, key=lambda d: (-complete_days[d], d))),
        "daily_steps": days,
        "days_detail": details,
        "days_at_or_above_7000": sum(1 for v in done if v >= MODERATE_GOAL),
        "days_at_or_above_10000": sum(1 for v in done if v >= CLASSIC_GOAL),
        "sedentary_days_below_5000": sum(1 for v in done if v < SEDENTARY_BELOW),
        "sufficiency": sufficiency(details),
        "origin_by_day": {d.isoformat(): o for d, o in daily.chosen.items()},
        "days_with_multiple_origins": daily.multi_origin_days,
        "origins": _origins(daily.per_origin),
    }
