"""Daily active energy (kcal) by local date.

Why: like steps, active calories are additive over the day on the person's own clock; the
same one-origin-per-day rule applies (``origins.py``), so a phone and a watch reporting the
same workout are never added together, and a day still going when the app exported it is
*partial* (``daily.py``): reported as it stands, left out of the per-day average and
extremes.
"""

from __future__ import annotations

from typing import Any

from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.stats.columns import Intervals
from etl_engine.domain.stats.common import mean, rnd
from etl_engine.domain.stats.daily import complete_values, day_details, over_complete, sufficiency
from etl_engine.domain.stats.origins import interval_daily_totals

VALUE_KEY = "energyInKilocalories"


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """The list API: the same column store the streaming path fills."""
    return statistics(Intervals.from_records(records, VALUE_KEY), config)


def statistics(cols: Intervals, config: DomainConfig) -> dict[str, Any]:
    """Daily totals (chosen origin), complete-day figures, partial days, per-origin totals."""
    daily = interval_daily_totals(cols, config.origin_priority)
    days = {d.isoformat(): rnd(v) or 0.0 for d, v in daily.totals.items()}
    details = day_details(daily)
    done = complete_values(days, details)
    origins = {}
    for name in sorted(daily.per_origin):
        per_day = {d.isoformat(): rnd(v) or 0.0 for d, v in sorted(daily.per_origin[name].items())}
        origins[name] = {"days": len(per_day), "total_kcal": rnd(sum(per_day.values())),
                         "daily_kcal": per_day}
    return {
        "days": len(days),
        "complete_days": len(done),
        "partial_days": len(days) - len(done),
        "partial": len(done) < len(days),
        "total_kcal": rnd(sum(days.values())),
        "average_kcal_per_day": over_complete(done, lambda v: rnd(mean(v))),
        "max_daily_kcal": over_complete(done, max),
        "min_daily_kcal": over_complete(done, min),
        "daily_kcal": days,
        "days_detail": details,
        "sufficiency": sufficiency(details),
        "origin_by_day": {d.isoformat(): o for d, o in daily.chosen.items()},
        "days_with_multiple_origins": daily.multi_origin_days,
        "origins": origins,
    }
