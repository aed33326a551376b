"""Sleep statistics per night and across nights, counted the way sleep scientists count them.

Why these definitions (details and sources in ``docs/clinical.md``, section *Sleep*):

* **Sleep period**: sessions of any origin that overlap or follow each other within 2 h form
  one period, so a night recorded by a phone and a watch (or split around a short wake)
  counts once. A period with less than 3 h in bed is a **nap**, otherwise a **night**.
  Averages and bedtime consistency are over nights (over naps only if there is no night),
  so an afternoon nap does not distort them.
* **Date**: a night's ``night_of`` is the local date 12 h before bedtime (a 00:30 bedtime
  belongs to the previous evening); a nap's is the local date of its start (a 10:00 nap is
  that day's). ``period_first_day``/``period_last_day`` are the first and last of these
  dates, so the narrative names the same day as ``night_of``.
* **Origin**: one per night, never a mix: stages from two devices (Samsung Health writes
  30-second stages, Oura 5-minute ones) cannot be merged into one coherent night, and adding
  them would count the night twice. The first origin of ``origin_priority`` present wins;
  without a priority, the origin whose sessions cover the most time in bed wins (it saw
  most of the night), ties broken by the smaller package name so the choice is
  deterministic (``origins.choose_origin``). Within it, a session overlapping a longer one
  of the same origin is dropped.
* **Time in bed** = session end - start (summed over the night's sessions).
* **Total sleep time (TST)** = time in LIGHT, DEEP, REM and SLEEPING stages. AWAKE,
  OUT_OF_BED and UNKNOWN are not sleep (UNKNOWN cannot be trusted to be sleep). A session
  without stages counts its whole time in bed as sleep, and has no efficiency.
* **Efficiency %** = TST / time in bed x 100 (nights where every session has stages).
* **Stage shares**: ``stage_percent_of_sleep`` is % of TST (light, deep, rem, sleeping),
  the clinical convention (AASM scoring manual; Menghini et al. 2021); None unless every
  session has stages. ``stage_percent_of_time_in_bed`` also has awake, out of bed, unknown
  and ``unrecorded`` time not covered by any stage. Both are rounded to add up to 100.
* **Awakenings**: a wake bout is a run of AWAKE/OUT_OF_BED stages not interrupted by a
  sleep stage (UNKNOWN neither breaks nor lengthens it); the break between two sessions of
  the night is wake time too. Only bouts with sleep before and after count: those of at
  least 5 min are ``awakenings``, shorter ones ``brief_awakenings`` (so Samsung's many
  30-second wake stages do not inflate the count next to Oura's 5-minute ones). Their
  averages are over the nights with stages (without stages, wake is not recorded).
* **WASO** (wake after sleep onset) = minutes of AWAKE/OUT_OF_BED stages after the first
  sleep stage, to the end of the night (session breaks are not time in bed, so not WASO);
  None unless every session has stages.
* **Schedule consistency**: sample SD of bedtimes (local clock, minutes, measured from noon
  so 23:30 and 00:30 are an hour apart, not 23 h); None with fewer than two nights.
"""

from __future__ import annotations

from typing import Any

from etl_engine.domain.checks import (
    DAY_MS,
    MALFORMED_RECORD,
    MISSING_TIMESTAMP,
    UNKNOWN_ENUM_VALUE,
    CheckResult,
)
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.common import (
    HOUR_MS,
    MINUTE_MS,
    end_ms,
    end_offset_ms,
    hhmm,
    local_date,
    local_minute_of_day,
    mean,
    origin,
    percentages,
    rnd,
    sample_sd,
    start_ms,
    start_offset_ms,
)
from etl_engine.domain.stats.origins import (
    by_origin,
    choose_origin,
    clusters,
    non_overlapping,
    union_length,
)
from etl_engine.domain.stats.schema import AMOUNT, COUNT, PERCENT, closed, each, per_origin
from etl_engine.domain.wording import Stats, cap, duration, join, num, origin_note, plural

NIGHT_GAP_MS = 2 * HOUR_MS
NAP_MAX_MS = 3 * HOUR_MS
AWAKENING_MIN_MINUTES = 5
AWAKENING_MIN_MS = AWAKENING_MIN_MINUTES * MINUTE_MS
SLEEP_STAGES = frozenset({"LIGHT", "DEEP", "REM", "SLEEPING"})
WAKE_STAGES = frozenset({"AWAKE", "OUT_OF_BED"})
STAGE_KEYS = ("light", "deep", "rem", "sleeping", "awake", "out_of_bed", "unknown",
              "unrecorded")
SLEEP_KEYS = ("light", "deep", "rem", "sleeping")


def _stages(rec: Record) -> list[Record]:
    return sorted(rec.get("stages") or [], key=lambda st: st["startTimeEpochMillis"])


def session_figures(rec: Record) -> dict[str, Any]:
    """Raw (unrounded, ms) figures of one session: time in bed, sleep, stage minutes."""
    stages = _stages(rec)
    stage_ms = dict.fromkeys(STAGE_KEYS, 0)
    covered = 0
    for st in stages:
        length = st["endTimeEpochMillis"] - st["startTimeEpochMillis"]
        stage_ms[st["stage"].lower()] += length
        covered += length
    in_bed = end_ms(rec) - start_ms(rec)
    stage_ms["unrecorded"] = max(0, in_bed - covered)
    has_stages = bool(stages)
    sleep_ms = sum(stage_ms[k] for k in SLEEP_KEYS) if has_stages else in_bed
    return {"in_bed_ms": in_bed, "sleep_ms": sleep_ms, "stage_ms": stage_ms,
            "has_stages": has_stages}


def _timeline(sessions: list[Record]) -> list[tuple[str, int]]:
    """The night as ``(kind, ms)`` steps: sleep, wake, gap (between sessions) or other.

    Why one timeline: a wake at the end of one session, the break and a wake at the start
    of the next are one time awake, not three.
    """
    steps: list[tuple[str, int]] = []
    prev_end: int | None = None
    for rec in sessions:  # time order, not overlapping (origins.non_overlapping)
        s, e = start_ms(rec), end_ms(rec)
        if prev_end is not None and s > prev_end:
            steps.append(("gap", s - prev_end))
        stages = _stages(rec)
        for st in stages:
            kind = st["stage"]
            steps.append(("sleep" if kind in SLEEP_STAGES else
                          "wake" if kind in WAKE_STAGES else "other",
                          st["endTimeEpochMillis"] - st["startTimeEpochMillis"]))
        if not stages:
            steps.append(("sleep", e - s))
        prev_end = e if prev_end is None else max(prev_end, e)
    return steps


def wake_figures(sessions: list[Record]) -> dict[str, int]:
    """Awakenings (wake bouts >= 5 min between sleep), brief ones, and WASO in ms."""
    awakenings = brief = waso = 0
    seen_sleep = False
    bout = 0
    for kind, length in _timeline(sessions):
        if length <= 0:
            continue
        if kind == "sleep":
            if bout >= AWAKENING_MIN_MS:
                awakenings += 1
            elif bout:
                brief += 1
            seen_sleep, bout = True, 0
        elif kind in ("wake", "gap") and seen_sleep:
            bout += length
            waso += length if kind == "wake" else 0
    return {"awakenings": awakenings, "brief_awakenings": brief, "waso_ms": waso}


def _bedtime_minutes_from_noon(epoch_ms: int, off_ms: int) -> int:
    """Local bedtime as minutes after 12:00, so evening and after-midnight bedtimes line up."""
    return (local_minute_of_day(epoch_ms, off_ms) - 720) % 1440


def _chosen_sessions(group: list[Record],
                     priority: tuple[str, ...]) -> tuple[str, int, list[Record]]:
    """(origin, origins present, its sessions): the origin covering most time in bed wins."""
    grouped: dict[str, list[Record]] = {}
    for rec in group:
        grouped.setdefault(origin(rec), []).append(rec)
    coverage = {name: float(union_length((start_ms(r), end_ms(r)) for r in recs))
                for name, recs in sorted(grouped.items())}
    chosen = choose_origin(coverage, priority)
    return chosen, len(grouped), non_overlapping(grouped[chosen])


def _night(group: list[Record], priority: tuple[str, ...]) -> dict[str, Any]:
    """One period (night or nap) from its chosen origin, plus hidden raw figures."""
    chosen, present, sessions = _chosen_sessions(group, priority)
    figures = [session_figures(r) for r in sessions]
    in_bed = sum(f["in_bed_ms"] for f in figures)
    asleep = sum(f["sleep_ms"] for f in figures)
    stage_ms = {k: sum(f["stage_ms"][k] for f in figures) for k in STAGE_KEYS}
    staged = all(f["has_stages"] for f in figures)
    wake = wake_figures(sessions)
    first, last = sessions[0], max(sessions, key=end_ms)
    bed_off, bed_ms = start_offset_ms(first), start_ms(first)
    kind = "nap" if in_bed < NAP_MAX_MS else "night"
    day = local_date(bed_ms - (12 * HOUR_MS if kind == "night" else 0), bed_off)
    of_sleep = percentages([stage_ms[k] for k in SLEEP_KEYS])
    return {
        "night_of": day.isoformat(),
        "kind": kind,
        "origin": chosen,
        "origins_present": present,
        "sessions": len(sessions),
        "bedtime_local": hhmm(local_minute_of_day(bed_ms, bed_off)),
        "wake_time_local": hhmm(local_minute_of_day(end_ms(last), end_offset_ms(last))),
        "time_in_bed_minutes": rnd(in_bed / MINUTE_MS),
        "total_sleep_minutes": rnd(asleep / MINUTE_MS),
        "efficiency_percent": rnd(asleep / in_bed * 100) if staged and in_bed > 0 else None,
        "stages_available": staged,
        "stage_minutes": {k: rnd(stage_ms[k] / MINUTE_MS) for k in STAGE_KEYS},
        "stage_percent_of_sleep": dict(zip(SLEEP_KEYS, of_sleep, strict=True))
        if staged else None,
        "stage_percent_of_time_in_bed": dict(zip(
            STAGE_KEYS, percentages([stage_ms[k] for k in STAGE_KEYS]), strict=True)),
        "awakenings": wake["awakenings"],
        "brief_awakenings": wake["brief_awakenings"],
        "waso_minutes": rnd(wake["waso_ms"] / MINUTE_MS) if staged else None,
        "_bedtime_from_noon": _bedtime_minutes_from_noon(bed_ms, bed_off),
        "_in_bed_ms": in_bed,
        "_sleep_ms": asleep,
    }


def _sufficiency(periods: list[dict[str, Any]], in_bed_ms: list[int]) -> dict[str, Any]:
    """What the figures rest on: nights, hours in bed of the chosen sessions, staged nights."""
    nights = [p for p in periods if p["kind"] == "night"]
    return {
        "nights_covered": len(nights),
        "hours_covered": rnd(sum(in_bed_ms) / HOUR_MS),
        "nights_with_stages": sum(1 for p in nights if p["stages_available"]),
    }


def _origin_totals(records: list[Record]) -> dict[str, Any]:
    """Every origin's own sessions and time in bed (all its records, chosen or not)."""
    return {
        name: {
            "sessions": len(recs),
            "time_in_bed_minutes": rnd(
                union_length((start_ms(r), end_ms(r)) for r in recs) / MINUTE_MS),
        }
        for name, recs in sorted(by_origin(records).items())
    }


def _avg(periods: list[dict[str, Any]], basis: list[int], key: str) -> float | None:
    """Mean of a per-period figure over the basis, skipping None; None if nothing is left."""
    values = [float(periods[i][key]) for i in basis if periods[i][key] is not None]
    return rnd(mean(values)) if values else None


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Per-night figures, averages across nights, bedtime consistency, per-origin totals."""
    periods = [_night(g, config.origin_priority) for g in clusters(records, NIGHT_GAP_MS)]
    hidden = [(p.pop("_bedtime_from_noon"), p.pop("_in_bed_ms"), p.pop("_sleep_ms"))
              for p in periods]
    nights = [i for i, p in enumerate(periods) if p["kind"] == "night"]
    basis = nights or list(range(len(periods)))
    staged = [i for i in basis if periods[i]["stages_available"]]  # wake is known there
    bedtimes = [float(hidden[i][0]) for i in basis]
    naps = [p for p in periods if p["kind"] == "nap"]
    days = sorted(p["night_of"] for p in periods)
    return {
        "nights": len(nights),
        "naps": len(naps),
        "nap_minutes_total": rnd(sum(p["time_in_bed_minutes"] for p in naps)),
        "averages_over": "nights" if nights else "naps",
        "session_count": len(records),
        "period_first_day": days[0],
        "period_last_day": days[-1],
        "average_time_in_bed_minutes": rnd(mean([hidden[i][1] / MINUTE_MS for i in basis])),
        "average_total_sleep_minutes": rnd(mean([hidden[i][2] / MINUTE_MS for i in basis])),
        "average_efficiency_percent": _avg(periods, basis, "efficiency_percent"),
        "average_awakenings": _avg(periods, staged, "awakenings"),
        "average_brief_awakenings": _avg(periods, staged, "brief_awakenings"),
        "average_waso_minutes": _avg(periods, basis, "waso_minutes"),
        "average_bedtime_local": hhmm(mean(bedtimes) + 720),
        "bedtime_sd_minutes": rnd(sample_sd(bedtimes)),
        "total_sleep_definition": "LIGHT+DEEP+REM+SLEEPING",
        "awakening_min_minutes": AWAKENING_MIN_MINUTES,
        "sufficiency": _sufficiency(periods, [h[1] for h in hidden]),
        "nights_detail": periods,
        "origins": _origin_totals(records),
        "nights_with_multiple_origins": sum(1 for p in periods if p["origins_present"] > 1),
    }


# --- validation -------------------------------------------------------------------------------
SESSION_MAX_MS = DAY_MS
STAGE_NAMES = frozenset({"UNKNOWN", "AWAKE", "SLEEPING", "OUT_OF_BED", "LIGHT", "DEEP", "REM"})
_TOO_LONG = CheckResult("sleep_duration_out_of_range")
_STAGE_AFTER_END = CheckResult("start_after_end", inconsistent=True)
_OUTSIDE = CheckResult("sleep_stage_outside_session", inconsistent=True)
_OVERLAP = CheckResult("sleep_stage_overlap", inconsistent=True)


def check_record(rec: Record, s: int, e: int) -> CheckResult | None:
    """A session of at most 24 h whose stages are known, inside it and not overlapping."""
    if e - s > SESSION_MAX_MS:
        return _TOO_LONG
    stages = rec.get("stages")
    if not stages:
        return None
    if type(stages) is not list:
        return MALFORMED_RECORD
    spans: list[tuple[int, int]] = []
    for st in stages:
        if type(st) is not dict:
            return MALFORMED_RECORD
        a = st.get("startTimeEpochMillis")
        b = st.get("endTimeEpochMillis")
        if type(a) is not int or type(b) is not int:
            return MISSING_TIMESTAMP
        if a > b:
            return _STAGE_AFTER_END
        if st.get("stage") not in STAGE_NAMES:
            return UNKNOWN_ENUM_VALUE
        if a < s or b > e:
            return _OUTSIDE
        spans.append((a, b))
    spans.sort()
    prev_end = spans[0][1]
    for a, b in spans[1:]:
        if a < prev_end:
            return _OVERLAP
        prev_end = b
    return None


def incomplete(rec: Record) -> str | None:
    """A session without stages is kept, but incomplete."""
    return None if rec.get("stages") else "sleep_no_stages"


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How did I sleep {period}?",
    "Can you summarize my sleep {period}?",
    "What does my sleep data {period} show?",
)


def _one_night_text(night: Stats) -> list[str]:
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
        out.append(f"Of the total sleep time, {join(shares)}.")
    out.append(times)
    out.append(f"There {'was' if night['awakenings'] == 1 else 'were'} "
               f"{plural(night['awakenings'], 'awakening')} of 5 minutes or more and "
               f"{plural(night['brief_awakenings'], 'brief awakening')} (under 5 minutes); "
               "time awake or out of bed after first falling asleep was "
               f"{plural(night['waso_minutes'], 'minute')}.")
    return out


def narrative(s: Stats, period: str) -> str:
    """Nights and naps, time in bed, total sleep, efficiency, stages or regularity."""
    nights, naps = s["nights"], s["naps"]
    over_naps = s["averages_over"] == "naps"
    basis = naps if over_naps else nights
    found = [plural(n, w) for n, w in ((nights, "night"), (naps, "nap")) if n]
    out = [f"{cap(period)}, {join(found)} of sleep {'was' if nights + naps == 1 else 'were'} "
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
        out.append(cap(line) + ".")
        if sleep_min >= 7 * 60:
            out.append("That is in line with the 7 or more hours generally recommended for "
                       "adults.")
        else:
            out.append("That is less than the 7 or more hours generally recommended for "
                       "adults.")
    if basis == 1:
        kind = "nap" if over_naps else "night"
        out += _one_night_text(next(p for p in s["nights_detail"] if p["kind"] == kind))
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
    return " ".join(out) + origin_note(s["nights_with_multiple_origins"], "nights")


# Sessions are few per file and carry stages: always record by record (no chunk check).
# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="sleepStatistics",
    schema={
        "type": "object",
        "description": "SleepSessionRecord statistics (domain/records/sleep.py).",
        "required": [
            "nights", "naps", "nap_minutes_total", "averages_over", "session_count",
            "period_first_day", "period_last_day", "average_time_in_bed_minutes",
            "average_total_sleep_minutes", "average_efficiency_percent", "average_awakenings",
            "average_brief_awakenings", "average_waso_minutes", "average_bedtime_local",
            "bedtime_sd_minutes", "total_sleep_definition", "awakening_min_minutes", "sufficiency",
            "nights_detail", "origins", "nights_with_multiple_origins",
        ],
        "properties": {
            "nights": {"type": "integer", "minimum": 0},
            "naps": {"type": "integer", "minimum": 0},
            "nap_minutes_total": {"type": "number", "minimum": 0},
            "averages_over": {"enum": ["nights", "naps"]},
            "session_count": {"type": "integer", "minimum": 1},
            "period_first_day": {
                "$ref": "#/$defs/localDate",
                "description": (
                    "Earliest night_of over nights and naps; the day the narrative's period starts."
                ),
            },
            "period_last_day": {
                "$ref": "#/$defs/localDate",
                "description": (
                    "Latest night_of over nights and naps; the day the narrative's period ends."
                ),
            },
            "average_time_in_bed_minutes": {"type": "number", "minimum": 0},
            "average_total_sleep_minutes": {"type": "number", "minimum": 0},
            "average_efficiency_percent": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 100,
            },
            "average_awakenings": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": (
                    "Mean awakenings (wake bouts of at least 5 min between sleep) over the "
                    "averaged periods with stages; null if none has stages."
                ),
            },
            "average_brief_awakenings": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": (
                    "Mean brief awakenings (wake bouts under 5 min between sleep) over the "
                    "averaged periods with stages; null if none has stages."
                ),
            },
            "average_waso_minutes": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": (
                    "Mean wake after sleep onset, minutes, over the averaged periods with stages; "
                    "null if none has stages."
                ),
            },
            "awakening_min_minutes": {
                "const": 5,
                "description": (
                    "Shortest wake bout, in minutes, counted as an awakening; shorter ones are "
                    "brief awakenings."
                ),
            },
            "sufficiency": {
                "type": "object",
                "description": "What the figures rest on.",
                "required": ["nights_covered", "hours_covered", "nights_with_stages"],
                "properties": {
                    "nights_covered": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Nights (not naps) with data.",
                    },
                    "hours_covered": {
                        "type": "number",
                        "minimum": 0,
                        "description": (
                            "Time in bed of the chosen sessions of all nights and naps, hours, 1 "
                            "decimal."
                        ),
                    },
                    "nights_with_stages": {
                        "type": "integer",
                        "minimum": 0,
                        "description": (
                            "Nights (not naps) where every chosen session has sleep stages."
                        ),
                    },
                },
                "additionalProperties": False,
            },
            "average_bedtime_local": {"type": "string", "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$"},
            "bedtime_sd_minutes": {"type": ["number", "null"], "minimum": 0},
            "total_sleep_definition": {"const": "LIGHT+DEEP+REM+SLEEPING"},
            "nights_detail": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "description": "One sleep period (night or nap) from its chosen origin.",
                    "required": [
                        "night_of", "kind", "origin", "origins_present", "sessions",
                        "bedtime_local", "wake_time_local", "time_in_bed_minutes",
                        "total_sleep_minutes", "efficiency_percent", "stages_available",
                        "stage_minutes", "stage_percent_of_sleep", "stage_percent_of_time_in_bed",
                        "awakenings", "brief_awakenings", "waso_minutes",
                    ],
                    "properties": {
                        "night_of": {
                            "$ref": "#/$defs/localDate",
                            "description": (
                                "Night: local date 12 h before bedtime (a 00:30 bedtime belongs to "
                                "the previous evening). Nap: local date of its start."
                            ),
                        },
                        "kind": {"enum": ["night", "nap"]},
                        "origin": {"type": "string", "minLength": 1},
                        "origins_present": {"type": "integer", "minimum": 1},
                        "sessions": {"type": "integer", "minimum": 1},
                        "bedtime_local": {
                            "type": "string",
                            "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$",
                        },
                        "wake_time_local": {
                            "type": "string",
                            "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$",
                        },
                        "time_in_bed_minutes": {"type": "number", "minimum": 0},
                        "total_sleep_minutes": {"type": "number", "minimum": 0},
                        "efficiency_percent": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "maximum": 100,
                        },
                        "stages_available": {"type": "boolean"},
                        "stage_minutes": closed(each(STAGE_KEYS, AMOUNT)),
                        "stage_percent_of_sleep": closed(
                            each(SLEEP_KEYS, PERCENT),
                            "Stage shares of total sleep time (LIGHT+DEEP+REM+SLEEPING), rounded "
                            "to add up to exactly 100 (all zero if no sleep stage was recorded); "
                            "null unless every session has stages.",
                            nullable=True,
                        ),
                        "stage_percent_of_time_in_bed": closed(
                            each(STAGE_KEYS, PERCENT),
                            "Shares of time in bed, including time not covered by any stage "
                            "(unrecorded), rounded to add up to exactly 100 (all zero for a "
                            "zero-length session).",
                        ),
                        "awakenings": {
                            "type": "integer",
                            "minimum": 0,
                            "description": (
                                "Wake bouts (adjacent AWAKE/OUT_OF_BED stages, plus breaks between "
                                "sessions) of at least 5 min with sleep before and after."
                            ),
                        },
                        "brief_awakenings": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Wake bouts under 5 min with sleep before and after.",
                        },
                        "waso_minutes": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "description": (
                                "Wake after sleep onset: AWAKE/OUT_OF_BED stage minutes after the "
                                "first sleep stage (breaks between sessions excluded); null unless "
                                "every session has stages."
                            ),
                        },
                    },
                    "additionalProperties": False,
                },
            },
            "origins": per_origin({"sessions": COUNT, "time_in_bed_minutes": AMOUNT}),
            "nights_with_multiple_origins": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="hypnogram", heading="Sleep", title="Sleep stages")


SPEC = RecordTypeSpec(
    name="SleepSessionRecord",
    category="sleep_recovery",
    interval=True,
    schema_file="SleepSessionRecord.avsc",
    check=check_record,
    incomplete=incomplete,
    running_total=False,  # written when the session ends, never while it is going
    statistics=compute_statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=40,
)
