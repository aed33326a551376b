"""Heart-rate variability (RMSSD) statistics, summarised per night.

Why these choices: RMSSD is noisy reading to reading, so the useful signals are the level
(mean, median), its spread (sample SD) and the direction over the period. Devices such as
Oura measure it only during the night's sleep, so splitting readings by clock hours
("midnight to 6 a.m." against "the rest of the day") describes when the device measured,
not the person; the readings are grouped into nights instead:

* **Night** = a run of time-ordered readings (all origins together) in which no two
  consecutive readings are more than 3 h apart; a longer gap starts a new night. This
  engine reads no sleep data, so a cluster of daytime readings (some watches measure by
  day) is a "night" too; ``night_of`` is the local date 12 h before its first reading (the
  rule sleep uses: a 01:00 reading belongs to the previous evening's night), so two
  clusters can share a ``night_of``.
* **Origin**: one per night (``origins.py``: ``origin_priority``, else the origin with the
  most distinct readings in that night, ties by name); readings with the same timestamp,
  once. Level and spread are over the chosen readings of every night.
* **Trend** = least-squares slope of the nightly means against each night's midpoint (half
  way between its first and last reading), in ms per day, reported only with at least 3
  nights whose midpoints span at least 24 h. Nightly means rather than single readings, so
  that a night with many readings does not outweigh one with few. ``trend_direction`` is
  ``stable`` when the fitted change over that span is under 5 % of the mean, else
  ``rising``/``falling``.
* **Sufficiency**: ``nights_covered`` (distinct ``night_of`` dates), ``hours_covered`` (sum
  of each night's first-to-last reading span) and ``readings_per_hour`` (readings of the
  nights with a span / ``hours_covered``; None when no night has a span).

Each input's statistics depend on that input alone (no other record type is read).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from etl_engine.domain.checks import number_check, number_chunk_check
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.common import (
    DAY_MS,
    HOUR_MS,
    hhmm,
    local_date,
    local_minute_of_day,
    mean,
    percentile,
    rnd,
    sample_sd,
    slope_per_day,
    start_ms,
    start_offset_ms,
)
from etl_engine.domain.stats.origins import by_origin, choose_origin, clusters, reading_coverage
from etl_engine.domain.stats.schema import COUNT, per_origin
from etl_engine.domain.wording import Stats, cap, long_date, num, origin_note, plural

VALUE_KEY = "heartRateVariabilityRmssd"
NIGHT_GAP_MS = 3 * HOUR_MS
NIGHT_OF_SHIFT_MS = 12 * HOUR_MS
TREND_MIN_NIGHTS = 3
TREND_MIN_SPAN_MS = DAY_MS
STABLE_CHANGE_FRACTION = 0.05

Reading = tuple[int, float, int]  # (ms, value, zone offset ms)


def _readings(records: list[Record]) -> list[Reading]:
    """Time-ordered (ms, value, zone offset ms), one per timestamp."""
    out: list[Reading] = []
    last: int | None = None
    for t, v, off in sorted((start_ms(r), float(r[VALUE_KEY]), start_offset_ms(r))
                            for r in records):
        if t != last:
            out.append((t, v, off))
            last = t
    return out


def _night(group: list[Record], priority: Sequence[str]) -> tuple[dict[str, Any], list[Reading]]:
    """One night's figures (chosen origin only) and its chosen readings."""
    per_origin = by_origin(group)
    coverage = {name: reading_coverage(recs) for name, recs in sorted(per_origin.items())}
    chosen = choose_origin(coverage, priority)
    readings = _readings(per_origin[chosen])
    values = [v for _, v, _ in readings]
    (t0, _, off0), (t1, _, off1) = readings[0], readings[-1]
    detail = {
        "night_of": local_date(t0 - NIGHT_OF_SHIFT_MS, off0).isoformat(),
        "readings": len(readings),
        "mean_ms": rnd(mean(values)),
        "median_ms": rnd(percentile(sorted(values), 50)),
        "first_reading_local": hhmm(local_minute_of_day(t0, off0)),
        "last_reading_local": hhmm(local_minute_of_day(t1, off1)),
        "origin": chosen,
        "origins_present": len(per_origin),
    }
    return detail, readings


def _trend(nights: list[list[Reading]], level: float) -> tuple[float | None, str | None]:
    """Slope (ms/day) of nightly means against night midpoints, and its direction."""
    if len(nights) < TREND_MIN_NIGHTS:
        return None, None
    mids = [(night[0][0] + night[-1][0]) // 2 for night in nights]
    span_ms = mids[-1] - mids[0]
    if span_ms < TREND_MIN_SPAN_MS:
        return None, None
    slope = slope_per_day(mids, [mean([v for _, v, _ in night]) for night in nights])
    if slope is None:
        return None, None
    change = slope * span_ms / DAY_MS
    if abs(change) < STABLE_CHANGE_FRACTION * level:
        return slope, "stable"
    return slope, "rising" if change > 0 else "falling"


def _sufficiency(details: list[dict[str, Any]], nights: list[list[Reading]]) -> dict[str, Any]:
    """Nights, hours and reading density the figures rest on (module doc)."""
    spans = [night[-1][0] - night[0][0] for night in nights]
    covered_ms = sum(spans)
    spanned_readings = sum(len(night) for night, span in zip(nights, spans, strict=True)
                           if span > 0)
    return {
        "nights_covered": len({d["night_of"] for d in details}),
        "hours_covered": rnd(covered_ms / HOUR_MS),
        "readings_per_hour": (rnd(spanned_readings / (covered_ms / HOUR_MS))
                              if covered_ms > 0 else None),
    }


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Level, spread, per-night figures, trend of nightly means, coverage, per origin."""
    pairs = [_night(g, config.origin_priority) for g in clusters(records, NIGHT_GAP_MS)]
    details = [d for d, _ in pairs]
    nights = [rs for _, rs in pairs]
    readings = [r for night in nights for r in night]
    values = [v for _, v, _ in readings]
    m = mean(values)
    ordered = sorted(values)
    slope, direction = _trend(nights, m)

    per_origin = by_origin(records)
    origins = {}
    for name in sorted(per_origin):
        vals = values if len(per_origin) == 1 else [v for _, v, _ in _readings(per_origin[name])]
        origins[name] = {"readings": len(vals), "mean_ms": rnd(mean(vals))}

    night_dates = sorted(d["night_of"] for d in details)
    return {
        "reading_count": len(values),
        "span_days": rnd((readings[-1][0] - readings[0][0]) / DAY_MS),
        "mean_ms": rnd(m),
        "median_ms": rnd(percentile(ordered, 50)),
        "sd_ms": rnd(sample_sd(values, m)),
        "min_ms": rnd(ordered[0]),
        "max_ms": rnd(ordered[-1]),
        "nights": len(details),
        "nights_detail": details,
        "period_first_day": night_dates[0],
        "period_last_day": night_dates[-1],
        "trend_basis": "nightly_means",
        "trend_ms_per_day": rnd(slope, 2),
        "trend_direction": direction,
        "sufficiency": _sufficiency(details, nights),
        "origins": origins,
        "nights_with_multiple_origins": sum(1 for d in details if d["origins_present"] > 1),
    }


# --- validation -------------------------------------------------------------------------------
HRV_RANGE = (1.0, 300.0)
check_record = number_check(VALUE_KEY, *HRV_RANGE, "hrv_out_of_range")
check_chunk = number_chunk_check(VALUE_KEY, *HRV_RANGE)


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How was my heart rate variability {period}?",
    "Can you summarize my HRV readings {period}?",
    "What does my heart rate variability {period} show?",
)


def narrative(s: Stats, period: str) -> str:
    """Level and spread of RMSSD, per night (devices measure it asleep, so clock hours say
    when the device measured, not the person), coverage, the trend if the nights allow."""
    n, k, suff = s["reading_count"], s["nights"], s["sufficiency"]
    nights = s["nights_detail"]
    out = [f"{cap(period)}, {plural(n, 'heart rate variability (RMSSD) reading')} "
           f"{'was' if n == 1 else 'were'} recorded over {plural(k, 'night')} (a gap of more "
           "than 3 hours between readings starts a new night)."]
    hours, rate = suff["hours_covered"], suff["readings_per_hour"]
    if rate is not None:
        span = plural(hours, "hour") if hours >= 0.1 else "a few minutes"
        out.append(f"From first to last reading, the nights cover {span}, about {num(rate)} "
                   "readings per hour.")

    def night_of(detail: Stats) -> str:
        return long_date(date.fromisoformat(detail["night_of"]), with_year=False)

    first = nights[0]
    if n == 1:
        out.append(f"The reading, on the night of {night_of(first)} at "
                   f"{first['first_reading_local']}, was {num(s['mean_ms'])} ms.")
    else:
        where = (f"On the night of {night_of(first)} (readings from "
                 f"{first['first_reading_local']} to {first['last_reading_local']}), the "
                 f"average was {num(first['mean_ms'])} ms (median {num(first['median_ms'])} ms)"
                 if k == 1 else
                 f"Over all readings the average was {num(s['mean_ms'])} ms (median "
                 f"{num(s['median_ms'])} ms)")
        out.append(f"{where}, ranging from {num(s['min_ms'])} to {num(s['max_ms'])} ms, with a "
                   f"standard deviation of {num(s['sd_ms'])} ms.")
    if k > 1:
        lo = min(nights, key=lambda d: d["mean_ms"])
        hi = max(nights, key=lambda d: d["mean_ms"])
        out.append(f"Nightly averages ranged from {num(lo['mean_ms'])} ms (night of "
                   f"{night_of(lo)}) to {num(hi['mean_ms'])} ms (night of {night_of(hi)})."
                   if lo["mean_ms"] != hi["mean_ms"] else
                   f"Every night averaged {num(lo['mean_ms'])} ms.")
    direction = s["trend_direction"]
    if direction is None:
        out.append("There is not enough data for a trend (at least 3 nights spanning 24 hours "
                   "are needed).")
    else:
        word = {"stable": "roughly stable", "rising": "rising", "falling": "falling"}[direction]
        slope = s["trend_ms_per_day"]
        sign = "+" if slope > 0 else ""
        out.append(f"Across the {plural(k, 'night')}, the trend in nightly averages was {word} "
                   f"({sign}{num(slope)} ms per day).")
    out.append("RMSSD differs a lot from person to person, so changes over time say more "
               "than any single value.")
    return " ".join(out) + origin_note(s["nights_with_multiple_origins"], "nights")


# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="hrvStatistics",
    schema={
        "type": "object",
        "description": ("HeartRateVariabilityRmssdRecord statistics (domain/records/hrv.py), "
                        "per night."),
        "required": [
            "reading_count", "span_days", "mean_ms", "median_ms", "sd_ms", "min_ms", "max_ms",
            "nights", "nights_detail", "period_first_day", "period_last_day", "trend_basis",
            "trend_ms_per_day", "trend_direction", "sufficiency", "origins",
            "nights_with_multiple_origins",
        ],
        "properties": {
            "reading_count": {
                "type": "integer",
                "minimum": 1,
                "description": "Readings of the chosen origins, one per timestamp.",
            },
            "span_days": {
                "type": "number",
                "minimum": 0,
                "description": "First to last reading, days.",
            },
            "mean_ms": {"type": "number", "description": "Mean RMSSD over all chosen readings."},
            "median_ms": {"type": "number"},
            "sd_ms": {
                "type": ["number", "null"],
                "description": "Sample SD; null with one reading.",
            },
            "min_ms": {"type": "number"},
            "max_ms": {"type": "number"},
            "nights": {
                "type": "integer",
                "minimum": 1,
                "description": "Number of nights (reading clusters split by gaps over 3 h).",
            },
            "nights_detail": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "description": (
                        "One night: a run of readings with no gap over 3 h (all origins), figures "
                        "from the night's chosen origin."
                    ),
                    "required": [
                        "night_of", "readings", "mean_ms", "median_ms", "first_reading_local",
                        "last_reading_local", "origin", "origins_present",
                    ],
                    "properties": {
                        "night_of": {
                            "$ref": "#/$defs/localDate",
                            "description": "Local date 12 h before the night's first reading.",
                        },
                        "readings": {"type": "integer", "minimum": 1},
                        "mean_ms": {"type": "number"},
                        "median_ms": {"type": "number"},
                        "first_reading_local": {
                            "type": "string",
                            "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$",
                            "description": "Local clock time (HH:MM), own offset.",
                        },
                        "last_reading_local": {
                            "type": "string",
                            "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$",
                            "description": "Local clock time (HH:MM), own offset.",
                        },
                        "origin": {
                            "type": "string",
                            "minLength": 1,
                            "description": (
                                "Origin used for this night (priority, else most readings)."
                            ),
                        },
                        "origins_present": {"type": "integer", "minimum": 1},
                    },
                    "additionalProperties": False,
                },
            },
            "period_first_day": {"$ref": "#/$defs/localDate", "description": "Earliest night_of."},
            "period_last_day": {"$ref": "#/$defs/localDate", "description": "Latest night_of."},
            "trend_basis": {"const": "nightly_means"},
            "trend_ms_per_day": {
                "type": ["number", "null"],
                "description": (
                    "Least-squares slope of nightly means against night midpoints; null unless at "
                    "least 3 nights whose midpoints span at least 24 h."
                ),
            },
            "trend_direction": {
                "enum": ["rising", "falling", "stable", None],
                "description": "stable: fitted change over the span under 5 % of mean_ms.",
            },
            "sufficiency": {
                "type": "object",
                "required": ["nights_covered", "hours_covered", "readings_per_hour"],
                "properties": {
                    "nights_covered": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Distinct night_of dates.",
                    },
                    "hours_covered": {
                        "type": "number",
                        "minimum": 0,
                        "description": (
                            "Sum of each night's first-to-last reading span, hours, 1 decimal."
                        ),
                    },
                    "readings_per_hour": {
                        "type": ["number", "null"],
                        "minimum": 0,
                        "description": (
                            "Readings of the nights with a span / hours_covered; null when no "
                            "night has a span."
                        ),
                    },
                },
                "additionalProperties": False,
            },
            "origins": per_origin({"readings": COUNT, "mean_ms": {"type": "number"}}),
            "nights_with_multiple_origins": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="readings", heading="Heart-rate variability (RMSSD)", title="HRV",
              unit="ms", color="#8e6cc0", gap_minutes=180, value_field=VALUE_KEY, dots=True,
              caption="{count} readings (local time); a line within a night (gaps under 3 "
                      "hours)")


SPEC = RecordTypeSpec(
    name="HeartRateVariabilityRmssdRecord",
    category="autonomic_health",
    interval=False,
    schema_file="HeartRateVariabilityRmssdRecord.avsc",
    check=check_record,
    clean=check_chunk,
    statistics=compute_statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=30,
)
