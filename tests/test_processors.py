"""Processor statistics against independent computations, origins, and the transform."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DomainConfig, TrainingOutput, ValidationReport
from etl_engine.domain.records import glucose as glucose_mod
from etl_engine.domain.records import heart_rate as hr_mod
from etl_engine.domain.stats.common import (
    local_date,
    percentages,
    percentile,
    sample_sd,
    slope_per_day,
)
from etl_engine.domain.stats.origins import (
    additive_total,
    choose_origin,
    clusters,
    union_length,
)
from etl_engine.domain.transform import (
    PROCESSORS,
    compute_statistics,
    training_category,
    transform,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "training-record.schema.json")
    .read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
MIDNIGHT = 1_709_528_400_000  # 2024-03-04T00:00 at -05:00 (05:00Z)
ZONE = "-05:00"
CFG = DomainConfig()
PHONE = "com.google.android.apps.fitness"
WATCH = "com.samsung.android.app.health"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

Rec = dict[str, Any]
_ids = iter(range(10**9))


# --- record builders -------------------------------------------------------------------------
def meta(origin: str = PHONE, rid: str | None = None) -> Rec:
    return {"id": rid or f"id-{next(_ids)}", "dataOriginPackageName": origin,
            "lastModifiedTimeEpochMillis": MIDNIGHT, "clientRecordId": None,
            "clientRecordVersion": 0, "device": None}


def instant(t: int, origin: str = PHONE, zone: str | None = ZONE, **fields: Any) -> Rec:
    return {"metadata": meta(origin), "timeEpochMillis": t, "zoneOffsetId": zone,
            "appRecordFetchTimeEpochMillis": MIDNIGHT, **fields}


def interval(s: int, e: int, origin: str = PHONE, zone: str | None = ZONE,
             **fields: Any) -> Rec:
    return {"metadata": meta(origin), "startTimeEpochMillis": s, "endTimeEpochMillis": e,
            "startZoneOffsetId": zone, "endZoneOffsetId": zone,
            "appRecordFetchTimeEpochMillis": MIDNIGHT, **fields}


def glucose(t: int, level: float, origin: str = PHONE, **kw: Any) -> Rec:
    return instant(t, origin, levelInMilligramsPerDeciliter=level,
                   specimenSource="INTERSTITIAL_FLUID", mealType="UNKNOWN",
                   relationToMeal="GENERAL", **kw)


def cgm(levels: Sequence[float], start: int = MIDNIGHT + 8 * HOUR, step: int = 5 * MIN,
        origin: str = PHONE) -> list[Rec]:
    return [glucose(start + i * step, v, origin) for i, v in enumerate(levels)]


def heart(s: int, bpms: Sequence[float], step: int = MIN, origin: str = WATCH) -> Rec:
    samples = [{"timeEpochMillis": s + i * step, "beatsPerMinute": b}
               for i, b in enumerate(bpms)]
    return interval(s, s + len(bpms) * step, origin, samples=samples)


def hrv(t: int, value: float, origin: str = WATCH, zone: str | None = ZONE) -> Rec:
    return instant(t, origin, zone, heartRateVariabilityRmssd=value)


def stage(a: int, b: int, kind: str) -> Rec:
    return {"startTimeEpochMillis": a, "endTimeEpochMillis": b, "stage": kind}


def session(s: int, plan: list[tuple[str, int]] | None, origin: str = WATCH,
            zone: str = ZONE) -> Rec:
    """A sleep session from ``(stage, minutes)`` steps; None plan: no stages, 8 h."""
    stages = []
    t = s
    for kind, minutes in plan or []:
        stages.append(stage(t, t + minutes * MIN, kind))
        t += minutes * MIN
    e = t if plan else s + 8 * HOUR
    return interval(s, e, origin, zone, title=None, notes=None, durationMillis=e - s,
                    stages=stages)


def steps(s: int, e: int, count: int, origin: str = PHONE) -> Rec:
    return interval(s, e, origin, count=count)


def kcal(s: int, e: int, energy: float, origin: str = WATCH) -> Rec:
    return interval(s, e, origin, energyInKilocalories=energy)


def report(rtype: str, records: list[Rec], **kw: Any) -> ValidationReport:
    return ValidationReport(record_type=rtype, total_records=len(records),
                            valid_records=records, quality_score=1.0,
                            components={"completeness": 1.0, "validity": 1.0,
                                        "consistency": 1.0}, **kw)


LINEAGE = pseudonymous(b"test-lineage-key", bucket="health-data", key="raw/x.avro",
                       record_type="StepsRecord", idempotency_key="idem-1", user_id="user-1",
                       message_id="msg-1", correlation_id="corr-1",
                       upload_timestamp_utc="2024-03-10T00:00:00+00:00")
PROCESSED = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


# --- shared maths ----------------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.floats(20, 600), min_size=2, max_size=200))
def test_percentile_matches_statistics_quantiles(values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    ordered = sorted(values)
    for p in (5, 25, 50, 75, 95):
        assert percentile(ordered, p) == pytest.approx(cuts[p - 1], rel=1e-9, abs=1e-9)


@SETTINGS
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=12))
def test_percentages_add_up_to_100(weights: list[float]) -> None:
    shares = percentages(weights)
    total = sum(weights)
    if total == 0:
        assert shares == [0.0] * len(weights)
        return
    assert round(sum(shares) * 10) == 1000
    for w, s in zip(weights, shares, strict=True):
        assert abs(s - w / total * 100) <= 0.1 + 1e-9


@SETTINGS
@given(st.lists(st.floats(1, 300), min_size=2, max_size=100))
def test_sample_sd_matches_statistics(values: list[float]) -> None:
    assert sample_sd(values) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-9)


def test_slope_matches_linear_regression() -> None:
    times = [MIDNIGHT + i * 7 * HOUR for i in range(10)]
    values = [40 + 0.3 * i + (i % 3) for i in range(10)]
    expected = statistics.linear_regression([(t - times[0]) / DAY for t in times], values).slope
    assert slope_per_day(times, values) == pytest.approx(expected)
    assert slope_per_day([MIDNIGHT, MIDNIGHT], [1.0, 2.0]) is None


def test_local_date_uses_offset() -> None:
    t = MIDNIGHT - MIN  # 23:59 local on March 3 = 04:59Z on March 4
    assert local_date(t, -5 * HOUR) == date(2024, 3, 3)
    assert local_date(t, 0) == date(2024, 3, 4)


# --- origins ---------------------------------------------------------------------------------
def test_choose_origin_priority_then_coverage_then_name() -> None:
    cov = {"b.app": 10.0, "a.app": 10.0, "c.app": 5.0}
    assert choose_origin(cov, ("x.app", "c.app", "b.app")) == "c.app"
    assert choose_origin(cov) == "a.app"  # tie on coverage -> smaller name
    assert choose_origin({"a.app": 1.0, "b.app": 2.0}) == "b.app"


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=20))
def test_union_length_matches_brute_force(raw: list[tuple[int, int]]) -> None:
    intervals = [(s, s + n) for s, n in raw]
    covered = {x for s, e in intervals for x in range(s, e)}
    assert union_length(intervals) == len(covered)


def test_additive_total_counts_overlap_once() -> None:
    assert additive_total([(0, 10, 100, "a"), (10, 20, 50, "b")]) == 150  # touching
    assert additive_total([(0, 10, 100, "a"), (0, 10, 100, "b")]) == 100  # duplicate
    assert additive_total([(0, 20, 200, "a"), (5, 10, 80, "b")]) == 200  # nested
    assert additive_total([(0, 10, 100, "a"), (5, 15, 100, "b")]) == 150  # half new
    assert additive_total([(3, 3, 7, "a"), (3, 3, 7, "b")]) == 7  # repeated instant


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50), st.integers(0, 500)),
                min_size=1, max_size=15))
def test_additive_total_duplicates_do_not_add(raw: list[tuple[int, int, int]]) -> None:
    items = [(s, s + n, float(v), f"r{i}") for i, (s, n, v) in enumerate(raw)]
    once = additive_total(items)
    doubled = additive_total(items + [(s, e, v, i + "x") for s, e, v, i in items])
    assert doubled == pytest.approx(once)
    assert once <= sum(v for *_, v, _ in items) + 1e-6


def test_clusters_group_overlaps_and_short_gaps() -> None:
    a = session(MIDNIGHT, None)
    b = session(MIDNIGHT + HOUR, None, origin=PHONE)  # overlaps a
    c = session(MIDNIGHT + 9 * HOUR + 30 * MIN, None)  # 30 min after b ends
    d = session(MIDNIGHT + 2 * DAY, None)
    assert [len(g) for g in clusters([d, c, b, a], max_gap_ms=HOUR)] == [3, 1]
    assert [len(g) for g in clusters([d, c, b, a])] == [2, 1, 1]


# --- glucose ---------------------------------------------------------------------------------
def test_glucose_statistics_match_independent_computation() -> None:
    rng = random.Random(7)
    levels = [round(rng.uniform(45, 320), 1) for _ in range(300)]
    stats = compute_statistics("BloodGlucoseRecord", cgm(levels), CFG)
    m = statistics.fmean(levels)
    sd = statistics.stdev(levels)
    cuts = statistics.quantiles(levels, n=100, method="inclusive")
    assert stats["reading_count"] == 300
    assert stats["mean_mg_dl"] == round(m, 1)
    assert stats["sd_mg_dl"] == round(sd, 1)
    assert stats["cv_percent"] == round(sd / m * 100, 1)
    assert stats["min_mg_dl"] == min(levels) and stats["max_mg_dl"] == max(levels)
    for p in (5, 25, 50, 75, 95):
        assert stats["percentiles_mg_dl"][f"p{p}"] == pytest.approx(cuts[p - 1], abs=0.051)
    assert stats["gmi_percent"] == round(3.31 + 0.02392 * m, 1)
    assert "estimated_a1c_percent" not in stats  # GMI replaces it
    bands = stats["time_in_ranges_percent"]
    n = len(levels)
    assert bands["in_range_70_180"] == pytest.approx(
        100 * sum(70 <= v <= 180 for v in levels) / n, abs=0.1)
    assert bands["very_low_below_54"] == pytest.approx(
        100 * sum(v < 54 for v in levels) / n, abs=0.1)
    assert bands["very_high_above_250"] == pytest.approx(
        100 * sum(v > 250 for v in levels) / n, abs=0.1)


@pytest.mark.parametrize(
    ("level", "band"),
    [(53.9, 0), (54.0, 1), (69.9, 1), (70.0, 2), (180.0, 2), (180.1, 3), (250.0, 3),
     (250.1, 4)],
)
def test_glucose_band_boundaries(level: float, band: int) -> None:
    assert glucose_mod.band_index(level) == band


@SETTINGS
@given(st.lists(st.floats(20, 600), min_size=1, max_size=150))
def test_glucose_properties(levels: list[float]) -> None:
    stats = compute_statistics("BloodGlucoseRecord", cgm(levels), CFG)
    assert round(sum(stats["time_in_ranges_percent"].values()) * 10) == 1000
    assert stats["min_mg_dl"] <= stats["mean_mg_dl"] <= stats["max_mg_dl"]
    p = stats["percentiles_mg_dl"]
    assert p["p5"] <= p["p25"] <= p["p50"] <= p["p75"] <= p["p95"]
    e = stats["episodes"]
    if len(levels) > 1:  # 5-minute CGM: every reading stands for 5 min, 3 make an episode
        assert e["low_level_1_below_70"] or not e["low_level_2_below_54"]  # level 2 inside 1
        assert e["high_level_1_above_180"] or not e["high_level_2_above_250"]
        assert 3 * (e["low_level_1_below_70"] + e["high_level_1_above_180"]) <= len(levels)
    json.dumps(stats, allow_nan=False)


def test_hypo_episodes_need_15_minutes() -> None:
    # consensus: 3 readings at 5 min cover 15 min; 3 in-range readings end an episode
    episode = [100, 100, 100, 65, 64, 63, 100, 100, 100]
    short = [100, 65, 64, 100, 100, 100]  # 10 min
    stats = compute_statistics("BloodGlucoseRecord", cgm(episode + short + episode), CFG)
    assert stats["episodes"]["low_level_1_below_70"] == 2
    assert stats["episodes"]["low_level_2_below_54"] == 0
    severe = [100, 50, 52, 50, 51, 60, 100, 100, 100]
    stats = compute_statistics("BloodGlucoseRecord", cgm(severe), CFG)
    assert stats["episodes"]["low_level_1_below_70"] == 1
    assert stats["episodes"]["low_level_2_below_54"] == 1


def test_hypo_episode_broken_by_data_gap() -> None:
    # 5-min readings, then a 40-minute gap: a gap, not 40 minutes of low glucose
    levels = [100.0] * 6 + [60.0, 60.0] + [60.0, 60.0] + [100.0] * 6
    times = [MIDNIGHT + i * 5 * MIN for i in range(8)]
    times += [times[-1] + 40 * MIN + i * 5 * MIN for i in range(8)]
    records = [glucose(t, v) for t, v in zip(times, levels, strict=True)]
    stats = compute_statistics("BloodGlucoseRecord", records, CFG)
    assert stats["episodes"]["low_level_1_below_70"] == 0
    segs = glucose_mod.segments(glucose_mod.gaps_of(times), 5.0)
    assert segs == [(0, 8), (8, 16)]
    assert glucose_mod.count_episodes(segs, levels, 5.0, 70, below=True) == 0
    assert glucose_mod.count_episodes([(0, 16)], levels, 5.0, 70, below=True) == 1


def test_glucose_assessment_and_variability() -> None:
    good = compute_statistics("BloodGlucoseRecord", cgm([110, 120, 130, 140] * 10), CFG)
    assert good["control_assessment"] == "meets_targets"
    assert all(good["targets_met"].values())
    assert good["variability"] == "stable"
    partial = compute_statistics("BloodGlucoseRecord", cgm([120] * 6 + [200] * 4), CFG)
    assert partial["control_assessment"] == "partially_meets_targets"
    assert partial["targets_met"]["above_180_under_25_percent"] is False
    poor = compute_statistics("BloodGlucoseRecord", cgm([60, 300, 280, 120, 50]), CFG)
    assert poor["control_assessment"] == "below_targets"
    assert poor["variability"] == "variable"
    single = compute_statistics("BloodGlucoseRecord", cgm([100]), CFG)
    assert single["sd_mg_dl"] is None and single["variability"] is None


def test_glucose_one_origin_per_day() -> None:
    sensor = cgm([100.0] * 48, origin="com.dexcom.g7")
    meter = [glucose(MIDNIGHT + 9 * HOUR + i * HOUR, 200.0, "com.meter") for i in range(3)]
    stats = compute_statistics("BloodGlucoseRecord", sensor + meter, CFG)
    assert stats["reading_count"] == 48 and stats["mean_mg_dl"] == 100
    assert stats["origins"] == {"com.dexcom.g7": {"readings": 48, "mean_mg_dl": 100.0},
                                "com.meter": {"readings": 3, "mean_mg_dl": 200.0}}
    assert stats["days_with_multiple_origins"] == 1
    prefer = DomainConfig(origin_priority=("com.meter",))
    stats = compute_statistics("BloodGlucoseRecord", sensor + meter, prefer)
    assert stats["reading_count"] == 3 and stats["mean_mg_dl"] == 200


def test_glucose_same_timestamp_counted_once() -> None:
    records = cgm([100, 110, 120]) + cgm([100])
    assert compute_statistics("BloodGlucoseRecord", records, CFG)["reading_count"] == 3


# --- heart rate ------------------------------------------------------------------------------
@pytest.mark.parametrize(("bpm", "zone"), [(94, 0), (95, 1), (113, 1), (114, 2), (132, 2),
                                           (133, 3), (152, 4), (170, 4), (171, 5), (220, 5)])
def test_heart_rate_zone_boundaries(bpm: int, zone: int) -> None:
    assert hr_mod.zone_index(bpm) == zone


def test_heart_rate_statistics_match_independent_computation() -> None:
    rng = random.Random(3)
    bpms = [rng.randint(45, 185) for _ in range(500)]
    stats = compute_statistics("HeartRateRecord", [heart(MIDNIGHT + HOUR, bpms)], CFG)
    assert stats["sample_count"] == 500
    assert stats["mean_bpm"] == round(statistics.fmean(bpms), 1)
    assert stats["min_bpm"] == min(bpms) and stats["max_bpm"] == max(bpms)
    assert stats["median_bpm"] == statistics.median(bpms)
    p5 = statistics.quantiles(bpms, n=100, method="inclusive")[4]
    assert stats["lowest_sustained_bpm"] == pytest.approx(p5, abs=0.051)
    assert stats["lowest_sustained_method"] == "p5_of_all_samples_sleep_included"
    assert stats["span_minutes"] == 499
    assert stats["sufficiency"] == {"days_covered": 1, "hours_covered": 8.3,
                                    "samples_per_hour": 60.0}
    # even 1-minute spacing: time-weighted shares equal sample shares
    share_z5 = 100 * sum(b >= 171 for b in bpms) / 500
    assert stats["time_in_zones_percent"]["zone_5"] == pytest.approx(share_z5, abs=0.1)


def test_heart_rate_time_weighting_caps_gaps() -> None:
    # 3 samples: 60 bpm then 100 bpm after 1 min, then 180 bpm two hours later
    rec = interval(MIDNIGHT, MIDNIGHT + 3 * HOUR, WATCH, samples=[
        {"timeEpochMillis": MIDNIGHT, "beatsPerMinute": 60},
        {"timeEpochMillis": MIDNIGHT + MIN, "beatsPerMinute": 100},
        {"timeEpochMillis": MIDNIGHT + 2 * HOUR, "beatsPerMinute": 180}])
    stats = compute_statistics("HeartRateRecord", [rec], CFG)
    # weights: 1 min, capped 5 min, last repeats the capped 5 min -> 1:5:5
    assert stats["time_in_zones_minutes"]["below_zone_1"] == 1
    assert stats["time_in_zones_minutes"]["zone_1"] == 5
    assert stats["time_in_zones_minutes"]["zone_5"] == 5
    assert stats["time_in_zones_percent"]["zone_1"] == pytest.approx(100 * 5 / 11, abs=0.1)


@SETTINGS
@given(st.lists(st.integers(25, 250), min_size=1, max_size=200),
       st.integers(1, 600))
def test_heart_rate_properties(bpms: list[int], step_s: int) -> None:
    stats = compute_statistics("HeartRateRecord", [heart(MIDNIGHT, bpms, step_s * 1000)], CFG)
    assert round(sum(stats["time_in_zones_percent"].values()) * 10) == 1000
    assert stats["min_bpm"] <= stats["mean_bpm"] <= stats["max_bpm"]
    assert stats["min_bpm"] <= stats["lowest_sustained_bpm"] <= stats["median_bpm"]


def test_heart_rate_overlapping_origins_not_combined() -> None:
    watch = heart(MIDNIGHT + HOUR, [70] * 120, origin=WATCH)
    strap = heart(MIDNIGHT + HOUR, [80] * 30, origin="com.polar.beat")
    stats = compute_statistics("HeartRateRecord", [watch, strap], CFG)
    assert stats["sample_count"] == 120 and stats["mean_bpm"] == 70
    assert stats["origins"]["com.polar.beat"] == {"samples": 30, "mean_bpm": 80.0}
    pri = DomainConfig(origin_priority=("com.polar.beat",))
    assert compute_statistics("HeartRateRecord", [watch, strap], pri)["mean_bpm"] == 80


def test_heart_rate_overlapping_samples_in_one_origin_counted_once() -> None:
    a = heart(MIDNIGHT, [60, 61, 62, 63])
    b = heart(MIDNIGHT + 2 * MIN, [62, 63, 64, 65])  # first two samples repeat a's last two
    stats = compute_statistics("HeartRateRecord", [b, a], CFG)
    assert stats["sample_count"] == 6
    assert stats["mean_bpm"] == round(statistics.fmean([60, 61, 62, 63, 64, 65]), 1)


# --- HRV -------------------------------------------------------------------------------------
def test_hrv_statistics_and_trend() -> None:
    times = [MIDNIGHT + i * 12 * HOUR + 2 * HOUR for i in range(10)]  # 02:00 and 14:00 local
    values = [50.0 - i * 1.5 + (3 if i % 2 else 0) for i in range(10)]
    stats = compute_statistics("HeartRateVariabilityRmssdRecord",
                               [hrv(t, v) for t, v in zip(times, values, strict=True)], CFG)
    assert stats["mean_ms"] == round(statistics.fmean(values), 1)
    assert stats["median_ms"] == round(statistics.median(values), 1)
    assert stats["sd_ms"] == round(statistics.stdev(values), 1)
    slope = statistics.linear_regression([(t - times[0]) / DAY for t in times], values).slope
    assert stats["trend_ms_per_day"] == round(slope, 2)
    assert stats["trend_direction"] == "falling"
    # 12 h apart: every reading is a night of its own, the trend the same as per reading
    assert stats["nights"] == 10 and stats["trend_basis"] == "nightly_means"
    assert [n["night_of"] for n in stats["nights_detail"][:3]] == [
        "2024-03-03", "2024-03-04", "2024-03-04"]
    assert stats["sufficiency"] == {"nights_covered": 6, "hours_covered": 0.0,
                                    "readings_per_hour": None}


def test_hrv_night_uses_local_time() -> None:
    t = MIDNIGHT + 8 * HOUR  # 08:00 at -05:00, 13:00 UTC
    local = compute_statistics("HeartRateVariabilityRmssdRecord", [hrv(t, 40)], CFG)
    assert local["nights_detail"][0]["night_of"] == "2024-03-03"
    assert local["nights_detail"][0]["first_reading_local"] == "08:00"
    utc = compute_statistics("HeartRateVariabilityRmssdRecord", [hrv(t, 40, zone="Z")], CFG)
    assert utc["nights_detail"][0]["night_of"] == "2024-03-04"
    assert utc["period_first_day"] == utc["period_last_day"] == "2024-03-04"


def test_hrv_trend_needs_a_day_and_stable_band() -> None:
    short = [hrv(MIDNIGHT + i * HOUR, 40 + i) for i in range(5)]
    stats = compute_statistics("HeartRateVariabilityRmssdRecord", short, CFG)
    assert stats["trend_ms_per_day"] is None and stats["trend_direction"] is None
    flat = [hrv(MIDNIGHT + i * DAY, 40 + (0.5 if i % 2 else 0)) for i in range(6)]
    assert compute_statistics("HeartRateVariabilityRmssdRecord", flat,
                              CFG)["trend_direction"] == "stable"


# --- sleep -----------------------------------------------------------------------------------
NIGHT_PLAN = [("AWAKE", 10), ("LIGHT", 60), ("DEEP", 50), ("AWAKE", 5), ("AWAKE", 5),
              ("LIGHT", 40), ("REM", 30), ("OUT_OF_BED", 10), ("LIGHT", 120), ("REM", 40),
              ("AWAKE", 10)]
BED = MIDNIGHT - 90 * MIN  # 22:30 local on March 3


def test_sleep_single_night_figures() -> None:
    stats = compute_statistics("SleepSessionRecord", [session(BED, NIGHT_PLAN)], CFG)
    night = stats["nights_detail"][0]
    in_bed = sum(m for _, m in NIGHT_PLAN)
    asleep = sum(m for k, m in NIGHT_PLAN if k in {"LIGHT", "DEEP", "REM"})
    assert stats["nights"] == 1 and stats["naps"] == 0
    assert night["night_of"] == "2024-03-03" and night["kind"] == "night"
    assert night["time_in_bed_minutes"] == in_bed
    assert night["total_sleep_minutes"] == asleep
    assert night["efficiency_percent"] == round(asleep / in_bed * 100, 1)
    assert night["stage_minutes"]["light"] == 220 and night["stage_minutes"]["rem"] == 70
    assert night["awakenings"] == 2  # the leading and trailing wake do not count
    assert night["brief_awakenings"] == 0  # AWAKE 5 + AWAKE 5 is one 10-minute bout
    assert night["waso_minutes"] == 30  # after the first sleep stage, trailing wake included
    assert night["bedtime_local"] == "22:30" and night["wake_time_local"] == "04:50"
    assert round(sum(night["stage_percent_of_time_in_bed"].values()) * 10) == 1000
    assert round(sum(night["stage_percent_of_sleep"].values()) * 10) == 1000
    assert stats["bedtime_sd_minutes"] is None


def test_sleep_without_stages() -> None:
    stats = compute_statistics("SleepSessionRecord", [session(BED, None)], CFG)
    night = stats["nights_detail"][0]
    assert night["total_sleep_minutes"] == night["time_in_bed_minutes"] == 480
    assert night["efficiency_percent"] is None and not night["stages_available"]
    assert night["stage_percent_of_time_in_bed"]["unrecorded"] == 100
    assert night["stage_percent_of_sleep"] is None and night["waso_minutes"] is None


def test_sleep_two_devices_one_night() -> None:
    watch = session(BED, NIGHT_PLAN, origin=WATCH)
    ring = session(BED + 20 * MIN, [("LIGHT", 300)], origin="com.ouraring.oura")
    stats = compute_statistics("SleepSessionRecord", [ring, watch], CFG)
    assert stats["nights"] == 1 and stats["nights_with_multiple_origins"] == 1
    assert stats["nights_detail"][0]["origin"] == WATCH  # covers more of the night
    assert stats["average_time_in_bed_minutes"] == 380  # not 380 + 300
    pri = DomainConfig(origin_priority=("com.ouraring.oura",))
    stats = compute_statistics("SleepSessionRecord", [ring, watch], pri)
    assert stats["nights_detail"][0]["origin"] == "com.ouraring.oura"
    assert stats["average_total_sleep_minutes"] == 300
    assert set(stats["origins"]) == {WATCH, "com.ouraring.oura"}


def test_sleep_same_origin_overlap_keeps_longest() -> None:
    long = session(BED, [("LIGHT", 400)])
    dup = session(BED + HOUR, [("DEEP", 60)])
    stats = compute_statistics("SleepSessionRecord", [dup, long], CFG)
    assert stats["nights_detail"][0]["sessions"] == 1
    assert stats["average_total_sleep_minutes"] == 400


def test_sleep_split_night_counts_extra_awakening() -> None:
    first = session(BED, [("LIGHT", 180)])
    second = session(BED + 200 * MIN, [("DEEP", 200)])
    stats = compute_statistics("SleepSessionRecord", [first, second], CFG)
    night = stats["nights_detail"][0]
    assert stats["nights"] == 1 and night["sessions"] == 2 and night["awakenings"] == 1
    assert night["time_in_bed_minutes"] == 380


def test_sleep_bedtime_consistency_across_midnight() -> None:
    nights = [session(MIDNIGHT - 30 * MIN, [("LIGHT", 420)]),            # 23:30
              session(MIDNIGHT + DAY + 30 * MIN, [("LIGHT", 420)])]      # 00:30
    stats = compute_statistics("SleepSessionRecord", nights, CFG)
    assert stats["nights"] == 2
    assert stats["bedtime_sd_minutes"] == round(statistics.stdev([690, 750]), 1)
    assert stats["average_bedtime_local"] == "00:00"
    assert [n["night_of"] for n in stats["nights_detail"]] == ["2024-03-03", "2024-03-04"]


def test_sleep_naps_kept_out_of_averages() -> None:
    night = session(BED, [("LIGHT", 420)])
    nap = session(MIDNIGHT + 15 * HOUR, [("LIGHT", 30)])
    stats = compute_statistics("SleepSessionRecord", [night, nap], CFG)
    assert stats["nights"] == 1 and stats["naps"] == 1 and stats["nap_minutes_total"] == 30
    assert stats["average_time_in_bed_minutes"] == 420
    only_nap = compute_statistics("SleepSessionRecord", [nap], CFG)
    assert only_nap["averages_over"] == "naps" and only_nap["average_time_in_bed_minutes"] == 30


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["AWAKE", "LIGHT", "DEEP", "REM", "SLEEPING",
                                           "OUT_OF_BED", "UNKNOWN"]), st.integers(1, 90)),
                min_size=1, max_size=20))
def test_sleep_properties(plan: list[tuple[str, int]]) -> None:
    stats = compute_statistics("SleepSessionRecord", [session(BED, plan)], CFG)
    night = stats["nights_detail"][0]
    assert round(sum(night["stage_percent_of_time_in_bed"].values()) * 10) == 1000
    assert round(sum(night["stage_percent_of_sleep"].values()) * 10) in (
        0 if night["total_sleep_minutes"] == 0 else 1000,)
    assert night["total_sleep_minutes"] <= night["time_in_bed_minutes"]
    assert 0 <= night["efficiency_percent"] <= 100
    assert night["awakenings"] + night["brief_awakenings"] <= sum(
        1 for k, _ in plan if k in {"AWAKE", "OUT_OF_BED"})


# --- steps and calories ----------------------------------------------------------------------
def test_steps_daily_totals_by_local_date() -> None:
    late = steps(MIDNIGHT - HOUR, MIDNIGHT - 50 * MIN, 500)  # 23:00 local, March 4 in UTC
    records = [late,
               steps(MIDNIGHT + 9 * HOUR, MIDNIGHT + 10 * HOUR, 6000),
               steps(MIDNIGHT + 17 * HOUR, MIDNIGHT + 18 * HOUR, 5000),
               steps(MIDNIGHT + DAY + 9 * HOUR, MIDNIGHT + DAY + 10 * HOUR, 4000)]
    stats = compute_statistics("StepsRecord", records, CFG)
    assert stats["daily_steps"] == {"2024-03-03": 500, "2024-03-04": 11000, "2024-03-05": 4000}
    assert stats["total_steps"] == 15500
    assert stats["average_daily_steps"] == round(15500 / 3, 1)
    assert stats["days_at_or_above_10000"] == 1 and stats["days_at_or_above_7000"] == 1
    assert stats["sedentary_days_below_5000"] == 2
    assert stats["best_day"] == "2024-03-04"


def test_steps_overlapping_origins_not_added() -> None:
    day = MIDNIGHT + 8 * HOUR
    phone = [steps(day + i * HOUR, day + (i + 1) * HOUR, 800, PHONE) for i in range(10)]
    watch = [steps(day + i * HOUR, day + (i + 1) * HOUR, 1000, WATCH) for i in range(12)]
    stats = compute_statistics("StepsRecord", phone + watch, CFG)
    assert stats["daily_steps"] == {"2024-03-04": 12000}  # watch covers more time
    assert stats["origin_by_day"] == {"2024-03-04": WATCH}
    assert stats["origins"][PHONE]["total_steps"] == 8000
    assert stats["days_with_multiple_origins"] == 1
    stats = compute_statistics("StepsRecord", phone + watch,
                               DomainConfig(origin_priority=(PHONE,)))
    assert stats["daily_steps"] == {"2024-03-04": 8000}


def test_steps_duplicates_within_origin_counted_once() -> None:
    a = steps(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 1000)
    b = steps(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 1000)  # same interval, new id
    assert compute_statistics("StepsRecord", [a, b], CFG)["total_steps"] == 1000


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 3000)), min_size=1, max_size=24),
       st.lists(st.tuples(st.integers(0, 23), st.integers(0, 3000)), min_size=1, max_size=24))
def test_steps_two_origins_never_double_counted(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    def build(items: list[tuple[int, int]], origin: str) -> list[Rec]:
        seen: dict[int, int] = {}
        for hour, count in items:
            seen.setdefault(hour, count)
        return [steps(MIDNIGHT + h * HOUR, MIDNIGHT + (h + 1) * HOUR, c, origin)
                for h, c in seen.items()]

    ra, rb = build(a, PHONE), build(b, WATCH)
    stats = compute_statistics("StepsRecord", ra + rb, CFG)
    total_a = sum(r["count"] for r in ra)
    total_b = sum(r["count"] for r in rb)
    assert stats["total_steps"] in (total_a, total_b)
    assert stats["origins"][PHONE]["total_steps"] == total_a
    assert stats["origins"][WATCH]["total_steps"] == total_b


def test_calories_daily_totals() -> None:
    records = [kcal(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 120.25),
               kcal(MIDNIGHT + 5 * HOUR, MIDNIGHT + 6 * HOUR, 80.5),
               kcal(MIDNIGHT + DAY + HOUR, MIDNIGHT + DAY + 2 * HOUR, 300.0),
               kcal(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 999.0, PHONE)]
    stats = compute_statistics("ActiveCaloriesBurnedRecord", records, CFG)
    assert stats["daily_kcal"] == {"2024-03-04": 200.8, "2024-03-05": 300.0}
    assert stats["origin_by_day"]["2024-03-04"] == WATCH  # 2 h covered against 1 h
    assert stats["total_kcal"] == 500.8
    assert stats["average_kcal_per_day"] == 250.4
    assert stats["origins"][PHONE]["total_kcal"] == 999.0


# --- generic ---------------------------------------------------------------------------------
def test_generic_summary_for_unknown_type() -> None:
    weights = [70.1, 70.5, 69.8, 71.0]
    records = [instant(MIDNIGHT + i * DAY + 7 * HOUR, weightInKilograms=w, flag=True)
               for i, w in enumerate(weights)]
    stats = compute_statistics("WeightRecord", records, CFG)
    assert stats["record_count"] == 4 and stats["days"] == 4
    assert stats["span_hours"] == 72
    assert stats["fields"] == {"weightInKilograms": {
        "count": 4, "min": 69.8, "max": 71.0, "mean": round(statistics.fmean(weights), 2)}}
    assert stats["origins"] == {PHONE: {"records": 4}}


# --- transform -------------------------------------------------------------------------------
SAMPLES: dict[str, list[Rec]] = {
    "BloodGlucoseRecord": cgm([95, 110, 150, 190, 65, 60, 58, 57, 100]),
    "HeartRateRecord": [heart(MIDNIGHT + 6 * HOUR, [55, 60, 120, 150, 172, 90])],
    "HeartRateVariabilityRmssdRecord": [hrv(MIDNIGHT + i * 10 * HOUR, 40 + i) for i in range(6)],
    "SleepSessionRecord": [session(BED, NIGHT_PLAN), session(BED + DAY, None)],
    "StepsRecord": [steps(MIDNIGHT + 9 * HOUR, MIDNIGHT + 10 * HOUR, 7200)],
    "ActiveCaloriesBurnedRecord": [kcal(MIDNIGHT + 9 * HOUR, MIDNIGHT + 10 * HOUR, 250.0)],
    "WeightRecord": [instant(MIDNIGHT + HOUR, weightInKilograms=70.0)],
}


@pytest.mark.parametrize("rtype", sorted(SAMPLES))
def test_transform_output_matches_schema(rtype: str) -> None:
    out = transform(report(rtype, SAMPLES[rtype]), LINEAGE, config=CFG, processed_at=PROCESSED)
    assert isinstance(out, TrainingOutput)
    record = json.loads(json.dumps(out.record, allow_nan=False))
    errors = sorted(VALIDATOR.iter_errors(record), key=str)
    assert not errors, [f"{e.message} at {list(e.path)}" for e in errors[:5]]
    md = record["metadata"]
    assert out.category == md["training_category"] == training_category(rtype)
    assert md["processed_at"] == "2024-03-10T12:00:00+00:00"
    assert md["record_type"] == rtype
    assert (md["source_id"], md["record_id"], md["subject_id"]) == (
        LINEAGE.source_id, LINEAGE.record_id, LINEAGE.subject_id)
    assert not {"bucket", "key", "message_id", "correlation_id", "idempotency_key",
                "upload_timestamp_utc", "lineage"} & set(md)
    assert md["processor_version"] == CFG.processor_version
    assert md["period_date"] == out.period_date.isoformat()


def test_transform_period_date_is_local_date_of_earliest_record() -> None:
    records = [steps(MIDNIGHT + DAY, MIDNIGHT + DAY + HOUR, 100),
               steps(MIDNIGHT - 2 * HOUR, MIDNIGHT - HOUR, 100)]  # 22:00 local on March 3
    out = transform(report("StepsRecord", records), LINEAGE, config=CFG, processed_at=PROCESSED)
    assert out.period_date == date(2024, 3, 3)
    md = out.record["metadata"]
    assert md["period_start"] == "2024-03-04T03:00:00.000Z"
    assert md["period_end"] == "2024-03-05T06:00:00.000Z"
    assert "between March 3 and March 5, 2024" in out.record["instruction"]


def test_transform_lineage_quality_and_warnings() -> None:
    records = [steps(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 100, PHONE),
               steps(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, 100, WATCH)]
    rep = report("StepsRecord", records, issue_counts={"missing_zone_offset": 2,
                                                       "steps_out_of_range": 1})
    rep.total_records = 3
    rep.quality_score = 0.81234
    md = transform(rep, LINEAGE, config=CFG, processed_at=PROCESSED).record["metadata"]
    assert md["quality_score"] == 0.8123
    assert md["issue_counts"] == {"missing_zone_offset": 2, "steps_out_of_range": 1}
    assert md["warnings"] == ["records_excluded", "zone_offset_assumed_utc",
                              "multiple_data_origins"]
    assert md["total_records"] == 3 and md["valid_records"] == 2


def test_validate_then_transform_end_to_end() -> None:
    from etl_engine.domain.model import DecodedFile
    from etl_engine.domain.validation import validate

    records = cgm([100, 120, 140, 900, 160])
    decoded = DecodedFile("BloodGlucoseRecord", records, "null", "BloodGlucoseRecord", 0)
    rep = validate(decoded, now_ms=MIDNIGHT + 2 * DAY, config=CFG)
    assert rep.passed and len(rep.valid_records) == 4
    out = transform(rep, LINEAGE, config=CFG, processed_at=PROCESSED)
    md = out.record["metadata"]
    assert md["issue_counts"] == {"glucose_out_of_range": 1}
    assert md["statistics"]["reading_count"] == 4 and md["statistics"]["max_mg_dl"] == 160
    assert md["warnings"] == ["records_excluded"]
    assert not list(VALIDATOR.iter_errors(json.loads(json.dumps(out.record))))


def test_transform_naive_processed_at_is_utc() -> None:
    out = transform(report("StepsRecord", SAMPLES["StepsRecord"]), LINEAGE, config=CFG,
                    processed_at=datetime(2024, 3, 10, 12, 0))
    assert out.record["metadata"]["processed_at"] == "2024-03-10T12:00:00+00:00"


def test_transform_requires_valid_records() -> None:
    with pytest.raises(ValueError):
        transform(report("StepsRecord", []), LINEAGE, config=CFG, processed_at=PROCESSED)


@pytest.mark.parametrize("rtype", sorted(SAMPLES))
def test_transform_is_deterministic_and_order_independent(rtype: str) -> None:
    records = SAMPLES[rtype]
    first = transform(report(rtype, records), LINEAGE, config=CFG, processed_at=PROCESSED)
    again = transform(report(rtype, list(records)), LINEAGE, config=CFG, processed_at=PROCESSED)
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    other = transform(report(rtype, shuffled), LINEAGE, config=CFG, processed_at=PROCESSED)
    assert first == again
    assert json.dumps(first.record, sort_keys=True) == json.dumps(other.record, sort_keys=True)


def test_training_categories_agree_with_record_types() -> None:
    from etl_engine.domain.record_types import TRAINING_CATEGORY

    assert {rt: training_category(rt) for rt in TRAINING_CATEGORY} == TRAINING_CATEGORY
    assert set(PROCESSORS) == set(TRAINING_CATEGORY)
    assert training_category("WeightRecord") == "general_health"
    assert training_category("AvroStepsRecord") == "physical_activity"


def test_statistics_are_json_safe_for_extreme_but_valid_values() -> None:
    records = [*cgm([20.0, 600.0]), glucose(MIDNIGHT + DAY, 600.0)]
    stats = compute_statistics("BloodGlucoseRecord", records, CFG)
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in _walk(stats))
    json.dumps(stats, allow_nan=False)


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


@pytest.mark.parametrize("rest_share", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_heart_rate_zone_ms_equals_summed_sample_weights(rest_share: float) -> None:
    """Both ways of summing time in zones (few / many samples outside the main zone)
    equal summing ``sample_weights`` per zone."""
    rng = random.Random(int(rest_share * 100))
    for n in [1, 2, 3, 4, 5] * 20 + [50, 400] * 20:
        t = MIDNIGHT
        times = []
        for _ in range(n):
            t += rng.choice([1_000, 60_000, 299_999, 300_000, 300_001, 3 * HOUR])
            times.append(t)
        zones = bytes(0 if rng.random() < rest_share else rng.randrange(1, 6)
                      for _ in range(n))
        counts = [zones.count(z) for z in range(6)]
        want = [0] * 6
        for z, w in zip(zones, hr_mod.sample_weights(times), strict=True):
            want[z] += w
        assert hr_mod._zone_ms(times, zones, counts) == want, (n, rest_share)
