"""Blood glucose statistics (international consensus CGM metrics).

Why these figures: they are the ones clinicians read on an ambulatory glucose profile
(Battelino et al., Diabetes Care 2019): mean, SD, CV, time in ranges, GMI and low-glucose
episodes. Definitions used here:

* one origin per local day (``origins.py``); readings with the same timestamp in it, once;
* SD is the sample SD (n - 1); CV % = SD / mean x 100; variability is ``stable`` when
  CV <= 36 %, else ``variable``;
* percentiles use linear interpolation (numpy's default, Hyndman-Fan type 7);
* ranges are shares of *readings* (not time): very low < 54, low 54-<70, in range 70-180,
  high >180-250, very high > 250 mg/dL, rounded so they add up to exactly 100;
* GMI % = 3.31 + 0.02392 x mean; estimated A1c % (ADAG) = (mean + 46.7) / 28.7;
* a low episode is a run of consecutive readings under the threshold (70, and separately
  54 mg/dL) lasting at least 15 min from its first to its last low reading; a reading at or
  above the threshold, or a gap of more than 30 min between readings, ends the run;
* targets (consensus): in range > 70 %, below 70 < 4 %, below 54 < 1 %, above 180 < 25 %,
  above 250 < 5 %, compared on the rounded figures the narrative quotes.
  ``control_assessment`` is ``meets_targets`` (all five), ``partially_meets_targets``
  (in range >= 50 %) or ``below_targets``.
"""

from __future__ import annotations

from typing import Any

from etl_engine.processors._common import (
    MINUTE_MS,
    mean,
    percentages,
    percentile,
    rnd,
    sample_sd,
)
from etl_engine.processors.origins import by_origin, reading_coverage, select_daily
from etl_engine.stages import DomainConfig, Record

VALUE_KEY = "levelInMilligramsPerDeciliter"
BAND_NAMES = ("very_low_below_54", "low_54_69", "in_range_70_180", "high_181_250",
              "very_high_above_250")
EPISODE_MIN_MS = 15 * MINUTE_MS
EPISODE_MAX_GAP_MS = 30 * MINUTE_MS
CV_STABLE_MAX = 36.0


def band_index(level: float) -> int:
    """Which consensus band a reading falls in (index into ``BAND_NAMES``)."""
    if level < 54:
        return 0
    if level < 70:
        return 1
    if level <= 180:
        return 2
    if level <= 250:
        return 3
    return 4


def count_episodes(points: list[tuple[int, float]], threshold: float) -> int:
    """Low episodes below ``threshold`` in time-ordered ``(ms, level)`` points (see doc)."""
    episodes = 0
    run_start: int | None = None
    last_low = 0
    prev_t: int | None = None
    for t, level in points:
        if run_start is not None and prev_t is not None and t - prev_t > EPISODE_MAX_GAP_MS:
            episodes += last_low - run_start >= EPISODE_MIN_MS
            run_start = None
        if level < threshold:
            if run_start is None:
                run_start = t
            last_low = t
        elif run_start is not None:
            episodes += last_low - run_start >= EPISODE_MIN_MS
            run_start = None
        prev_t = t
    if run_start is not None:
        episodes += last_low - run_start >= EPISODE_MIN_MS
    return episodes


def _points(records: list[Record]) -> list[tuple[int, float]]:
    """Time-ordered readings, one per timestamp."""
    out: list[tuple[int, float]] = []
    last: int | None = None
    for t, v in sorted([(r["timeEpochMillis"], float(r[VALUE_KEY])) for r in records]):
        if t != last:
            out.append((t, v))
            last = t
    return out


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Consensus glucose metrics over the chosen origin of each day."""
    choices = select_daily(records, config.origin_priority, reading_coverage)
    chosen = [r for c in choices for r in c.records]
    points = _points(chosen)
    values = [v for _, v in points]
    n = len(values)
    m = mean(values)
    sd = sample_sd(values, m)
    cv = sd / m * 100 if sd is not None else None
    ordered = sorted(values)

    band_counts = [0] * 5
    for v in values:
        band_counts[band_index(v)] += 1
    shares = percentages(band_counts)
    bands = dict(zip(BAND_NAMES, shares, strict=True))
    below_70 = rnd(shares[0] + shares[1])
    above_180 = rnd(shares[3] + shares[4])
    assert below_70 is not None and above_180 is not None
    targets = {
        "in_range_above_70_percent": shares[2] > 70,
        "below_70_under_4_percent": below_70 < 4,
        "below_54_under_1_percent": shares[0] < 1,
        "above_180_under_25_percent": above_180 < 25,
        "above_250_under_5_percent": shares[4] < 5,
    }
    if all(targets.values()):
        assessment = "meets_targets"
    elif shares[2] >= 50:
        assessment = "partially_meets_targets"
    else:
        assessment = "below_targets"
    cv_out = rnd(cv)
    variability = None if cv_out is None else ("stable" if cv_out <= CV_STABLE_MAX else "variable")

    per_origin = by_origin(records)
    origins = {}
    for name in sorted(per_origin):
        pts = points if len(per_origin) == 1 else _points(per_origin[name])
        origins[name] = {"readings": len(pts), "mean_mg_dl": rnd(mean([v for _, v in pts]))}

    days = len(choices)
    return {
        "reading_count": n,
        "days": days,
        "readings_per_day": rnd(n / days),
        "mean_mg_dl": rnd(m),
        "sd_mg_dl": rnd(sd),
        "cv_percent": cv_out,
        "min_mg_dl": rnd(ordered[0]),
        "max_mg_dl": rnd(ordered[-1]),
        "percentiles_mg_dl": {f"p{p}": rnd(percentile(ordered, p)) for p in (5, 25, 50, 75, 95)},
        "time_in_ranges_percent": bands,
        "below_70_percent": below_70,
        "above_180_percent": above_180,
        "gmi_percent": rnd(3.31 + 0.02392 * m),
        "estimated_a1c_percent": rnd((m + 46.7) / 28.7),
        "hypo_episodes_below_70": count_episodes(points, 70),
        "hypo_episodes_below_54": count_episodes(points, 54),
        "targets_met": targets,
        "control_assessment": assessment,
        "variability": variability,
        "origins": origins,
        "origin_by_day": {c.period.isoformat(): c.origin for c in choices},
        "days_with_multiple_origins": sum(1 for c in choices if len(c.coverage) > 1),
    }
