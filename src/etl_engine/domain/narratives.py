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


def _glucose_coverage(s: Stats, period: str) -> str:
    """What the figures rest on: readings, covered time and wear (not calendar days)."""
    q, n = s["sufficiency"], s["reading_count"]
    if s["day_basis"] == "utc":  # Z-stamped readings: their days are UTC days
        period += " (UTC dates)" if period.startswith("between") else " (UTC date)"
    first = (f"{_cap(period)}, {plural(n, 'blood glucose reading')} "
             f"{'was' if n == 1 else 'were'} recorded")
    if q["sampling"] == "continuous":
        return (f"{first}, about one every {num(q['sampling_interval_minutes'])} minutes. "
                f"They cover {plural(q['days_covered'], 'day')} "
                f"({plural(q['hours_covered'], 'hour')}), and {num(q['wear_percent'])}% of "
                "the readings expected over that time were received.")
    if q["sampling_interval_minutes"] is None:
        return f"{first}."
    return (f"{first}, typically {num(q['sampling_interval_minutes'])} minutes apart, over "
            f"{plural(q['hours_covered'], 'hour')}: occasional readings, such as from a "
            "meter, rather than a continuous sensor record.")


def _glucose_verdict(s: Stats) -> list[str]:
    """Consensus verdict and GMI only on enough data (>= 14 days, >= 70 % wear)."""
    if s["gmi_insufficient_data"] or s["control_assessment_insufficient_data"]:
        why = ("that was not reached here" if s["sufficiency"]["sampling"] == "continuous"
               else "these are not continuous sensor readings")
        return [f"The international consensus on time in range asks for at least 14 days of "
                f"sensor data with at least 70% of the expected readings before glucose is "
                f"compared with its targets or summarized as a glucose management indicator "
                f"(GMI); {why}, so no target assessment and no GMI are given, and the shares "
                "above describe only these readings."]
    missed = [_TARGET_TEXT[k] for k, ok in s["targets_met"].items() if not ok]
    consensus = "the widely used consensus targets"
    if s["control_assessment"] == "meets_targets":
        verdict = f"Together these meet {consensus} ({_join(list(_TARGET_TEXT.values()))})."
    elif s["control_assessment"] == "partially_meets_targets":
        verdict = (f"At least half of the readings were in range, but not all of {consensus} "
                   f"were met; the ones not met are {_join(missed)}.")
    else:
        verdict = (f"Fewer than half of the readings were in range, so these readings fall "
                   f"short of {consensus}; the ones not met are {_join(missed)}.")
    return [verdict, f"Based on the average, the glucose management indicator (GMI) is "
                     f"{num(s['gmi_percent'])}%, an estimate from the readings, not a "
                     "laboratory result."]


def _glucose_episodes(e: Stats) -> str:
    """Episodes by the consensus definition (none counted from intermittent readings)."""
    if e["low_level_1_below_70"] is None:
        return ("Low- and high-glucose episodes are not counted, as they need continuous "
                "sensor readings.")
    rule = ("by the consensus definition (at least 15 minutes in a row past the limit, "
            "ending after at least 15 minutes back within it; a gap in the readings ends it)")
    if not any(e.values()):
        return (f"No low-glucose episodes below 70 mg/dL or high-glucose episodes above "
                f"180 mg/dL were found, {rule}.")
    return (f"Glucose episodes, {rule}: "
            f"{num(e['low_level_1_below_70'])} low below 70 mg/dL and "
            f"{num(e['low_level_2_below_54'])} below 54 mg/dL, "
            f"{num(e['high_level_1_above_180'])} high above 180 mg/dL and "
            f"{num(e['high_level_2_above_250'])} above 250 mg/dL (each level counted on its "
            "own, so an episode below 54 mg/dL is also part of one below 70 mg/dL).")


def glucose_narrative(s: Stats, period: str) -> str:
    """Coverage, average, spread, time in ranges, consensus verdict and GMI (only on
    enough data), consensus episodes."""
    bands = s["time_in_ranges_percent"]
    p = s["percentiles_mg_dl"]
    out = [
        _glucose_coverage(s, period),
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
    out += _glucose_verdict(s)
    e = s["episodes"]
    out.append(_glucose_episodes(e))
    lows = bool(e["low_level_1_below_70"] or e["low_level_2_below_54"])
    text = " ".join(out) + _origin_note(s["days_with_multiple_origins"], "days")
    if s["control_assessment"] != "meets_targets" or lows:
        text += (" It may be worth going over these patterns with a healthcare professional, "
                 "who can put them in context.")
    return text


def heart_rate_narrative(s: Stats, period: str) -> str:
    """Average and range, coverage, lowest sustained rate (sleep included, so never set
    against awake norms), time in zones."""
    low, suff = s["lowest_sustained_bpm"], s["sufficiency"]
    hours, rate = suff["hours_covered"], suff["samples_per_hour"]
    span = plural(hours, "hour") if hours >= 0.1 else "a few minutes"
    cover = (f"the records cover {span} on {plural(suff['days_covered'], 'day')}"
             + (f", about {num(rate)} samples per hour" if rate is not None else ""))
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
        f"{'was' if s['sample_count'] == 1 else 'were'} recorded; {cover}. The average heart "
        f"rate was {num(s['mean_bpm'])} bpm, ranging from {num(s['min_bpm'])} to "
        f"{num(s['max_bpm'])} bpm. The lowest sustained heart rate (the 5th percentile of all "
        f"samples, including any taken during sleep) was about {num(low)} bpm. The data do "
        "not show which samples were taken awake or asleep, so this figure is not compared "
        "with reference ranges. "
        f"Using a reference maximum of {num(s['hr_max_reference_bpm'])} bpm, the time was "
        f"{_join(parts)}." + _origin_note(s["days_with_multiple_origins"], "days")
    )


def hrv_narrative(s: Stats, period: str) -> str:
    """Level and spread of RMSSD, per night (devices measure it asleep, so clock hours say
    when the device measured, not the person), coverage, the trend if the nights allow."""
    n, k, suff = s["reading_count"], s["nights"], s["sufficiency"]
    nights = s["nights_detail"]
    out = [f"{_cap(period)}, {plural(n, 'heart rate variability (RMSSD) reading')} "
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
    return " ".join(out) + _origin_note(s["nights_with_multiple_origins"], "nights")


def _sleep_one_night(night: Stats) -> list[str]:
    """Stage shares (% of total sleep), bedtime, awakenings >= 5 min and brief ones, WASO."""
    times = (f"Bedtime was {night['bedtime_local']} and wake-up "
             f"{night['wake_time_local']}.")
    if not night["stages_available"]:
        return ["No sleep stages were recorded, so all of the time in bed is counted as "
                "sleep.", times]
    pct = night["stage_percent_of_sleep"]
    named = [(pct["light"], "light sleep"), (pct["deep"], "deep sleep"),
             (pct["rem"], "REM sleep"), (pct["sleeping"], "sleep without a stage")]
    shares = [f"{num(v)}% {label}" for v, label in named if v > 0]
    out = []
    if shares:
        shares[0] = shares[0].replace("% ", "% was ", 1)
        out.append(f"Of the total sleep time, {_join(shares)}.")
    out.append(times)
    out.append(f"There {'was' if night['awakenings'] == 1 else 'were'} "
               f"{plural(night['awakenings'], 'awakening')} of 5 minutes or more and "
               f"{plural(night['brief_awakenings'], 'brief awakening')} (under 5 minutes); "
               "time awake or out of bed after first falling asleep was "
               f"{plural(night['waso_minutes'], 'minute')}.")
    return out


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
        out += _sleep_one_night(next(p for p in s["nights_detail"] if p["kind"] == kind))
    else:
        sd = s["bedtime_sd_minutes"]
        regular = ("a fairly regular schedule" if sd <= 30 else
                   "a somewhat irregular schedule" if sd <= 60 else "an irregular schedule")
        out.append(f"The average bedtime was {s['average_bedtime_local']}, varying by "
                   f"{num(sd)} minutes (standard deviation), which suggests {regular}.")
        if s["average_awakenings"] is not None:
            out.append(f"On average, {'naps' if over_naps else 'nights'} with sleep stages "
                       f"had {plural(s['average_awakenings'], 'awakening')} of 5 minutes or "
                       f"more, {plural(s['average_brief_awakenings'], 'brief awakening')} "
                       "(under 5 minutes) and "
                       f"{plural(s['average_waso_minutes'], 'minute')} awake or out of bed "
                       "after first falling asleep.")
    if naps and not over_naps:
        out.append(f"{'The nap' if naps == 1 else 'The naps'} added "
                   f"{duration(s['nap_minutes_total'])} in bed, not included in these averages.")
    return " ".join(out) + _origin_note(s["nights_with_multiple_origins"], "nights")


def clock(hhmm_text: str) -> str:
    """``17:25`` -> ``5:25 p.m.`` (the way people say the time of an export)."""
    h, m = (int(x) for x in hhmm_text.split(":"))
    suffix = "a.m." if h < 12 else "p.m."
    return f"{(h % 12) or 12}:{m:02d} {suffix}"


def _step_grade(steps: int) -> str:
    if steps >= 10_000:
        return "reaching the often-quoted goal of 10,000 steps"
    if steps >= 7_000:
        return ("above the 7,000 steps a day linked with health benefits in large studies, "
                "though short of 10,000")
    if steps >= 5_000:
        return "below the 7,000 steps a day linked with health benefits in large studies"
    return "under 5,000 steps, a level often used to describe a mostly inactive day"


def _partial_days(s: Stats, values: str, unit: str) -> list[str]:
    """One sentence per day still in progress at its export: what it had by then."""
    out = []
    for day, d in sorted(s["days_detail"].items()):
        if d["complete"]:
            continue
        out.append(f"{long_date(date.fromisoformat(day))} was still in progress when the phone "
                   f"exported it: {num(s[values][day])} {unit} by {clock(d['as_of_local'])}, "
                   f"covering {num(d['hours_covered'])} hours of the day, so it is not "
                   "counted in the figures for complete days.")
    return out


def _steps_one_partial_day(s: Stats, period: str) -> str:
    [(day, d)] = s["days_detail"].items()
    steps = s["daily_steps"][day]
    return (f"So far {period}, by {clock(d['as_of_local'])}, {plural(steps, 'step')} "
            f"{'was' if steps == 1 else 'were'} recorded, covering {num(d['hours_covered'])} "
            f"hours of the day ({num(d['day_covered_percent'])}%). The day was still in "
            "progress when the phone exported it, so no activity level is given for it.")


def _steps_complete_days(s: Stats) -> str:
    n = s["complete_days"]
    if n == 1:
        return (f"The one complete day had {plural(s['max_daily_steps'], 'step')}, "
                f"{_step_grade(s['max_daily_steps'])}.")
    tens, sevens, low = (s["days_at_or_above_10000"], s["days_at_or_above_7000"],
                         s["sedentary_days_below_5000"])
    return (f"Over the {num(n)} complete days the average was "
            f"{num(s['average_daily_steps'])} steps per day. The most active day was "
            f"{long_date(date.fromisoformat(s['best_day']))} with {num(s['max_daily_steps'])} "
            f"steps and the least active had {num(s['min_daily_steps'])}. {num(tens)} of "
            f"{plural(n, 'day')} reached 10,000 steps and {num(sevens)} reached 7,000, a level "
            f"linked with health benefits in large studies. {_cap(plural(low, 'day'))} "
            f"{'was' if low == 1 else 'were'} under 5,000 steps, a level often used to "
            "describe a mostly inactive day.")


def steps_narrative(s: Stats, period: str) -> str:
    """Daily totals against the 5,000 / 7,000 / 10,000 reference points; complete days only
    are graded, a day still in progress is reported as it stood at the export."""
    days, complete = s["days"], s["complete_days"]
    if days == 1 and complete == 0:
        text = _steps_one_partial_day(s, period)
    elif days == 1:
        steps = s["total_steps"]
        text = (f"{_cap(period)}, {plural(steps, 'step')} {'was' if steps == 1 else 'were'} "
                f"recorded, {_step_grade(steps)}.")
    else:
        parts = [f"{_cap(period)}, steps were recorded on {plural(days, 'day')}, "
                 f"{num(s['total_steps'])} steps in total."]
        if complete:
            parts.append(_steps_complete_days(s))
        parts += _partial_days(s, "daily_steps", "steps")
        text = " ".join(parts)
    return text + _origin_note(s["days_with_multiple_origins"], "days")


def calories_narrative(s: Stats, period: str) -> str:
    """Daily active energy totals and the average per complete day."""
    days, complete = s["days"], s["complete_days"]
    if days == 1 and complete == 0:
        [(day, d)] = s["days_detail"].items()
        text = (f"So far {period}, by {clock(d['as_of_local'])}, {num(s['daily_kcal'][day])} "
                f"kcal of active energy were burned, covering {num(d['hours_covered'])} hours "
                "of the day; the day was still in progress when the phone exported it.")
    elif days == 1:
        text = f"{_cap(period)}, {num(s['total_kcal'])} kcal of active energy were burned."
    else:
        parts = [f"{_cap(period)}, active energy was recorded on {plural(days, 'day')}: "
                 f"{num(s['total_kcal'])} kcal in total."]
        if complete == 1:
            parts.append(f"The one complete day had {num(s['max_daily_kcal'])} kcal.")
        elif complete:
            parts.append(f"Over the {plural(complete, 'complete day')} the average was "
                         f"{num(s['average_kcal_per_day'])} kcal per day (highest "
                         f"{num(s['max_daily_kcal'])} kcal, lowest "
                         f"{num(s['min_daily_kcal'])} kcal).")
        parts += _partial_days(s, "daily_kcal", "kcal")
        text = " ".join(parts)
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
