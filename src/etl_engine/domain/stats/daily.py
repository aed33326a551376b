"""What a day of an additive measure (steps, active kcal) rests on: complete or in progress.

Why: the app exports a running-total day while it is still going (Samsung Health's day runs
00:00-23:59:59.999 local time, Oura's 04:00-23:59:59.999, and the export can come at 10
a.m.). Such a day is reported as it stands, *partial*, with the time it was exported and how
much of the day its chosen origin covered by then; averages, extremes and activity grades
use complete days only, so a morning is never graded as a whole day.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from etl_engine.domain.stats.common import DAY_MS, HOUR_MS, hhmm, local_minute_of_day, rnd
from etl_engine.domain.stats.origins import DailyTotals


def day_details(daily: DailyTotals) -> dict[str, dict[str, Any]]:
    """Per local day: complete or not, export time (local HH:MM) if not, coverage, origin."""
    out: dict[str, dict[str, Any]] = {}
    for day in sorted(daily.totals):
        covered = daily.coverage.get(day, 0.0)
        as_of = daily.as_of.get(day)
        out[day.isoformat()] = {
            "complete": as_of is None,
            "as_of_local": None if as_of is None else hhmm(local_minute_of_day(*as_of)),
            "hours_covered": rnd(covered / HOUR_MS),
            "day_covered_percent": rnd(min(100.0, covered / DAY_MS * 100)),
            "origin": daily.chosen[day],
        }
    return out


def sufficiency(details: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Days and hours the figures rest on, and how many days were still in progress."""
    complete = sum(1 for d in details.values() if d["complete"])
    hours = sum(d["hours_covered"] or 0.0 for d in details.values())
    return {"days_covered": len(details), "complete_days": complete,
            "partial_days": len(details) - complete, "hours_covered": rnd(hours)}


def complete_values(values: dict[str, Any], details: dict[str, dict[str, Any]]) -> list[Any]:
    """The daily values of complete days, in date order."""
    return [values[d] for d in sorted(values) if details[d]["complete"]]


def over_complete(values: list[Any], fn: Callable[[list[Any]], Any]) -> Any:
    """``fn(values)``, or None when no day is complete (nothing to average or grade)."""
    return fn(values) if values else None
