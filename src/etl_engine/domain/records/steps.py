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

from datetime import date
from typing import Any

from etl_engine.domain.checks import number_check, number_chunk_check
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.columns import Intervals
from etl_engine.domain.stats.common import mean, rnd
from etl_engine.domain.stats.daily import complete_values, day_details, over_complete, sufficiency
from etl_engine.domain.stats.origins import interval_daily_totals
from etl_engine.domain.stats.schema import (
    COUNT,
    DAY_COVERAGE,
    ORIGIN_BY_DAY,
    by_local_date,
    per_origin,
)
from etl_engine.domain.wording import (
    Stats,
    cap,
    clock,
    long_date,
    num,
    origin_note,
    partial_days,
    plural,
)

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


# --- validation -------------------------------------------------------------------------------
STEPS_RANGE = (0, 100_000)
check_record = number_check(VALUE_KEY, *STEPS_RANGE, "steps_out_of_range", ints_only=True)
check_chunk = number_chunk_check(VALUE_KEY, *STEPS_RANGE, ints_only=True)


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How active was I {period}, based on my steps?",
    "Can you summarize my step counts {period}?",
    "How many steps did I take {period}?",
)


def _grade(steps: int) -> str:
    if steps >= 10_000:
        return "reaching the often-quoted goal of 10,000 steps"
    if steps >= 7_000:
        return ("above the 7,000 steps a day linked with health benefits in large studies, "
                "though short of 10,000")
    if steps >= 5_000:
        return "below the 7,000 steps a day linked with health benefits in large studies"
    return "under 5,000 steps, a level often used to describe a mostly inactive day"


def _one_partial_day_text(s: Stats, period: str) -> str:
    [(day, d)] = s["days_detail"].items()
    steps = s["daily_steps"][day]
    return (f"So far {period}, by {clock(d['as_of_local'])}, {plural(steps, 'step')} "
            f"{'was' if steps == 1 else 'were'} recorded, covering {num(d['hours_covered'])} "
            f"hours of the day ({num(d['day_covered_percent'])}%). The day was still in "
            "progress when the phone exported it, so no activity level is given for it.")


def _complete_days_text(s: Stats) -> str:
    n = s["complete_days"]
    if n == 1:
        return (f"The one complete day had {plural(s['max_daily_steps'], 'step')}, "
                f"{_grade(s['max_daily_steps'])}.")
    tens, sevens, low = (s["days_at_or_above_10000"], s["days_at_or_above_7000"],
                         s["sedentary_days_below_5000"])
    return (f"Over the {num(n)} complete days the average was "
            f"{num(s['average_daily_steps'])} steps per day. The most active day was "
            f"{long_date(date.fromisoformat(s['best_day']))} with {num(s['max_daily_steps'])} "
            f"steps and the least active had {num(s['min_daily_steps'])}. {num(tens)} of "
            f"{plural(n, 'day')} reached 10,000 steps and {num(sevens)} reached 7,000, a level "
            f"linked with health benefits in large studies. {cap(plural(low, 'day'))} "
            f"{'was' if low == 1 else 'were'} under 5,000 steps, a level often used to "
            "describe a mostly inactive day.")


def narrative(s: Stats, period: str) -> str:
    """Daily totals against the 5,000 / 7,000 / 10,000 reference points; complete days only
    are graded, a day still in progress is reported as it stood at the export."""
    days, complete = s["days"], s["complete_days"]
    if days == 1 and complete == 0:
        text = _one_partial_day_text(s, period)
    elif days == 1:
        steps = s["total_steps"]
        text = (f"{cap(period)}, {plural(steps, 'step')} {'was' if steps == 1 else 'were'} "
                f"recorded, {_grade(steps)}.")
    else:
        parts = [f"{cap(period)}, steps were recorded on {plural(days, 'day')}, "
                 f"{num(s['total_steps'])} steps in total."]
        if complete:
            parts.append(_complete_days_text(s))
        parts += partial_days(s, "daily_steps", "steps")
        text = " ".join(parts)
    return text + origin_note(s["days_with_multiple_origins"], "days")


# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="stepsStatistics",
    schema={
        "type": "object",
        "description": "StepsRecord statistics (domain/records/steps.py); days are local dates.",
        "required": [
            "days", "total_steps", "average_daily_steps", "max_daily_steps", "min_daily_steps",
            "best_day", "daily_steps", "days_at_or_above_7000", "days_at_or_above_10000",
            "sedentary_days_below_5000", "origin_by_day", "days_with_multiple_origins", "origins",
            "complete_days", "partial_days", "partial", "days_detail", "sufficiency",
        ],
        "properties": {
            "days": {"type": "integer", "minimum": 1},
            "total_steps": {"type": "integer", "minimum": 0},
            "average_daily_steps": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "max_daily_steps": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "min_daily_steps": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Over complete days only; null when no day is complete.",
            },
            "best_day": {
                "anyOf": [{"$ref": "#/$defs/localDate"}, {"type": "null"}],
                "description": (
                    "The complete day with the most steps; null when no day is complete."
                ),
            },
            "daily_steps": by_local_date(COUNT),
            "days_at_or_above_7000": {**COUNT, "description": "Complete days only."},
            "days_at_or_above_10000": {**COUNT, "description": "Complete days only."},
            "sedentary_days_below_5000": {**COUNT, "description": "Complete days only."},
            **ORIGIN_BY_DAY,
            "origins": per_origin({
                "days": COUNT, "total_steps": COUNT, "daily_steps": by_local_date(COUNT),
            }),
            **DAY_COVERAGE,
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="hourly_bars", heading="Steps", unit="steps", color="#4a9a5b",
              daily_key="daily_steps")


SPEC = RecordTypeSpec(
    name="StepsRecord",
    category="physical_activity",
    interval=True,
    schema_file="StepsRecord.avsc",
    check=check_record,
    clean=check_chunk,
    statistics=compute_statistics,
    column_store=lambda: Intervals(VALUE_KEY),
    column_statistics=statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=50,
)
