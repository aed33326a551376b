"""Blood glucose statistics (international consensus CGM metrics).

Why these figures: they are the ones clinicians read on an ambulatory glucose profile
(Battelino et al., Diabetes Care 2019; Danne et al., Diabetes Care 2017): mean, SD, CV,
time in ranges, GMI and glucose episodes, and whether the data are enough to read them.
Definitions used here (docs/clinical.md has the full text):

* one origin per local day (``origins.py``); readings with the same timestamp in it, once;
  ``day_basis`` is ``utc`` when every chosen reading is stamped Z / without zone (its days
  are UTC days), else ``local``; ``days`` counts calendar days touched, not coverage;
* SD is the sample SD (n - 1); CV % = SD / mean x 100; variability is ``stable`` when
  CV <= 36 %, else ``variable``;
* percentiles use linear interpolation (numpy's default, Hyndman-Fan type 7);
* ranges are shares of *readings* (not time): very low < 54, low 54-<70, in range 70-180,
  high >180-250, very high > 250 mg/dL, rounded so they add up to exactly 100;
* GMI % = 3.31 + 0.02392 x mean (it replaces the "estimated A1c", which is not reported);
* sufficiency: the sampling interval is the median gap between chosen readings (to 0.1
  min); up to 15 min the series is ``continuous`` (a CGM), else ``intermittent`` (a meter).
  A continuous series covers last - first + one interval (each reading stands for its
  interval), expects that span / interval readings, and its wear is received / expected.
  The consensus minimum is >= 14 days covered with >= 70 % wear (continuous only); below
  it GMI and the target verdict are kept but flagged ``*_insufficient_data``;
* episodes (consensus): level 1 low < 70, level 2 low < 54, level 1 high > 180, level 2
  high > 250 mg/dL. One starts when consecutive readings beyond the limit cover >= 15 min
  (each reading stands for the interval: 3 readings at 5 min), and ends when readings back
  within it cover >= 15 min; a gap of more than twice the interval ends a run or an
  episode. Level 2 is counted on its own limit (a level 2 episode lies inside a level 1
  one). Intermittent data have no episodes (None);
* targets (consensus): in range > 70 %, below 70 < 4 %, below 54 < 1 %, above 180 < 25 %,
  above 250 < 5 %, compared on the rounded figures the narrative quotes.
  ``control_assessment`` is ``meets_targets`` (all five), ``partially_meets_targets``
  (in range >= 50 %) or ``below_targets``.
"""

from __future__ import annotations

import math
import operator
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, compress, groupby, islice, pairwise, repeat
from typing import Any

from etl_engine.domain.checks import (
    MISSING_VALUE,
    UNKNOWN_ENUM_VALUE,
    CheckResult,
    enums_within,
    is_num,
    numbers_between,
)
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.records.spec import Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.columns import Readings
from etl_engine.domain.stats.common import (
    DAY_MS,
    MINUTE_MS,
    day_from_index,
    mean,
    percentages,
    percentile,
    rnd,
    sample_sd,
)
from etl_engine.domain.stats.origins import choose_origin
from etl_engine.domain.stats.schema import COUNT, ORIGIN_BY_DAY, per_origin
from etl_engine.domain.wording import Stats, cap, join, num, origin_note, plural

VALUE_KEY = "levelInMilligramsPerDeciliter"
BAND_NAMES = ("very_low_below_54", "low_54_69", "in_range_70_180", "high_181_250",
              "very_high_above_250")
EPISODE_MIN_MINUTES = 15.0
CONTINUOUS_MAX_INTERVAL_MINUTES = 15.0  # CGMs read every 1-15 min; sparser is a meter
CONSENSUS_MIN_DAYS = 14
CONSENSUS_MIN_WEAR_PERCENT = 70
# (key, limit, below): level 2 counted on its own limit, inside a level 1 episode
EPISODE_LIMITS = (("low_level_1_below_70", 70.0, True), ("low_level_2_below_54", 54.0, True),
                  ("high_level_1_above_180", 180.0, False),
                  ("high_level_2_above_250", 250.0, False))
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


def gaps_of(times: Sequence[int]) -> list[int]:
    """Gaps between consecutive (ordered, distinct) readings, in ms, at C speed."""
    return list(map(operator.sub, islice(times, 1, None), times))


def sampling_interval_minutes(gaps: Sequence[int]) -> float | None:
    """Median gap (type 7) between consecutive readings, in minutes to 0.1.

    Why the median: a sensor's own rhythm survives the gaps of a removed sensor or a lost
    signal, and a few jittered timestamps. Counted, not sorted: a CGM repeats a few gaps.
    None with fewer than two readings.
    """
    if not gaps:
        return None
    lo, hi = (len(gaps) - 1) // 2, len(gaps) // 2  # the middle one or two, 0-based
    seen = 0
    lo_gap = hi_gap = 0
    for gap, count in sorted(Counter(gaps).items()):
        if seen <= lo < seen + count:
            lo_gap = gap
        if seen <= hi < seen + count:
            hi_gap = gap
            break
        seen += count
    return rnd((lo_gap + hi_gap) / 2 / MINUTE_MS)


def segments(gaps: Sequence[int], interval_min: float) -> list[tuple[int, int]]:
    """Index ranges [start, stop) of readings with no gap > twice the interval inside.

    Why: a gap in the data is not time in (or out of) range, so it breaks an episode.
    """
    max_gap = 2 * interval_min * MINUTE_MS
    breaks = compress(range(1, len(gaps) + 1), map(operator.gt, gaps, repeat(max_gap)))
    return list(pairwise(chain((0,), breaks, (len(gaps) + 1,))))


def count_episodes(
    segs: Iterable[tuple[int, int]], values: Sequence[float], interval_min: float,
    limit: float, *, below: bool,
) -> int:
    """Consensus episodes beyond ``limit`` (``below``: under it, else over it).

    An episode starts once consecutive readings beyond the limit cover >= 15 min (each
    reading stands for ``interval_min``), ends once readings back within it cover >= 15
    min, and ends with its segment (a gap). Linear: each segment is split into runs of
    beyond / within at C speed (``groupby``); only the runs are walked in Python.
    """
    need = max(1, math.ceil(EPISODE_MIN_MINUTES / interval_min - 1e-9))
    beyond = operator.lt if below else operator.gt
    episodes = 0
    for start, stop in segs:
        in_episode = False
        for out, run in groupby(map(beyond, values[start:stop], repeat(limit))):
            if len(list(run)) < need:
                continue
            if out and not in_episode:
                episodes += 1
            in_episode = out
    return episodes


def episodes(
    gaps: Sequence[int], values: Sequence[float], ordered: Sequence[float],
    interval_min: float | None, continuous: bool,
) -> dict[str, int | None]:
    """All four consensus episode counts; None for intermittent (meter) readings."""
    if not continuous or interval_min is None:
        return {key: None for key, _, _ in EPISODE_LIMITS}
    out: dict[str, int | None] = {}
    segs: list[tuple[int, int]] | None = None
    for key, limit, below in EPISODE_LIMITS:
        if (ordered[0] >= limit) if below else (ordered[-1] <= limit):
            out[key] = 0  # no reading beyond the limit: nothing to scan
            continue
        if segs is None:
            segs = segments(gaps, interval_min)
        out[key] = count_episodes(segs, values, interval_min, limit, below=below)
    return out


def sufficiency(times: Sequence[int], interval_min: float | None) -> dict[str, Any]:
    """How much data the figures rest on, against the consensus minimum (14 d, 70 %).

    Why: GMI and the target verdict mean little from a day of readings. Covered time is
    the span of the readings plus one interval (each reading stands for its interval) for
    a continuous series, the plain span for intermittent ones; both compared rounded.
    """
    n = len(times)
    continuous = interval_min is not None and interval_min <= CONTINUOUS_MAX_INTERVAL_MINUTES
    span_ms = float(times[-1] - times[0]) if n else 0.0
    expected: int | None = None
    wear: float | None = None
    if continuous and interval_min is not None:
        span_ms += interval_min * MINUTE_MS
        expected = max(n, round(span_ms / (interval_min * MINUTE_MS)))
        wear = rnd(min(100.0, n / expected * 100))
    days = rnd(span_ms / DAY_MS)
    assert days is not None
    met = (continuous and wear is not None and days >= CONSENSUS_MIN_DAYS
           and wear >= CONSENSUS_MIN_WEAR_PERCENT)
    return {
        "sampling": "continuous" if continuous else "intermittent",
        "sampling_interval_minutes": interval_min,
        "days_covered": days,
        "hours_covered": rnd(span_ms / (60 * MINUTE_MS)),
        "expected_readings": expected,
        "received_readings": n,
        "wear_percent": wear,
        "consensus_minimum": {"days": CONSENSUS_MIN_DAYS,
                              "wear_percent": CONSENSUS_MIN_WEAR_PERCENT},
        "consensus_minimum_met": met,
    }


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
    list[tuple[str, str, int]], Sequence[int], Sequence[float], list[Sequence[float]], bool
]


def _coverage_unordered(
    times: Sequence[int], levels: Sequence[float], offsets: Sequence[int], oids: Sequence[int],
) -> tuple[Iterable[int], dict[int, dict[int, int]]]:
    """(time, level) order and day -> origin -> distinct timestamps, for a series with
    repeats or out of order (the rare case; the usual one is counted at C speed)."""
    order = _time_order(times, levels)
    coverage: dict[int, dict[int, int]] = {}
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
    return order, coverage


def _pick_unordered(
    order: Iterable[int], cols: tuple[Sequence[int], Sequence[float], Sequence[int],
                                      Sequence[int]],
    chosen: dict[int, int], origin_count: int,
) -> tuple[Sequence[int], Sequence[float], list[Sequence[float]], bool]:
    """The chosen readings (one per timestamp), every origin's own levels, and whether all
    chosen readings are at offset 0, walking ``order`` once."""
    times, levels, offsets, oids = cols
    pt_times = array("q")
    values = array("d")
    own_arrays = [array("d") for _ in range(origin_count)]
    own_last: list[int | None] = [None] * origin_count
    last_t: int | None = None
    utc = True
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
            utc = utc and not offsets[i]
    return pt_times, values, list[Sequence[float]](own_arrays), utc


def _select(cols: Readings, priority: Sequence[str]) -> _Selection:
    """One origin per local day (most distinct timestamps, or ``priority``).

    Returns the days as (local date, chosen origin, origins present), the chosen readings'
    times and levels in (time, level) order with one reading per timestamp (the lowest
    level of a repeated one), every origin's own levels (one per timestamp), and whether
    every chosen reading has a zero offset (Z or no zone: its days are UTC days).
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
        order, coverage = _coverage_unordered(times, levels, offsets, oids)
    chosen: dict[int, int] = {}
    choices: list[tuple[str, str, int]] = []
    for day in sorted(coverage):
        cov = {names[o]: float(c) for o, c in coverage[day].items()}
        name = choose_origin(dict(sorted(cov.items())), priority)
        chosen[day] = cols.origins.index[name]
        choices.append((day_from_index(day).isoformat(), name, len(cov)))

    if not distinct:
        return (choices, *_pick_unordered(order, (times, levels, offsets, oids), chosen,
                                          len(names)))
    if len(names) == 1:
        return choices, times, levels, [levels], not any(offsets)
    mask = list(map(operator.eq, map(chosen.__getitem__, days), oids))
    own: list[Sequence[float]] = [
        array("d", compress(levels, map(operator.eq, oids, repeat(o))))
        for o in range(len(names))]
    return (choices, array("q", compress(times, mask)), array("d", compress(levels, mask)),
            own, not any(compress(offsets, mask)))


def compute_statistics(records: list[Record], config: DomainConfig) -> dict[str, Any]:
    """Consensus glucose metrics over the chosen origin of each day."""
    return statistics(Readings.from_records(records, VALUE_KEY), config)


def targets(shares: Sequence[float]) -> tuple[dict[str, bool], str, float, float]:
    """The five consensus targets on the rounded band shares, the overall assessment, and
    the rounded below-70 / above-180 shares (compared as the narrative quotes them)."""
    below_70 = rnd(shares[0] + shares[1])
    above_180 = rnd(shares[3] + shares[4])
    assert below_70 is not None and above_180 is not None
    met = {
        "in_range_above_70_percent": shares[2] > 70,
        "below_70_under_4_percent": below_70 < 4,
        "below_54_under_1_percent": shares[0] < 1,
        "above_180_under_25_percent": above_180 < 25,
        "above_250_under_5_percent": shares[4] < 5,
    }
    if all(met.values()):
        assessment = "meets_targets"
    elif shares[2] >= 50:
        assessment = "partially_meets_targets"
    else:
        assessment = "below_targets"
    return met, assessment, below_70, above_180


def statistics(cols: Readings, config: DomainConfig) -> dict[str, Any]:
    """``compute_statistics`` over column-stored readings (validation streams into them).

    One origin per local day (most distinct timestamps, or ``origin_priority``); readings
    taken in (time, level) order, one per timestamp (the lowest level of a repeated one).
    """
    choices, pt_times, values, own, utc = _select(cols, config.origin_priority)
    n = len(values)
    m = mean(values)
    sd = sample_sd(values, m)
    cv_out = rnd(sd / m * 100 if sd is not None else None)
    ordered = sorted(values)

    # band_index(v) counted over the sorted levels: <54 | <70 | <=180 | <=250 | rest
    edges = [0, bisect_left(ordered, 54), bisect_left(ordered, 70),
             bisect_right(ordered, 180), bisect_right(ordered, 250), n]
    shares = percentages([hi - lo for lo, hi in pairwise(edges)])
    met, assessment, below_70, above_180 = targets(shares)
    gaps = gaps_of(pt_times)
    interval = sampling_interval_minutes(gaps)
    enough = sufficiency(pt_times, interval)
    variability = None if cv_out is None else ("stable" if cv_out <= CV_STABLE_MAX else "variable")

    origins = {}
    for name in sorted(cols.origins.names):
        vals = own[cols.origins.index[name]]
        origins[name] = {"readings": len(vals), "mean_mg_dl": rnd(mean(vals))}

    days = len(choices)
    return {
        "reading_count": n,
        "days": days,
        "day_basis": "utc" if utc else "local",
        "readings_per_day": rnd(n / days),
        "sufficiency": enough,
        "mean_mg_dl": rnd(m),
        "sd_mg_dl": rnd(sd),
        "cv_percent": cv_out,
        "min_mg_dl": rnd(ordered[0]),
        "max_mg_dl": rnd(ordered[-1]),
        "percentiles_mg_dl": {f"p{p}": rnd(percentile(ordered, p)) for p in (5, 25, 50, 75, 95)},
        "time_in_ranges_percent": dict(zip(BAND_NAMES, shares, strict=True)),
        "below_70_percent": below_70,
        "above_180_percent": above_180,
        "gmi_percent": rnd(3.31 + 0.02392 * m),
        "gmi_insufficient_data": not enough["consensus_minimum_met"],
        "episodes": episodes(gaps, values, ordered, interval,
                             enough["sampling"] == "continuous"),
        "targets_met": met,
        "control_assessment": assessment,
        "control_assessment_insufficient_data": not enough["consensus_minimum_met"],
        "variability": variability,
        "origins": origins,
        "origin_by_day": {day: name for day, name, _ in choices},
        "days_with_multiple_origins": sum(1 for _, _, present in choices if present > 1),
    }


# --- validation -------------------------------------------------------------------------------
GLUCOSE_RANGE = (20.0, 600.0)
MEAL_TYPES = frozenset({"UNKNOWN", "BREAKFAST", "LUNCH", "DINNER", "SNACK"})
RELATIONS_TO_MEAL = frozenset({"UNKNOWN", "GENERAL", "FASTING", "BEFORE_MEAL", "AFTER_MEAL"})
SPECIMEN_SOURCES = frozenset(
    {"INTERSTITIAL_FLUID", "CAPILLARY_BLOOD", "PLASMA", "SERUM", "TEARS", "WHOLE_BLOOD",
     "UNKNOWN"}
)
_OUT_OF_RANGE = CheckResult("glucose_out_of_range")
_MEAL_OR_NONE = MEAL_TYPES | {None}
_RELATION_OR_NONE = RELATIONS_TO_MEAL | {None}
_SPECIMEN_OR_NONE = SPECIMEN_SOURCES | {None}


def check_record(rec: Record, s: int, e: int) -> CheckResult | None:
    """A level within 20-600 mg/dL; meal, relation and specimen absent or known."""
    v = rec.get(VALUE_KEY)
    if not is_num(v):
        return MISSING_VALUE
    if not GLUCOSE_RANGE[0] <= v <= GLUCOSE_RANGE[1]:
        return _OUT_OF_RANGE
    meal = rec.get("mealType")
    rel = rec.get("relationToMeal")
    src = rec.get("specimenSource")
    if ((meal is not None and meal not in MEAL_TYPES)
            or (rel is not None and rel not in RELATIONS_TO_MEAL)
            or (src is not None and src not in SPECIMEN_SOURCES)):
        return UNKNOWN_ENUM_VALUE
    return None


def check_chunk(chunk: list[Record], starts: list[Any], ends: list[Any]) -> bool:
    """``check_record`` for a whole chunk at C speed: True when it keeps every record."""
    return (numbers_between(chunk, VALUE_KEY, *GLUCOSE_RANGE)
            and enums_within(chunk, "mealType", _MEAL_OR_NONE)
            and enums_within(chunk, "relationToMeal", _RELATION_OR_NONE)
            and enums_within(chunk, "specimenSource", _SPECIMEN_OR_NONE))


# --- narrative --------------------------------------------------------------------------------
INSTRUCTIONS = (
    "How did my blood glucose look {period}?",
    "Can you summarize my blood glucose readings {period}?",
    "What do my glucose readings {period} say about my glucose control?",
)
_TARGET_TEXT = {
    "in_range_above_70_percent": "more than 70% of readings in range",
    "below_70_under_4_percent": "less than 4% below 70 mg/dL",
    "below_54_under_1_percent": "less than 1% below 54 mg/dL",
    "above_180_under_25_percent": "less than 25% above 180 mg/dL",
    "above_250_under_5_percent": "less than 5% above 250 mg/dL",
}


def _coverage_text(s: Stats, period: str) -> str:
    """What the figures rest on: readings, covered time and wear (not calendar days)."""
    q, n = s["sufficiency"], s["reading_count"]
    if s["day_basis"] == "utc":  # Z-stamped readings: their days are UTC days
        period += " (UTC dates)" if period.startswith("between") else " (UTC date)"
    first = (f"{cap(period)}, {plural(n, 'blood glucose reading')} "
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


def _verdict_text(s: Stats) -> list[str]:
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
        verdict = f"Together these meet {consensus} ({join(list(_TARGET_TEXT.values()))})."
    elif s["control_assessment"] == "partially_meets_targets":
        verdict = (f"At least half of the readings were in range, but not all of {consensus} "
                   f"were met; the ones not met are {join(missed)}.")
    else:
        verdict = (f"Fewer than half of the readings were in range, so these readings fall "
                   f"short of {consensus}; the ones not met are {join(missed)}.")
    return [verdict, f"Based on the average, the glucose management indicator (GMI) is "
                     f"{num(s['gmi_percent'])}%, an estimate from the readings, not a "
                     "laboratory result."]


def _episodes_text(e: Stats) -> str:
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


def narrative(s: Stats, period: str) -> str:
    """Coverage, average, spread, time in ranges, consensus verdict and GMI (only on
    enough data), consensus episodes."""
    bands = s["time_in_ranges_percent"]
    p = s["percentiles_mg_dl"]
    out = [
        _coverage_text(s, period),
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
    out += _verdict_text(s)
    e = s["episodes"]
    out.append(_episodes_text(e))
    lows = bool(e["low_level_1_below_70"] or e["low_level_2_below_54"])
    text = " ".join(out) + origin_note(s["days_with_multiple_origins"], "days")
    if s["control_assessment"] != "meets_targets" or lows:
        text += (" It may be worth going over these patterns with a healthcare professional, "
                 "who can put them in context.")
    return text


# --- the published shape of the statistics, and the drawing -----------------------------------
STATISTICS_SCHEMA = StatisticsSchema(
    name="glucoseStatistics",
    schema={
        "type": "object",
        "description": "BloodGlucoseRecord statistics (domain/records/glucose.py).",
        "required": [
            "reading_count", "days", "readings_per_day", "mean_mg_dl", "sd_mg_dl", "cv_percent",
            "min_mg_dl", "max_mg_dl", "percentiles_mg_dl", "time_in_ranges_percent",
            "below_70_percent", "above_180_percent", "gmi_percent", "gmi_insufficient_data",
            "episodes", "targets_met", "control_assessment", "control_assessment_insufficient_data",
            "day_basis", "sufficiency", "variability", "origins", "origin_by_day",
            "days_with_multiple_origins",
        ],
        "properties": {
            "reading_count": {"type": "integer", "minimum": 1},
            "days": {"type": "integer", "minimum": 1},
            "readings_per_day": {"type": "number"},
            "mean_mg_dl": {"type": "number"},
            "sd_mg_dl": {"type": ["number", "null"]},
            "cv_percent": {"type": ["number", "null"]},
            "min_mg_dl": {"type": "number"},
            "max_mg_dl": {"type": "number"},
            "percentiles_mg_dl": {
                "type": "object",
                "required": ["p5", "p25", "p50", "p75", "p95"],
                "properties": {
                    "p5": {"type": "number"},
                    "p25": {"type": "number"},
                    "p50": {"type": "number"},
                    "p75": {"type": "number"},
                    "p95": {"type": "number"},
                },
                "additionalProperties": False,
            },
            "time_in_ranges_percent": {
                "type": "object",
                "description": (
                    "Shares of readings per consensus band, rounded to add up to exactly 100."
                ),
                "required": [
                    "very_low_below_54", "low_54_69", "in_range_70_180", "high_181_250",
                    "very_high_above_250",
                ],
                "properties": {
                    "very_low_below_54": {"type": "number", "minimum": 0, "maximum": 100},
                    "low_54_69": {"type": "number", "minimum": 0, "maximum": 100},
                    "in_range_70_180": {"type": "number", "minimum": 0, "maximum": 100},
                    "high_181_250": {"type": "number", "minimum": 0, "maximum": 100},
                    "very_high_above_250": {"type": "number", "minimum": 0, "maximum": 100},
                },
                "additionalProperties": False,
            },
            "below_70_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "above_180_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "gmi_percent": {
                "type": "number",
                "description": (
                    "Glucose management indicator, % = 3.31 + 0.02392 x mean mg/dL (Bergenstal "
                    "2018; Battelino 2019). Always computed; flagged by gmi_insufficient_data. "
                    "Replaces the estimated A1c, which is not reported."
                ),
            },
            "gmi_insufficient_data": {
                "type": "boolean",
                "description": (
                    "True exactly when sufficiency.consensus_minimum_met is false: GMI is then not "
                    "a meaningful figure and the narrative does not quote it."
                ),
            },
            "episodes": {
                "type": "object",
                "description": (
                    "Consensus episodes (Battelino 2019): start when consecutive readings beyond "
                    "the limit cover >= 15 min (each reading stands for the sampling interval), "
                    "end when readings back within it cover >= 15 min; a gap > 2 x the interval "
                    "ends a run or episode. Level 2 is counted on its own limit (a level-2 episode "
                    "also lies inside a level-1 one). null for intermittent (meter) readings."
                ),
                "required": [
                    "low_level_1_below_70", "low_level_2_below_54", "high_level_1_above_180",
                    "high_level_2_above_250",
                ],
                "properties": {
                    "low_level_1_below_70": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "Level 1 low episodes, < 70 mg/dL.",
                    },
                    "low_level_2_below_54": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "Level 2 low episodes, < 54 mg/dL.",
                    },
                    "high_level_1_above_180": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "Level 1 high episodes, > 180 mg/dL.",
                    },
                    "high_level_2_above_250": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "Level 2 high episodes, > 250 mg/dL.",
                    },
                },
                "additionalProperties": False,
            },
            "control_assessment_insufficient_data": {
                "type": "boolean",
                "description": (
                    "True exactly when sufficiency.consensus_minimum_met is false: targets_met and "
                    "control_assessment are then kept as computed but no verdict is stated."
                ),
            },
            "day_basis": {
                "enum": ["utc", "local"],
                "description": (
                    "utc when every chosen reading is stamped Z or has no zone (offset 0): its "
                    "days, origin_by_day and days, are UTC days; else local."
                ),
            },
            "sufficiency": {
                "type": "object",
                "description": (
                    "What the figures rest on, against the consensus minimum of >= 14 days with >= "
                    "70 % sensor wear (Battelino 2019; Danne 2017)."
                ),
                "required": [
                    "sampling", "sampling_interval_minutes", "days_covered", "hours_covered",
                    "expected_readings", "received_readings", "wear_percent", "consensus_minimum",
                    "consensus_minimum_met",
                ],
                "properties": {
                    "sampling": {
                        "enum": ["continuous", "intermittent"],
                        "description": (
                            "continuous (a CGM) when the sampling interval is at most 15 min, else "
                            "intermittent (e.g. a meter, or a single reading)."
                        ),
                    },
                    "sampling_interval_minutes": {
                        "type": ["number", "null"],
                        "exclusiveMinimum": 0,
                        "description": (
                            "Median gap between consecutive chosen readings, minutes to 0.1; null "
                            "with one reading."
                        ),
                    },
                    "days_covered": {
                        "type": "number",
                        "minimum": 0,
                        "description": (
                            "Covered time in days to 0.1 (not calendar days): continuous, last - "
                            "first reading + one interval; intermittent, last - first."
                        ),
                    },
                    "hours_covered": {
                        "type": "number",
                        "minimum": 0,
                        "description": "The same covered time in hours, to 0.1.",
                    },
                    "expected_readings": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "description": (
                            "Readings the covered time holds at the sampling interval (at least "
                            "those received); null for intermittent readings."
                        ),
                    },
                    "received_readings": {
                        "type": "integer",
                        "minimum": 1,
                        "description": (
                            "Chosen readings (one per timestamp), equal to reading_count."
                        ),
                    },
                    "wear_percent": {
                        "type": ["number", "null"],
                        "minimum": 0,
                        "maximum": 100,
                        "description": (
                            "received / expected x 100, to 0.1; null for intermittent readings."
                        ),
                    },
                    "consensus_minimum": {
                        "type": "object",
                        "required": ["days", "wear_percent"],
                        "properties": {"days": {"const": 14}, "wear_percent": {"const": 70}},
                        "additionalProperties": False,
                    },
                    "consensus_minimum_met": {
                        "type": "boolean",
                        "description": (
                            "continuous sampling, days_covered >= 14 and wear_percent >= 70 "
                            "(rounded figures)."
                        ),
                    },
                },
                "additionalProperties": False,
            },
            "targets_met": {
                "type": "object",
                "required": [
                    "in_range_above_70_percent", "below_70_under_4_percent",
                    "below_54_under_1_percent", "above_180_under_25_percent",
                    "above_250_under_5_percent",
                ],
                "properties": {
                    "in_range_above_70_percent": {"type": "boolean"},
                    "below_70_under_4_percent": {"type": "boolean"},
                    "below_54_under_1_percent": {"type": "boolean"},
                    "above_180_under_25_percent": {"type": "boolean"},
                    "above_250_under_5_percent": {"type": "boolean"},
                },
                "additionalProperties": False,
            },
            "control_assessment": {
                "enum": ["meets_targets", "partially_meets_targets", "below_targets"],
            },
            "variability": {"enum": ["stable", "variable", None]},
            "origins": per_origin({"readings": COUNT, "mean_mg_dl": {"type": "number"}}),
            **ORIGIN_BY_DAY,
        },
        "additionalProperties": False,
    },
)
CHART = Chart(kind="glucose", heading="Blood glucose", unit="mg/dL")


SPEC = RecordTypeSpec(
    name="BloodGlucoseRecord",
    category="metabolic_diabetes",
    interval=False,
    schema_file="BloodGlucoseRecord.avsc",
    check=check_record,
    clean=check_chunk,
    statistics=compute_statistics,
    column_store=lambda: Readings(VALUE_KEY),
    column_statistics=statistics,
    narrative=narrative,
    instructions=INSTRUCTIONS,
    chart=CHART,
    statistics_schema=STATISTICS_SCHEMA,
    order=10,
)
