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

import operator
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import compress, islice, pairwise, repeat
from typing import Any

from etl_engine.processors._common import (
    DAY_MS,
    MINUTE_MS,
    day_from_index,
    mean,
    percentages,
    percentile,
    rnd,
    sample_sd,
)
from etl_engine.processors.columns import Readings
from etl_engine.processors.origins import choose_origin
from etl_engine.stages import DomainConfig, Record

VALUE_KEY = "levelInMilligramsPerDeciliter"
BAND_NAMES = ("very_low_below_54", "low_54_69", "in_range_70_180", "high_181_250",
              "very_high_above_250")
EPISODE_MIN_MS = 15 * MINUTE_MS
EPISODE_MAX_GAP_MS = 30 * MINUTE_MS
CV_STABLE_MAX = 36.0
_LIST_MAX = 50_000  # longer series stay typed arrays (memory), see heart_rate._LIST_MAX


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


def count_episodes(points: Iterable[tuple[int, float]], threshold: float) -> int:
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


def _time_order(times: Sequence[int], values: Sequence[float]) -> Iterable[int]:
    """Reading indices in (time, level) order: ``range`` when already so (the usual)."""
    n = len(times)
    if not any(t2 < t1 or (t2 == t1 and v2 < v1)
               for (t1, v1), (t2, v2) in pairwise(zip(times, values, strict=True))):
        return range(n)
    order = sorted(range(n), key=times.__getitem__)  # stable; equal times re-sorted below
    i = 0
    while i < n:
        j = i + 1
        while j < n and times[order[j]] == times[order[i]]:
            j += 1
        if j - i > 1:
            order[i:j] = sorted(order[i:j], key=values.__getitem__)
        i = j
    return order


_Selection = tuple[
    list[tuple[str, str, int]], Sequence[int], Sequence[float], list[Sequence[float]]
]


def _select(cols: Readings, priority: Sequence[str]) -> _Selection:
    """One origin per local day (most distinct timestamps, or ``priority``).

    Returns the days as (local date, chosen origin, origins present), the chosen readings'
    times and levels in (time, level) order with one reading per timestamp (the lowest
    level of a repeated one), and every origin's own levels (one per timestamp).
    """
    times: Sequence[int] = cols.times
    levels: Sequence[float] = cols.values
    offsets: Sequence[int] = cols.offsets
    oids: Sequence[int] = cols.origin_ids
    if len(times) <= _LIST_MAX:  # read several times below: box each value once, not per pass
        times, levels, offsets, oids = (cols.times.tolist(), cols.values.tolist(),
                                        cols.offsets.tolist(), cols.origin_ids.tolist())
    names = cols.origins.names
    distinct = all(map(operator.lt, times, islice(times, 1, None)))
    coverage: dict[int, dict[int, int]] = {}  # day -> origin -> distinct timestamps
    if distinct:  # the usual export: time-ordered, no repeats; counted at C speed
        days = list(map(operator.floordiv, map(operator.add, times, offsets),
                        repeat(DAY_MS)))
        for (day, o), count in Counter(zip(days, oids, strict=True)).items():
            coverage.setdefault(day, {})[o] = count
    else:
        order = _time_order(times, levels)
        last_seen: dict[tuple[int, int], int] = {}
        for i in order:
            t = times[i]
            day = (t + offsets[i]) // DAY_MS
            o = oids[i]
            if last_seen.get((day, o)) != t:
                last_seen[(day, o)] = t
                per_day = coverage.get(day)
                if per_day is None:
                    per_day = coverage[day] = {}
                per_day[o] = per_day.get(o, 0) + 1
        del last_seen
    chosen: dict[int, int] = {}
    choices: list[tuple[str, str, int]] = []
    for day in sorted(coverage):
        cov = {names[o]: float(c) for o, c in coverage[day].items()}
        name = choose_origin(dict(sorted(cov.items())), priority)
        chosen[day] = cols.origins.index[name]
        choices.append((day_from_index(day).isoformat(), name, len(cov)))

    if distinct:
        if len(names) == 1:
            return choices, times, levels, [levels]
        mask = list(map(operator.eq, map(chosen.__getitem__, days), oids))
        own: list[Sequence[float]] = [
            array("d", compress(levels, map(operator.eq, oids, repeat(o))))
            for o in range(len(names))]
        return (choices, array("q", compress(times, mask)), array("d", compress(levels, mask)),
                own)

    pt_times = array("q")
    values = array("d")
    own_arrays = [array("d") for _ in names]
    own_last: list[int | None] = [None] * len(names)
    last_t: int | None = None
    for i in order:
        t = times[i]
        o = oids[i]
        if own_last[o] != t:
            own_last[o] = t
            own_arrays[o].append(levels[i])
        if t != last_t and chosen[(t + offsets[i]) // DAY_MS] == o:
            last_t = t
            pt_times.append(t)
            values.append(levels[i])
    return choices, pt_times, values, list[Sequence[float]](own_arrays)


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Consensus glucose metrics over the chosen origin of each day."""
    return statistics(Readings.from_records(records, VALUE_KEY), config)


def statistics(cols: Readings, config: DomainConfig) -> dict[str, Any]:
    """``compute_statistics`` over column-stored readings (validation streams into them).

    One origin per local day (most distinct timestamps, or ``origin_priority``); readings
    taken in (time, level) order, one per timestamp (the lowest level of a repeated one).
    """
    choices, pt_times, values, own = _select(cols, config.origin_priority)
    n = len(values)
    m = mean(values)
    sd = sample_sd(values, m)
    cv = sd / m * 100 if sd is not None else None
    ordered = sorted(values)

    # band_index(v) counted over the sorted levels: <54 | <70 | <=180 | <=250 | rest
    edges = [0, bisect_left(ordered, 54), bisect_left(ordered, 70),
             bisect_right(ordered, 180), bisect_right(ordered, 250), n]
    band_counts = [hi - lo for lo, hi in pairwise(edges)]
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
    # episodes need a reading under the threshold: none at all when the lowest is not
    low_70 = count_episodes(zip(pt_times, values, strict=True), 70) if ordered[0] < 70 else 0
    low_54 = count_episodes(zip(pt_times, values, strict=True), 54) if ordered[0] < 54 else 0
    variability = None if cv_out is None else ("stable" if cv_out <= CV_STABLE_MAX else "variable")

    origins = {}
    for name in sorted(cols.origins.names):
        vals = own[cols.origins.index[name]]
        origins[name] = {"readings": len(vals), "mean_mg_dl": rnd(mean(vals))}

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
        "hypo_episodes_below_70": low_70,
        "hypo_episodes_below_54": low_54,
        "targets_met": targets,
        "control_assessment": assessment,
        "variability": variability,
        "origins": origins,
        "origin_by_day": {day: name for day, name, _ in choices},
        "days_with_multiple_origins": sum(1 for _, _, present in choices if present > 1),
    }
