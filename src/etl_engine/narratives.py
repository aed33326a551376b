"""Plain-language narratives and instructions built from processor statistics.

Why a separate module: the narrative is the training target, so it must be deterministic
(same statistics, same text, no locale, no clock), must only quote numbers that are in the
statistics (already rounded there, so text and metadata never disagree), and must stay
gentle: it describes and gives common reference points, it never diagnoses. The wording of
the *instruction* varies between a few phrasings, picked by a stable hash of a seed (the
message's idempotency key), so a training set is not one repeated question.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from datetime import date
from functools import lru_cache
from typing import Any

Stats = Mapping[str, Any]

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")

_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "BloodGlucoseRecord": (
        "How did my blood glucose look {period}?",
        "Can you summarize my blood glucose readings {period}?",
        "What do my glucose readings {period} say about my glucose control?",
    ),
    "HeartRateRecord": (
        "How was my heart rate {period}?",
        "Can you summarize my heart-rate data {period}?",
        "What does my heart rate {period} tell me?",
    ),
    "HeartRateVariabilityRmssdRecord": (
        "How was my heart rate variability {period}?",
        "Can you summarize my HRV readings {period}?",
        "What does my heart rate variability {period} show?",
    ),
    "SleepSessionRecord": (
        "How did I sleep {period}?",
        "Can you summarize my sleep {period}?",
        "What does my sleep data {period} show?",
    ),
    "StepsRecord": (
        "How active was I {period}, based on my steps?",
        "Can you summarize my step counts {period}?",
        "How many steps did I take {period}?",
    ),
    "ActiveCaloriesBurnedRecord": (
        "How many active calories did I burn {period}?",
        "Can you summarize my active energy {period}?",
        "What do my active calories {period} look like?",
    ),
}
_GENERIC_INSTRUCTIONS = (
    "Can you summarize my {thing} data {period}?",
    "What does my {thing} data {period} show?",
)


# --- formatting ------------------------------------------------------------------------------
def long_date(d: date, *, with_year: bool = True) -> str:
    """``March 3, 2024`` without relying on the process locale."""
    text = f"{_MONTHS[d.month - 1]} {d.day}"
    return f"{text}, {d.year}" if with_year else text


def period_phrase(first: date, last: date) -> str:
    """``on March 3, 2024`` or ``between March 3 and March 9, 2024``."""
    if first == last:
        return f"on {long_date(first)}"
    if first.year == last.year:
        return f"between {long_date(first, with_year=False)} and {long_date(last)}"
    return f"between {long_date(first)} and {long_date(last)}"


def num(value: float | int | None) -> str:
    """A statistic as text: thousands separators, no trailing ``.0``."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 night`` / ``3 nights``."""
    return f"{num(n)} {word if n == 1 else (words or word + 's')}"


def duration(minutes: float) -> str:
    """``7 hours 5 minutes`` from a minute count (rounded to the minute)."""
    total = round(minutes)
    h, m = divmod(total, 60)
    parts = []
    if h:
        parts.append(plural(h, "hour"))
    if m or not h:
        parts.append(plural(m, "minute"))
    return " ".join(parts)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=64)
def readable_type(record_type: str) -> str:
    """``BodyTemperatureRecord`` -> ``body temperature``."""
    name = record_type.removesuffix("Record")
    out = "".join(" " + c.lower() if c.isupper() else c for c in name).strip()
    return out or record_type


def _origin_note(count: int, what: str) -> str:
    if count <= 0:
        return ""
    return (f" Some {what} had data from more than one app; for each of them a single source "
            "was used so nothing was counted twice.")


# --- per type ---------------------------------------------------------------------------------
_TARGET_TEXT = {
    "in_range_above_70_percent": "more than 70% of readings in range",
    "below_70_under_4_percent": "less than 4% below 70 mg/dL",
    "below_54_under_1_percent": "less than 1% below 54 mg/dL",
    "above_180_under_25_percent": "less than 25% above 180 mg/dL",
    "above_250_under_5_percent": "less than 5% above 250 mg/dL",
}


def glucose_narrative(s: Stats, period: str) -> str:
    """Average, spread, time in ranges, consensus targets, GMI/eA1c, low episodes."""
    bands = s["time_in_ranges_percent"]
    p = s["percentiles_mg_dl"]
    out = [
        f"{_cap(period)}, {plural(s['reading_count'], 'blood glucose reading')} "
        f"{'was' if s['reading_count'] == 1 else 'were'} recorded over "
        f"{plural(s['days'], 'day')} (about {num(s['readings_per_day'])} per day).",
        f"The average glucose was {num(s['mean_mg_dl'])} mg/dL, with readings from "
        f"{num(s['min_mg_dl'])} to {num(s['max_mg_dl'])} mg/dL and a median of "
        f"{num(p['p50'])} mg/dL.",
    ]
    if s["cv_percent"] is not None:
        judged = ("within the 36% commonly used as the limit for stable glucose"
                  if s["variability"] == "stable" else
                  "above the 36% commonly used as the limit for stable glucose, so glucose "
                  "moved up and down more than is usually considered stable")
        out.append(f"The standard deviation was {num(s['sd_mg_dl'])} mg/dL and the "
                   f"coefficient of variation {num(s['cv_percent'])}%, {judged}.")
    out.append(
        f"{num(bands['in_range_70_180'])}% of readings were in the target range of "
        f"70-180 mg/dL. {num(s['below_70_percent'])}% were below 70 mg/dL (including "
        f"{num(bands['very_low_below_54'])}% below 54 mg/dL) and {num(s['above_180_percent'])}% "
        f"were above 180 mg/dL (including {num(bands['very_high_above_250'])}% above 250 mg/dL)."
    )
    missed = [_TARGET_TEXT[k] for k, ok in s["targets_met"].items() if not ok]
    consensus = "the widely used consensus targets"
    if s["control_assessment"] == "meets_targets":
        out.append(f"Together these meet {consensus} ({_join(list(_TARGET_TEXT.values()))}).")
    elif s["control_assessment"] == "partially_meets_targets":
        out.append(f"At least half of the readings were in range, but not all of {consensus} "
                   f"were met; the ones not met are {_join(missed)}.")
    else:
        out.append(f"Fewer than half of the readings were in range, so these readings fall "
                   f"short of {consensus}; the ones not met are {_join(missed)}.")
    out.append(f"Based on the average, the glucose management indicator (GMI) is "
               f"{num(s['gmi_percent'])}% and the estimated A1c is "
               f"{num(s['estimated_a1c_percent'])}%; both are estimates from the readings, "
               "not laboratory results.")
    k70, k54 = s["hypo_episodes_below_70"], s["hypo_episodes_below_54"]
    if k70 == 0 and k54 == 0:
        out.append("No low-glucose episodes lasting 15 minutes or more were found.")
    else:
        out.append(f"There {'was' if k70 == 1 else 'were'} "
                   f"{plural(k70, 'low-glucose episode')} lasting at least 15 minutes below "
                   f"70 mg/dL and {num(k54)} lasting at least 15 minutes below 54 mg/dL.")
    text = " ".join(out) + _origin_note(s["days_with_multiple_origins"], "days")
    if s["control_assessment"] != "meets_targets" or k70 or k54:
        text += (" It may be worth going over these patterns with a healthcare professional, "
                 "who can put them in context.")
    return text


def heart_rate_narrative(s: Stats, period: str) -> str:
    """Average and range, resting estimate against the usual adult range, time in zones."""
    rest = s["resting_estimate_bpm"]
    if rest < 60:
        rest_note = ("below the usual adult range of 60-100 bpm, which is common in people "
                     "who are physically fit")
    elif rest <= 100:
        rest_note = "within the usual adult range of 60-100 bpm"
    else:
        rest_note = ("above the usual adult range of 60-100 bpm; if that is typical for you, "
                     "it may be worth mentioning to a healthcare professional")
    lower = s["zone_lower_bounds_bpm"]
    b = [lower[f"zone_{i}"] for i in range(1, 6)]
    labels = [f"below zone 1 (under {b[0]} bpm)"]
    labels += [f"in zone {i} ({b[i - 1]}-{b[i] - 1} bpm)" for i in range(1, 5)]
    labels.append(f"in zone 5 ({b[4]} bpm and above)")
    zones = s["time_in_zones_percent"]
    keys = ["below_zone_1"] + [f"zone_{i}" for i in range(1, 6)]
    parts = [f"{num(zones[k])}% {label}" for k, label in zip(keys, labels, strict=True)]
    return (
        f"{_cap(period)}, {plural(s['sample_count'], 'heart-rate sample')} "
        f"{'was' if s['sample_count'] == 1 else 'were'} recorded, spanning "
        f"{duration(s['span_minutes'])}. The average heart rate was {num(s['mean_bpm'])} bpm, "
        f"ranging from {num(s['min_bpm'])} to {num(s['max_bpm'])} bpm. The resting heart rate, "
        f"estimated from the lowest 5% of samples, was about {num(rest)} bpm, {rest_note}. "
        f"Using a reference maximum of {num(s['hr_max_reference_bpm'])} bpm, the time was "
        f"{_join(parts)}." + _origin_note(s["days_with_multiple_origins"], "days")
    )


def hrv_narrative(s: Stats, period: str) -> str:
    """Level and spread of RMSSD, the trend if the span allows, night against day."""
    n = s["reading_count"]
    out = [f"{_cap(period)}, {plural(n, 'heart rate variability (RMSSD) reading')} "
           f"{'was' if n == 1 else 'were'} recorded."]
    if n == 1:
        out.append(f"The reading was {num(s['mean_ms'])} ms.")
    else:
        out.append(f"The average was {num(s['mean_ms'])} ms (median {num(s['median_ms'])} ms), "
                   f"ranging from {num(s['min_ms'])} to {num(s['max_ms'])} ms, with a standard "
                   f"deviation of {num(s['sd_ms'])} ms.")
    direction = s["trend_direction"]
    if direction is None:
        out.append("There is not enough data for a trend (at least 3 readings over 24 hours "
                   "are needed).")
    else:
        word = {"stable": "roughly stable", "rising": "rising", "falling": "falling"}[direction]
        slope = s["trend_ms_per_day"]
        sign = "+" if slope > 0 else ""
        out.append(f"Over {num(s['span_days'])} days the trend was {word} "
                   f"({sign}{num(slope)} ms per day).")
    if s["night_mean_ms"] is not None and s["day_mean_ms"] is not None:
        out.append(f"Readings taken between midnight and 6 a.m. averaged "
                   f"{num(s['night_mean_ms'])} ms, against {num(s['day_mean_ms'])} ms during "
                   "the rest of the day.")
    else:
        which = "The reading was" if n == 1 else "All readings were"
        when = ("inside" if s["night_mean_ms"] is not None else "outside") + (
            " the night window (midnight to 6 a.m.)")
        out.append(f"{which} taken {when}.")
    out.append("RMSSD differs a lot from person to person, so changes over time say more "
               "than any single value.")
    return " ".join(out) + _origin_note(s["days_with_multiple_origins"], "days")


def sleep_narrative(s: Stats, period: str) -> str:
    """Nights and naps, time in bed, total sleep, efficiency, stages or regularity."""
    nights, naps = s["nights"], s["naps"]
    over_naps = s["averages_over"] == "naps"
    basis = naps if over_naps else nights
    found = [plural(n, w) for n, w in ((nights, "night"), (naps, "nap")) if n]
    out = [f"{_cap(period)}, {_join(found)} of sleep {'was' if nights + naps == 1 else 'were'} "
           "recorded."]
    sleep_min = s["average_total_sleep_minutes"]
    line = (f"{'' if basis == 1 else 'on average, '}time in bed was "
            f"{duration(s['average_time_in_bed_minutes'])} and total sleep was "
            f"{duration(sleep_min)}")
    eff = s["average_efficiency_percent"]
    if eff is not None:
        quality = ("at or above the 85% often seen as a sign of good sleep" if eff >= 85
                   else "below the 85% often seen as a sign of good sleep")
        line += f", a sleep efficiency of {num(eff)}%, {quality}"
    if over_naps:
        out.append(f"{'For the nap' if basis == 1 else 'For the naps'}, {line}.")
    else:
        out.append(_cap(line) + ".")
        if sleep_min >= 7 * 60:
            out.append("That is in line with the 7 or more hours generally recommended for "
                       "adults.")
        else:
            out.append("That is less than the 7 or more hours generally recommended for "
                       "adults.")
    if basis == 1:
        kind = "nap" if over_naps else "night"
        night = next(p for p in s["nights_detail"] if p["kind"] == kind)
        if night["stages_available"]:
            pct = night["stage_percent"]
            named = [(pct["light"], "light sleep"), (pct["deep"], "deep sleep"),
                     (pct["rem"], "REM sleep"), (pct["sleeping"], "sleep without a stage"),
                     (pct["awake"] + pct["out_of_bed"], "awake or out of bed")]
            shares = [f"{num(round(v, 1))}% {label}" for v, label in named if v > 0]
            if shares:
                shares[0] = shares[0].replace("% ", "% was ", 1)
                out.append(f"Of the time in bed, {_join(shares)}.")
            out.append(f"Bedtime was {night['bedtime_local']} and wake-up "
                       f"{night['wake_time_local']}, with "
                       f"{plural(night['awakenings'], 'awakening')}.")
        else:
            out.append("No sleep stages were recorded, so all of the time in bed is counted "
                       "as sleep.")
            out.append(f"Bedtime was {night['bedtime_local']} and wake-up "
                       f"{night['wake_time_local']}.")
    else:
        sd = s["bedtime_sd_minutes"]
        regular = ("a fairly regular schedule" if sd <= 30 else
                   "a somewhat irregular schedule" if sd <= 60 else "an irregular schedule")
        out.append(f"The average bedtime was {s['average_bedtime_local']}, varying by "
                   f"{num(sd)} minutes (standard deviation), which suggests {regular}. "
                   f"There were {num(s['average_awakenings'])} awakenings per "
                   f"{'nap' if over_naps else 'night'} on average.")
    if naps and not over_naps:
        out.append(f"{'The nap' if naps == 1 else 'The naps'} added "
                   f"{duration(s['nap_minutes_total'])} in bed, not included in these averages.")
    return " ".join(out) + _origin_note(s["nights_with_multiple_origins"], "nights")


def steps_narrative(s: Stats, period: str) -> str:
    """Daily totals against the 5,000 / 7,000 / 10,000 reference points."""
    days = s["days"]
    if days == 1:
        steps = s["total_steps"]
        if steps >= 10_000:
            ref = "reaching the often-quoted goal of 10,000 steps"
        elif steps >= 7_000:
            ref = ("above the 7,000 steps a day linked with health benefits in large studies, "
                   "though short of 10,000")
        elif steps >= 5_000:
            ref = "below the 7,000 steps a day linked with health benefits in large studies"
        else:
            ref = "under 5,000 steps, a level often used to describe a mostly inactive day"
        verb = "was" if steps == 1 else "were"
        text = f"{_cap(period)}, {plural(steps, 'step')} {verb} recorded, {ref}."
    else:
        text = (
            f"{_cap(period)}, steps were recorded on {plural(days, 'day')}: "
            f"{num(s['total_steps'])} steps in total, an average of "
            f"{num(s['average_daily_steps'])} per day. The most active day was "
            f"{long_date(date.fromisoformat(s['best_day']))} with {num(s['max_daily_steps'])} "
            f"steps and the least active had {num(s['min_daily_steps'])}. "
            f"{num(s['days_at_or_above_10000'])} of {plural(days, 'day')} reached 10,000 steps "
            f"and {num(s['days_at_or_above_7000'])} reached 7,000, a level linked with health "
            f"benefits in large studies. {_cap(plural(s['sedentary_days_below_5000'], 'day'))} "
            f"{'was' if s['sedentary_days_below_5000'] == 1 else 'were'} under 5,000 steps, "
            "a level often used to describe a mostly inactive day."
        )
    return text + _origin_note(s["days_with_multiple_origins"], "days")


def calories_narrative(s: Stats, period: str) -> str:
    """Daily active energy totals and the average per day."""
    days = s["days"]
    if days == 1:
        text = f"{_cap(period)}, {num(s['total_kcal'])} kcal of active energy were burned."
    else:
        text = (f"{_cap(period)}, active energy was recorded on {plural(days, 'day')}: "
                f"{num(s['total_kcal'])} kcal in total, an average of "
                f"{num(s['average_kcal_per_day'])} kcal per day (highest "
                f"{num(s['max_daily_kcal'])} kcal, lowest {num(s['min_daily_kcal'])} kcal).")
    text += (" Active calories count only the energy burned through movement, on top of what "
             "the body uses at rest.")
    return text + _origin_note(s["days_with_multiple_origins"], "days")


def generic_narrative(s: Stats, period: str, thing: str = "health") -> str:
    """Record count, span and each numeric field's average and range."""
    n = s["record_count"]
    out = [f"{_cap(period)}, {plural(n, thing + ' record')} {'was' if n == 1 else 'were'} "
           f"recorded over {plural(s['days'], 'day')}, spanning {num(s['span_hours'])} hours."]
    for name, f in s["fields"].items():
        out.append(f"{_cap(readable_type(name))}: average {num(f['mean'])}, ranging from "
                   f"{num(f['min'])} to "
                   f"{num(f['max'])} across {plural(f['count'], 'record')}.")
    return " ".join(out)


_NARRATORS: dict[str, Callable[[Stats, str], str]] = {
    "BloodGlucoseRecord": glucose_narrative,
    "HeartRateRecord": heart_rate_narrative,
    "HeartRateVariabilityRmssdRecord": hrv_narrative,
    "SleepSessionRecord": sleep_narrative,
    "StepsRecord": steps_narrative,
    "ActiveCaloriesBurnedRecord": calories_narrative,
}


def instruction(record_type: str, first_day: date, last_day: date, seed: str = "") -> str:
    """A natural question about the period; the phrasing is picked by a stable seed hash."""
    period = period_phrase(first_day, last_day)
    choices = _INSTRUCTIONS.get(record_type, _GENERIC_INSTRUCTIONS)
    pick = choices[zlib.crc32(seed.encode()) % len(choices)]
    return pick.format(period=period, thing=readable_type(record_type))


def narrative(record_type: str, stats: Stats, first_day: date, last_day: date) -> str:
    """The answer: the statistics in plain words (generic wording for unknown types)."""
    period = period_phrase(first_day, last_day)
    narrate = _NARRATORS.get(record_type)
    if narrate is None:
        return generic_narrative(stats, period, readable_type(record_type))
    return narrate(stats, period)


def build(
    record_type: str, stats: Stats, *, first_day: date, last_day: date, seed: str = ""
) -> tuple[str, str]:
    """(instruction, output) for one training record."""
    return (instruction(record_type, first_day, last_day, seed),
            narrative(record_type, stats, first_day, last_day))
