"""Sleep statistics per night and across nights.

Why these definitions:

* **Sleep period**: sessions of any origin that overlap or follow each other within 2 h form
  one period, so a night recorded by a phone and a watch (or split around a short wake)
  counts once. A period with less than 3 h in bed is a **nap**, otherwise a **night**.
  Averages and bedtime consistency are over nights (over naps only if there is no night),
  so an afternoon nap does not distort them. ``night_of`` is the local date 12 h before
  bedtime (a 01:00 bedtime belongs to the previous evening).
* **Origin**: one per night (``origins.py``: priority, else most covered time); within it,
  a session overlapping a longer one of the same origin is dropped.
* **Time in bed** = session end - start (summed over the night's sessions).
* **Total sleep** = time in LIGHT, DEEP, REM and SLEEPING stages. AWAKE, OUT_OF_BED and
  UNKNOWN are not sleep (UNKNOWN cannot be trusted to be sleep). A session without stages
  counts its whole time in bed as sleep, and has no efficiency.
* **Efficiency %** = total sleep / time in bed x 100 (nights where every session has stages).
* **Awakenings**: runs of AWAKE/OUT_OF_BED stages with sleep both before and after them
  (adjacent wake stages are one run), plus one for each break between two sessions of the
  same night.
* **Stage shares** are % of time in bed, including ``unrecorded`` time not covered by any
  stage, rounded to add up to 100.
* **Schedule consistency**: sample SD of bedtimes (local clock, minutes, measured from noon
  so 23:30 and 00:30 are an hour apart, not 23 h); None with fewer than two nights.
"""

from __future__ import annotations

from typing import Any

from etl_engine.processors._common import (
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
from etl_engine.processors.origins import (
    by_origin,
    choose_origin,
    clusters,
    non_overlapping,
    union_length,
)
from etl_engine.stages import DomainConfig, Record

NIGHT_GAP_MS = 2 * HOUR_MS
NAP_MAX_MS = 3 * HOUR_MS
SLEEP_STAGES = frozenset({"LIGHT", "DEEP", "REM", "SLEEPING"})
WAKE_STAGES = frozenset({"AWAKE", "OUT_OF_BED"})
STAGE_KEYS = ("light", "deep", "rem", "sleeping", "awake", "out_of_bed", "unknown",
              "unrecorded")


def session_figures(rec: Record) -> dict[str, Any]:
    """Raw (unrounded, ms) figures of one session: time in bed, sleep, stages, awakenings."""
    s, e = start_ms(rec), end_ms(rec)
    stage_ms = dict.fromkeys(STAGE_KEYS, 0)
    stages = sorted(rec.get("stages") or [], key=lambda st: st["startTimeEpochMillis"])
    covered = 0
    awakenings = 0
    seen_sleep = False
    in_wake_run = False
    for st in stages:
        length = st["endTimeEpochMillis"] - st["startTimeEpochMillis"]
        kind = st["stage"]
        stage_ms[kind.lower()] += length
        covered += length
        if kind in SLEEP_STAGES:
            if in_wake_run:
                awakenings += 1
            seen_sleep = True
            in_wake_run = False
        elif kind in WAKE_STAGES and seen_sleep:
            in_wake_run = True
    in_bed = e - s
    stage_ms["unrecorded"] = max(0, in_bed - covered)
    has_stages = bool(stages)
    sleep_ms = sum(stage_ms[k.lower()] for k in SLEEP_STAGES) if has_stages else in_bed
    return {"in_bed_ms": in_bed, "sleep_ms": sleep_ms, "stage_ms": stage_ms,
            "awakenings": awakenings, "has_stages": has_stages}


def _bedtime_minutes_from_noon(epoch_ms: int, off_ms: int) -> int:
    """Local bedtime as minutes after 12:00, so evening and after-midnight bedtimes line up."""
    return (local_minute_of_day(epoch_ms, off_ms) - 720) % 1440


def _night(group: list[Record], priority: tuple[str, ...]) -> dict[str, Any]:
    by_origin: dict[str, list[Record]] = {}
    for rec in group:
        by_origin.setdefault(origin(rec), []).append(rec)
    coverage = {name: float(union_length((start_ms(r), end_ms(r)) for r in recs))
                for name, recs in sorted(by_origin.items())}
    chosen = choose_origin(coverage, priority)
    sessions = non_overlapping(by_origin[chosen])
    figures = [session_figures(r) for r in sessions]
    in_bed = sum(f["in_bed_ms"] for f in figures)
    asleep = sum(f["sleep_ms"] for f in figures)
    stage_ms = {k: sum(f["stage_ms"][k] for f in figures) for k in STAGE_KEYS}
    all_staged = all(f["has_stages"] for f in figures)
    first, last = sessions[0], max(sessions, key=end_ms)
    bed_off = start_offset_ms(first)
    bed_ms = start_ms(first)
    shares = percentages([stage_ms[k] for k in STAGE_KEYS])
    return {
        "night_of": local_date(bed_ms - 12 * HOUR_MS, bed_off).isoformat(),
        "kind": "nap" if in_bed < NAP_MAX_MS else "night",
        "origin": chosen,
        "origins_present": len(by_origin),
        "sessions": len(sessions),
        "bedtime_local": hhmm(local_minute_of_day(bed_ms, bed_off)),
        "wake_time_local": hhmm(local_minute_of_day(end_ms(last), end_offset_ms(last))),
        "time_in_bed_minutes": rnd(in_bed / MINUTE_MS),
        "total_sleep_minutes": rnd(asleep / MINUTE_MS),
        "efficiency_percent": rnd(asleep / in_bed * 100) if all_staged and in_bed > 0 else None,
        "stages_available": all_staged,
        "stage_minutes": {k: rnd(stage_ms[k] / MINUTE_MS) for k in STAGE_KEYS},
        "stage_percent": dict(zip(STAGE_KEYS, shares, strict=True)),
        "awakenings": sum(f["awakenings"] for f in figures) + len(sessions) - 1,
        "_bedtime_from_noon": _bedtime_minutes_from_noon(bed_ms, bed_off),
        "_in_bed_ms": in_bed,
        "_sleep_ms": asleep,
    }


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Per-night figures, averages across nights, bedtime consistency, per-origin totals."""
    periods = [_night(g, config.origin_priority) for g in clusters(records, NIGHT_GAP_MS)]
    hidden = [(p.pop("_bedtime_from_noon"), p.pop("_in_bed_ms"), p.pop("_sleep_ms"))
              for p in periods]
    nights = [i for i, p in enumerate(periods) if p["kind"] == "night"]
    basis = nights or list(range(len(periods)))
    bedtimes = [float(hidden[i][0]) for i in basis]
    in_bed = [hidden[i][1] / MINUTE_MS for i in basis]
    asleep = [hidden[i][2] / MINUTE_MS for i in basis]
    efficiencies = [periods[i]["efficiency_percent"] for i in basis
                    if periods[i]["efficiency_percent"] is not None]
    naps = [p for p in periods if p["kind"] == "nap"]

    per_origin = by_origin(records)
    origins = {
        name: {
            "sessions": len(recs),
            "time_in_bed_minutes": rnd(
                union_length((start_ms(r), end_ms(r)) for r in recs) / MINUTE_MS),
        }
        for name, recs in sorted(per_origin.items())
    }
    return {
        "nights": len(nights),
        "naps": len(naps),
        "nap_minutes_total": rnd(sum(p["time_in_bed_minutes"] for p in naps)),
        "averages_over": "nights" if nights else "naps",
        "session_count": len(records),
        "average_time_in_bed_minutes": rnd(mean(in_bed)),
        "average_total_sleep_minutes": rnd(mean(asleep)),
        "average_efficiency_percent": rnd(mean(efficiencies)) if efficiencies else None,
        "average_awakenings": rnd(mean([float(periods[i]["awakenings"]) for i in basis])),
        "average_bedtime_local": hhmm(mean(bedtimes) + 720),
        "bedtime_sd_minutes": rnd(sample_sd(bedtimes)),
        "total_sleep_definition": "LIGHT+DEEP+REM+SLEEPING",
        "nights_detail": periods,
        "origins": origins,
        "nights_with_multiple_origins": sum(1 for p in periods if p["origins_present"] > 1),
    }
