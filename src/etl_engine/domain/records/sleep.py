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

from etl_engine.domain.model import DomainConfig, Record
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
