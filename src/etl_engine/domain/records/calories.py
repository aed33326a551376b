"""Daily active energy (kcal) by local date.

Why: like steps, active calories are additive over the day on the person's own clock; the
same one-origin-per-day rule applies (``origins.py``), so a phone and a watch reporting the
same workout are never added together, and a day still going when the app exported it is
*partial* (``daily.py``): reported as it stands, left out of the per-day average and
extremes.
"""

from __future__ import annotations

from typing import Any

from etl_engine.domain.checks import number_check, number_chunk_check
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.columns import Intervals
from etl_engine.domain.stats.common import mean, rnd
from etl_engine.domain.stats.daily import complete_values, day_details, over_complete, sufficiency
from etl_engine.domain.stats.origins import interval_daily_totals
from etl_engine.domain.stats.schema import (
    AMOUNT,
    COUNT,
    DAY_COVERAGE,
    ORIGIN_BY_DAY,
    by_local_date,
    per_origin,
)
from etl_engine.domain.wording import Stats, cap, clock, num, origin_note, partial_days, plural

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


# --- validation -------------------------------------------------------------------------------
ACTIVE_KCAL_RANGE = (0.0, 10_000.0)
check_record = number_check(VALUE_KEY, *ACTIVE_KCAL_RANGE, "active_calories_out_of_range")
check_chunk = number_chunk_check(VALUE_KEY, *ACTIVE_KCAL_RANGE)


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How many active calories did I burn {period}?",
    "Can you summarize my active energy {period}?",
    "What do my active calories {period} look like?",
)


def narrative(s: Stats, period: str) -> str:
    """Daily active energy totals and the average per complete day."""
    days, complete = s["days"], s["complete_days"]
    if days == 1 and complete == 0:
        [(day, d)] = s["days_detail"].items()
        text = (f"So far {period}, by {clock(d['as_of_local'])}, {num(s['daily_kcal'][day])} "
                f"kcal of active energy were burned, covering {num(d['hours_covered'])} hours "
                "of the day; the day was still in progress when the phone exported it.")
    elif days == 1:
        text = f"{cap(period)}, {num(s['total_kcal'])} kcal of active energy were burned."
    else:
        parts = [f"{cap(period)}, active energy was recorded on {plural(days, 'day')}: "
                 f"{num(s['total_kcal'])} kcal in total."]
        if complete == 1:
            parts.append(f"The one complete day had {num(s['max_daily_kcal'])} kcal.")
        elif complete:
            parts.append(f"Over the {plural(complete, 'complete day')} the average was "
                         f"{num(s['average_kcal_per_day'])} kcal per day (highest "
                         f"{num(s['max_daily_kcal'])} kcal, lowest "
                         f"{num(s['min_daily_kcal'])} kcal).")
        parts += partial_days(s, "daily_kcal", "kcal")
        text = " ".join(parts)
    text += (" Active calories count only the energy burned through movement, on top of what "
             "the body uses at rest.")
    return text + origin_note(s["days_with_multiple_origins"], "days")


# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="caloriesStatistics",
    schema={
        "type": "object",
        "description": (
            "ActiveCaloriesBurnedRecord statistics (domain/records/calories.py); "
            "days are local dates."
        ),
        "required": [
            "days", "total_kcal", "average_kcal_per_day", "max_daily_kcal", "min_daily_kcal",
            "daily_kcal", "origin_by_day", "days_with_multiple_origins", "origins", "complete_days",
            "partial_days", "partial", "days_detail", "sufficiency",
        ],
        "properties": {
            "days": {"type": "integer", "minimum": 1},
            "total_kcal": {"type": "number", "minimum": 0},
            "average_kcal_per_day": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "max_daily_kcal": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "min_daily_kcal": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "daily_kcal": by_local_date(AMOUNT),
            **ORIGIN_BY_DAY,
            "origins": per_origin({
                "days": COUNT, "total_kcal": AMOUNT, "daily_kcal": by_local_date(AMOUNT),
            }),
            **DAY_COVERAGE,
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="hourly_bars", heading="Active calories", unit="kcal", color="#e08a2e",
              daily_key="daily_kcal")


SPEC = RecordTypeSpec(
    name="ActiveCaloriesBurnedRecord",
    category="energy_metabolism",
    interval=True,
    schema_file="ActiveCaloriesBurnedRecord.avsc",
    check=check_record,
    clean=check_chunk,
    statistics=compute_statistics,
    column_store=lambda: Intervals(VALUE_KEY),
    column_statistics=statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=60,
)
