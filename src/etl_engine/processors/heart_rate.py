"""Heart-rate statistics over all samples of the chosen origin per day.

Why these choices:

* **Resting estimate** = 5th percentile of all samples. Without activity context we cannot
  pick "resting" moments, and the low tail of a day's samples tracks resting heart rate
  closely while ignoring the odd artefact below it.
* **Zones** use a fixed, age-free reference maximum of 190 bpm (the exports carry no age;
  190 is 220 - 30 and close to Tanaka's 208 - 0.7 x age at 25). Zones by % of that maximum:
  below zone 1 < 50 %, zone 1 50-60 %, zone 2 60-70 %, zone 3 70-80 %, zone 4 80-90 %,
  zone 5 >= 90 %; i.e. boundaries at 95, 114, 133, 152 and 171 bpm (lower bound inclusive).
* **Time in zones** is time-weighted, because watches sample densely during exercise and
  sparsely at rest: each sample stands for the time until the next one, capped at 5 min
  (the last sample repeats the previous gap, capped). A single sample falls back to counts.
  Shares are rounded to add up to exactly 100.
* One origin per local day (``origins.py``); samples with the same timestamp, once.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from etl_engine.processors._common import (
    MINUTE_MS,
    iso_utc,
    mean,
    percentages,
    percentile,
    rnd,
    sample_sd,
    start_ms,
)
from etl_engine.processors.origins import by_origin, interval_coverage, select_daily
from etl_engine.stages import DomainConfig, Record

HR_MAX_BPM = 190
ZONE_NAMES = ("below_zone_1", "zone_1", "zone_2", "zone_3", "zone_4", "zone_5")
ZONE_LOWER_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
ZONE_BOUNDS_BPM = tuple(round(HR_MAX_BPM * f) for f in ZONE_LOWER_FRACTIONS)  # 95..171
SAMPLE_WEIGHT_CAP_MS = 5 * MINUTE_MS
RESTING_PERCENTILE = 5


def zone_index(bpm: float) -> int:
    """Index into ``ZONE_NAMES`` for a heart rate."""
    i = 0
    for bound in ZONE_BOUNDS_BPM:
        if bpm < bound:
            return i
        i += 1
    return i


def samples_of(records: list[Record]) -> tuple[list[int], list[float]]:
    """Time-ordered (times, bpm) of the records' samples, one per timestamp.

    Parallel lists rather than tuples: a long export has millions of samples.
    """
    times: list[int] = []
    bpms: list[float] = []
    for rec in sorted(records, key=start_ms):
        for smp in rec["samples"]:
            times.append(smp["timeEpochMillis"])
            bpms.append(smp["beatsPerMinute"])
    if any(a >= b for a, b in pairwise(times)):
        order = sorted(range(len(times)), key=lambda i: (times[i], bpms[i]))
        t_out: list[int] = []
        b_out: list[float] = []
        last: int | None = None
        for i in order:
            if times[i] != last:
                t_out.append(times[i])
                b_out.append(bpms[i])
                last = times[i]
        return t_out, b_out
    return times, bpms


def sample_weights(times: list[int]) -> list[int]:
    """Milliseconds each sample stands for (see module doc)."""
    n = len(times)
    if n < 2:
        return [0] * n
    cap = SAMPLE_WEIGHT_CAP_MS
    weights = [min(times[i + 1] - times[i], cap) for i in range(n - 1)]
    weights.append(weights[-1])
    return weights


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Mean/min/max, resting estimate, time in zones, span, per-origin figures."""
    choices = select_daily(records, config.origin_priority, interval_coverage)
    times, bpms = samples_of([r for c in choices for r in c.records])
    n = len(bpms)
    ordered = sorted(bpms)
    m = mean(bpms)

    weights = sample_weights(times)
    zone_ms = [0.0] * len(ZONE_NAMES)
    zone_counts = [0] * len(ZONE_NAMES)
    for b, w in zip(bpms, weights, strict=True):
        z = zone_index(b)
        zone_ms[z] += w
        zone_counts[z] += 1
    shares = percentages(zone_ms if sum(zone_ms) > 0 else zone_counts)

    per_origin = by_origin(records)
    origins = {}
    for name in sorted(per_origin):
        own = bpms if len(per_origin) == 1 else samples_of(per_origin[name])[1]
        origins[name] = {"samples": len(own), "mean_bpm": rnd(mean(own))}

    return {
        "sample_count": n,
        "record_count": sum(len(c.records) for c in choices),
        "days": len(choices),
        "first_sample": iso_utc(times[0]),
        "last_sample": iso_utc(times[-1]),
        "span_minutes": rnd((times[-1] - times[0]) / MINUTE_MS),
        "mean_bpm": rnd(m),
        "median_bpm": rnd(percentile(ordered, 50)),
        "sd_bpm": rnd(sample_sd(bpms, m)),
        "min_bpm": rnd(ordered[0]),
        "max_bpm": rnd(ordered[-1]),
        "resting_estimate_bpm": rnd(percentile(ordered, RESTING_PERCENTILE)),
        "resting_estimate_method": f"p{RESTING_PERCENTILE}_of_samples",
        "hr_max_reference_bpm": HR_MAX_BPM,
        "zone_lower_bounds_bpm": dict(zip(ZONE_NAMES[1:], ZONE_BOUNDS_BPM, strict=True)),
        "time_in_zones_percent": dict(zip(ZONE_NAMES, shares, strict=True)),
        "time_in_zones_minutes": {
            name: rnd(ms / MINUTE_MS) for name, ms in zip(ZONE_NAMES, zone_ms, strict=True)
        },
        "origins": origins,
        "origin_by_day": {c.period.isoformat(): c.origin for c in choices},
        "days_with_multiple_origins": sum(1 for c in choices if len(c.coverage) > 1),
    }
