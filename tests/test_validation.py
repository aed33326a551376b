"""Validation rules: each with a passing and a failing case; the score formula; speed."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from etl_engine.domain.model import DecodedFile, DomainConfig
from etl_engine.domain.validation import (
    IN_PROGRESS_KEY,
    MIN_TIMESTAMP_MS,
    ValidationOptions,
    canonical_record_type,
    parse_zone_offset,
    validate,
    zone_offset_seconds,
)

NOW = 1_710_000_000_000  # 2024-03-09T16:00:00Z
T0 = NOW - 10 * 86_400_000
MIN = 60_000
HOUR = 3_600_000
CFG = DomainConfig()

Rec = dict[str, Any]


def meta(rid: str, origin: str = "com.example.app") -> Rec:
    return {
        "id": rid,
        "dataOriginPackageName": origin,
        "lastModifiedTimeEpochMillis": T0,
        "clientRecordId": None,
        "clientRecordVersion": 0,
        "device": None,
    }


def instant(rid: str, t: int = T0, zone: str | None = "-05:00", **fields: Any) -> Rec:
    return {"metadata": meta(rid), "timeEpochMillis": t, "zoneOffsetId": zone,
            "appRecordFetchTimeEpochMillis": NOW, **fields}


def interval(rid: str, s: int = T0, e: int = T0 + HOUR, zone: str | None = "+01:00",
             **fields: Any) -> Rec:
    return {"metadata": meta(rid), "startTimeEpochMillis": s, "endTimeEpochMillis": e,
            "startZoneOffsetId": zone, "endZoneOffsetId": zone,
            "appRecordFetchTimeEpochMillis": NOW, **fields}


def glucose(rid: str, level: Any = 110.0, **kw: Any) -> Rec:
    return instant(rid, levelInMilligramsPerDeciliter=level, specimenSource="CAPILLARY_BLOOD",
                   mealType="BREAKFAST", relationToMeal="FASTING", **kw)


def hrv(rid: str, value: Any = 45.0, **kw: Any) -> Rec:
    return instant(rid, heartRateVariabilityRmssd=value, **kw)


def heart(rid: str, bpms: list[Any], s: int = T0, **kw: Any) -> Rec:
    samples = [{"timeEpochMillis": s + i * MIN, "beatsPerMinute": b} for i, b in enumerate(bpms)]
    return interval(rid, s, s + max(len(bpms), 1) * MIN, samples=samples, **kw)


def steps(rid: str, count: Any = 500, **kw: Any) -> Rec:
    return interval(rid, count=count, **kw)


def kcal(rid: str, energy: Any = 120.5, **kw: Any) -> Rec:
    return interval(rid, energyInKilocalories=energy, **kw)


def stage(a: int, b: int, kind: str = "LIGHT") -> Rec:
    return {"startTimeEpochMillis": a, "endTimeEpochMillis": b, "stage": kind}


def sleep(rid: str, s: int = T0, hours: float = 8, stages: list[Rec] | None = None,
          **kw: Any) -> Rec:
    e = s + int(hours * HOUR)
    if stages is None:
        stages = [stage(s, s + HOUR, "LIGHT"), stage(s + HOUR, e, "DEEP")]
    return interval(rid, s, e, title=None, notes=None, durationMillis=e - s, stages=stages,
                    **kw)


def run(rtype: str, records: list[Any], **cfg: Any) -> Any:
    config = DomainConfig(**cfg) if cfg else CFG
    return validate(DecodedFile(rtype, records, "null", rtype, 0), now_ms=NOW, config=config)


def single(rtype: str, record: Any) -> Any:
    """Validate one record next to nothing else; return the report."""
    return run(rtype, [record])


def assert_ok(report: Any) -> None:
    assert len(report.valid_records) == report.total_records, report.issue_counts
    assert report.issue_counts == {}
    assert report.passed and report.quarantine_reason is None
    assert report.quality_score == pytest.approx(1.0)


def assert_rejected(report: Any, code: str) -> None:
    assert report.valid_records == []
    assert report.issue_counts.get(code, 0) >= 1, report.issue_counts
    assert not report.passed
    assert report.quarantine_reason == "no_valid_records"


# --- helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("zone", "seconds"),
    [("Z", 0), ("+05:30", 19_800), ("-05:00", -18_000), ("-05", -18_000), ("+0530", 19_800),
     ("+18:00", 64_800), ("-03:00:30", -10_830), (None, 0)],
)
def test_zone_offsets_parse(zone: str | None, seconds: int) -> None:
    assert parse_zone_offset(zone) == seconds


@pytest.mark.parametrize(
    "zone",
    ["", "UTC", "+5:30", "05:30", "+05:60", "+18:01", "+1", "+05:3", "+05-30",
     "+\u0660\u0665:\u0660\u0660"],  # Arabic-Indic digits are not ASCII digits
)
def test_zone_offsets_rejected(zone: str) -> None:
    assert zone_offset_seconds(zone) is None
    with pytest.raises(ValueError):
        parse_zone_offset(zone)


def test_zone_offset_non_string_is_bad() -> None:
    assert zone_offset_seconds(330) is None


@pytest.mark.parametrize(
    "name",
    ["BloodGlucoseRecord", "AvroBloodGlucoseRecord", "blood_glucose",
     "io.github.hitoshura25.healthsyncapp.data.avro.AvroBloodGlucoseRecord"],
)
def test_canonical_record_type(name: str) -> None:
    assert canonical_record_type(name) == "BloodGlucoseRecord"


def test_canonical_record_type_unknown_passes_through() -> None:
    assert canonical_record_type("WeightRecord") == "WeightRecord"


# --- file level ----------------------------------------------------------------------------
def test_empty_file() -> None:
    report = run("StepsRecord", [])
    assert report.issue_counts == {"empty_file": 1}
    assert report.quality_score == 0.0 and not report.passed
    assert report.quarantine_reason == "empty_file"


def test_all_good_file_passes() -> None:
    assert_ok(run("BloodGlucoseRecord", [glucose(f"g{i}", 100.0 + i) for i in range(10)]))


def test_report_never_holds_values() -> None:
    report = run("BloodGlucoseRecord", [glucose("a", 987.6), glucose("b", 123.4)])
    text = repr(report.to_dict())
    assert "987" not in text and "123.4" not in text


# --- metadata --------------------------------------------------------------------------------
def test_malformed_record() -> None:
    assert_rejected(run("StepsRecord", ["not a record"]), "malformed_record")


def test_missing_metadata() -> None:
    rec = steps("a")
    del rec["metadata"]
    assert_rejected(single("StepsRecord", rec), "missing_metadata")


def test_missing_record_id() -> None:
    rec = steps("")
    assert_rejected(single("StepsRecord", rec), "missing_record_id")
    assert_ok(single("StepsRecord", steps("x")))


def test_missing_origin() -> None:
    rec = steps("a")
    rec["metadata"]["dataOriginPackageName"] = ""
    assert_rejected(single("StepsRecord", rec), "missing_data_origin")


def test_duplicate_record_id_keeps_first() -> None:
    first = steps("same", 100)
    report = run("StepsRecord", [first, steps("same", 200), steps("other", 300)])
    assert report.issue_counts == {"duplicate_record_id": 1}
    assert report.valid_records == [first, report.valid_records[1]]
    assert [r["count"] for r in report.valid_records] == [100, 300]
    assert report.components["consistency"] == pytest.approx(2 / 3)
    assert_ok(run("StepsRecord", [steps("one"), steps("two")]))


# --- timestamps ------------------------------------------------------------------------------
def test_missing_timestamp() -> None:
    rec = glucose("a")
    rec["timeEpochMillis"] = None
    assert_rejected(single("BloodGlucoseRecord", rec), "missing_timestamp")


def test_start_after_end() -> None:
    assert_rejected(single("StepsRecord", steps("a", s=T0 + HOUR, e=T0)), "start_after_end")
    assert_ok(single("StepsRecord", steps("a", s=T0, e=T0)))  # zero length is fine


def test_timestamp_before_2000() -> None:
    rec = glucose("a", t=MIN_TIMESTAMP_MS - 1)
    assert_rejected(single("BloodGlucoseRecord", rec), "timestamp_before_2000")
    assert_ok(single("BloodGlucoseRecord", glucose("a", t=MIN_TIMESTAMP_MS)))


def test_timestamp_in_future_respects_skew() -> None:
    skew = CFG.max_future_skew_ms
    assert_ok(single("BloodGlucoseRecord", glucose("a", t=NOW + skew)))
    rec = glucose("a", t=NOW + skew + 1)
    assert_rejected(single("BloodGlucoseRecord", rec), "timestamp_in_future")
    # an interval that starts after its export time (+ skew) is in the future
    late = steps("b", s=NOW + skew + 1, e=NOW + skew + HOUR)
    assert_rejected(single("StepsRecord", late), "timestamp_in_future")
    # a larger configured skew accepts it
    assert run("StepsRecord", [late], max_future_skew_ms=skew + 10).passed


# --- days in progress: the app exports a running-total day while it is still going ----------
DAY = 24 * HOUR
MIDNIGHT = NOW - 16 * HOUR  # 2024-03-09T00:00Z


def running_day(rid: str, fetch: int, *, start: int = MIDNIGHT) -> Rec:
    """Samsung Health's steps record: the local day, 00:00 to 23:59:59.999, written mid-day."""
    rec = steps(rid, count=6234, s=start, e=MIDNIGHT + DAY - 1, zone="Z")
    rec["appRecordFetchTimeEpochMillis"] = fetch
    return rec


def validate_at(records: list[Rec], *, now: int, upload: int | None) -> Any:
    return validate(DecodedFile("StepsRecord", records, "null", "StepsRecord", 0), now_ms=now,
                    config=CFG, upload_ms=upload)


def test_day_in_progress_is_kept_and_ends_at_its_export_time() -> None:
    export = MIDNIGHT + 17 * HOUR + 25 * MIN  # exported at 17:25
    report = validate_at([running_day("a", export)], now=export + MIN, upload=export + MIN)
    assert report.passed and report.issue_counts == {}
    [kept] = report.valid_records
    assert kept["endTimeEpochMillis"] == export and kept[IN_PROGRESS_KEY] is True
    assert report.in_progress_records == 1 and report.export_ms == export


def test_a_day_in_progress_stays_partial_when_processed_a_day_later() -> None:
    export = MIDNIGHT + 10 * HOUR
    now = validate_at([running_day("a", export)], now=export + MIN, upload=export + MIN)
    later = validate_at([running_day("a", export)], now=export + DAY, upload=export + MIN)
    assert later.valid_records == now.valid_records and later.in_progress_records == 1


def test_a_complete_day_is_not_in_progress() -> None:
    rec = running_day("a", MIDNIGHT + DAY + HOUR)  # exported the next morning
    report = validate_at([rec], now=MIDNIGHT + 2 * DAY, upload=MIDNIGHT + DAY + 2 * HOUR)
    assert report.in_progress_records == 0
    assert report.valid_records[0]["endTimeEpochMillis"] == MIDNIGHT + DAY - 1


@pytest.mark.parametrize("fetch", [MIDNIGHT - HOUR, MIDNIGHT + 20 * HOUR])
def test_an_implausible_export_time_is_replaced_by_the_upload_time(fetch: int) -> None:
    """Before the record's start, or after the upload (+ skew): the file is hostile input."""
    upload = MIDNIGHT + 12 * HOUR
    report = validate_at([running_day("a", fetch)], now=MIDNIGHT + 2 * DAY, upload=upload)
    [kept] = report.valid_records
    assert kept["endTimeEpochMillis"] == upload and report.export_ms == upload


def test_without_an_upload_time_the_workers_clock_bounds_the_export_time() -> None:
    now = MIDNIGHT + 9 * HOUR
    report = validate_at([running_day("a", MIDNIGHT + 20 * HOUR)], now=now, upload=None)
    assert report.valid_records[0]["endTimeEpochMillis"] == now
    # an upload time in the worker's future counts no later than the worker's clock
    report = validate_at([running_day("a", MIDNIGHT + 20 * HOUR)], now=now, upload=now + DAY)
    assert report.valid_records[0]["endTimeEpochMillis"] == now


def test_a_record_starting_after_its_export_time_is_in_the_future() -> None:
    export = MIDNIGHT + 10 * HOUR
    rec = running_day("a", export, start=export + CFG.max_future_skew_ms + 1)
    report = validate_at([rec], now=export + MIN, upload=export)
    assert_rejected(report, "timestamp_in_future")
    # a start within the skew is kept, as a zero-length interval still in progress
    rec = running_day("a", export, start=export + CFG.max_future_skew_ms)
    [kept] = validate_at([rec], now=export + MIN, upload=export).valid_records
    assert kept["endTimeEpochMillis"] == kept["startTimeEpochMillis"]


def test_bad_zone_offset() -> None:
    assert_rejected(single("BloodGlucoseRecord", glucose("a", zone="+99:00")), "bad_zone_offset")
    rec = steps("b")
    rec["endZoneOffsetId"] = "EST"
    assert_rejected(single("StepsRecord", rec), "bad_zone_offset")
    for zone in ("Z", "+05", "-0330", "+05:45"):
        assert_ok(single("BloodGlucoseRecord", glucose("a", zone=zone)))


def test_missing_zone_offset_is_completeness_only() -> None:
    report = single("BloodGlucoseRecord", glucose("a", zone=None))
    assert len(report.valid_records) == 1
    assert report.issue_counts == {"missing_zone_offset": 1}
    assert report.components == {"completeness": 0.0, "validity": 1.0, "consistency": 1.0}
    assert report.quality_score == pytest.approx(0.85)
    assert report.passed


# --- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [20.0, 110.0, 600.0, 350])
def test_glucose_in_range(level: float) -> None:
    assert_ok(single("BloodGlucoseRecord", glucose("a", level)))


@pytest.mark.parametrize("level", [19.9, 600.1, -5.0, 0.0, math.nan, math.inf])
def test_glucose_out_of_range(level: float) -> None:
    assert_rejected(single("BloodGlucoseRecord", glucose("a", level)), "glucose_out_of_range")


def test_glucose_missing_value_and_enum() -> None:
    assert_rejected(single("BloodGlucoseRecord", glucose("a", None)), "missing_value")
    assert_rejected(single("BloodGlucoseRecord", glucose("a", "110")), "missing_value")
    rec = glucose("a")
    rec["mealType"] = "BRUNCH"
    assert_rejected(single("BloodGlucoseRecord", rec), "unknown_enum_value")


@pytest.mark.parametrize(("value", "ok"), [(1.0, True), (300.0, True), (0.5, False),
                                           (300.5, False)])
def test_hrv_range(value: float, ok: bool) -> None:
    report = single("HeartRateVariabilityRmssdRecord", hrv("a", value))
    if ok:
        assert_ok(report)
    else:
        assert_rejected(report, "hrv_out_of_range")


@pytest.mark.parametrize(("count", "ok"), [(0, True), (100_000, True), (-1, False),
                                           (100_001, False)])
def test_steps_range(count: int, ok: bool) -> None:
    report = single("StepsRecord", steps("a", count))
    if ok:
        assert_ok(report)
    else:
        assert_rejected(report, "steps_out_of_range")


def test_steps_must_be_integer() -> None:
    assert_rejected(single("StepsRecord", steps("a", 12.5)), "missing_value")


@pytest.mark.parametrize(("energy", "ok"), [(0.0, True), (10_000.0, True), (-0.1, False),
                                            (10_000.1, False), (math.nan, False)])
def test_active_calories_range(energy: float, ok: bool) -> None:
    report = single("ActiveCaloriesBurnedRecord", kcal("a", energy))
    if ok:
        assert_ok(report)
    else:
        assert_rejected(report, "active_calories_out_of_range")


# --- heart rate ------------------------------------------------------------------------------
def test_heart_rate_in_range() -> None:
    assert_ok(single("HeartRateRecord", heart("a", [25, 60, 180, 250])))


def test_heart_rate_out_of_range_samples_are_dropped() -> None:
    rec = heart("a", [72, 0, 74, 400, 75])
    report = single("HeartRateRecord", rec)
    assert report.issue_counts == {"heart_rate_out_of_range": 2}
    [kept] = report.valid_records
    assert [s["beatsPerMinute"] for s in kept["samples"]] == [72, 74, 75]
    assert len(rec["samples"]) == 5  # the input is not modified
    assert report.components["validity"] == pytest.approx(3 / 5)


def test_heart_rate_all_samples_bad() -> None:
    report = single("HeartRateRecord", heart("a", [10, 300]))
    assert report.issue_counts == {"heart_rate_out_of_range": 2,
                                   "heart_rate_no_valid_samples": 1}
    assert report.valid_records == []


def test_heart_rate_no_samples() -> None:
    assert_rejected(single("HeartRateRecord", heart("a", [])), "heart_rate_no_samples")


def test_heart_rate_sample_outside_interval() -> None:
    rec = heart("a", [70, 71, 72])
    rec["samples"].append({"timeEpochMillis": T0 + 10 * HOUR, "beatsPerMinute": 70})
    report = single("HeartRateRecord", rec)
    assert report.issue_counts == {"sample_outside_interval": 1}
    assert len(report.valid_records[0]["samples"]) == 3
    assert report.components["consistency"] == 0.0


def test_heart_rate_malformed_sample() -> None:
    rec = heart("a", [70, 71])
    rec["samples"].append({"timeEpochMillis": None, "beatsPerMinute": 70})
    report = single("HeartRateRecord", rec)
    assert report.issue_counts == {"missing_value": 1}
    assert len(report.valid_records[0]["samples"]) == 2


# --- sleep -----------------------------------------------------------------------------------
def test_sleep_good() -> None:
    assert_ok(single("SleepSessionRecord", sleep("a")))


def test_sleep_duration_out_of_range() -> None:
    assert_ok(single("SleepSessionRecord", sleep("a", hours=24, stages=[stage(T0, T0 + HOUR)])))
    report = single("SleepSessionRecord", sleep("a", hours=24.01, stages=[stage(T0, T0 + HOUR)]))
    assert_rejected(report, "sleep_duration_out_of_range")


def test_sleep_stage_overlap() -> None:
    overlapping = [stage(T0, T0 + HOUR), stage(T0 + HOUR // 2, T0 + 2 * HOUR, "DEEP")]
    assert_rejected(single("SleepSessionRecord", sleep("a", stages=overlapping)),
                    "sleep_stage_overlap")
    # unsorted but touching stages are fine
    touching = [stage(T0 + HOUR, T0 + 2 * HOUR, "DEEP"), stage(T0, T0 + HOUR)]
    assert_ok(single("SleepSessionRecord", sleep("a", stages=touching)))


def test_sleep_stage_outside_session() -> None:
    outside = [stage(T0, T0 + 9 * HOUR)]
    report = single("SleepSessionRecord", sleep("a", stages=outside))
    assert_rejected(report, "sleep_stage_outside_session")
    assert report.components["consistency"] == 0.0
    before = [stage(T0 - MIN, T0 + HOUR)]
    assert_rejected(single("SleepSessionRecord", sleep("a", stages=before)),
                    "sleep_stage_outside_session")


def test_sleep_stage_inverted_and_unknown() -> None:
    assert_rejected(single("SleepSessionRecord", sleep("a", stages=[stage(T0 + HOUR, T0)])),
                    "start_after_end")
    assert_rejected(single("SleepSessionRecord", sleep("a", stages=[stage(T0, T0 + 1, "NAP")])),
                    "unknown_enum_value")


def test_sleep_without_stages_is_incomplete_but_kept() -> None:
    report = single("SleepSessionRecord", sleep("a", stages=[]))
    assert report.issue_counts == {"sleep_no_stages": 1}
    assert len(report.valid_records) == 1
    assert report.components["completeness"] == 0.0


# --- unknown types ---------------------------------------------------------------------------
def test_unknown_type_gets_common_rules() -> None:
    good = instant("a", weightInKilograms=70.0)
    bad = instant("b", t=NOW + 10 * 86_400_000, weightInKilograms=70.0)
    report = run("WeightRecord", [good, bad])
    assert report.record_type == "WeightRecord"
    assert report.issue_counts == {"timestamp_in_future": 1}
    assert report.valid_records == [good]


# --- score -----------------------------------------------------------------------------------
def test_score_formula_and_threshold() -> None:
    records = [glucose(f"g{i}") for i in range(6)] + [glucose("bad", 900.0)]
    records[0]["zoneOffsetId"] = None
    records.append(glucose("g1"))  # duplicate id
    report = run("BloodGlucoseRecord", records)
    n = len(records)
    completeness, validity, consistency = (n - 1) / n, 6 / n, (n - 1) / n
    assert report.components == pytest.approx(
        {"completeness": completeness, "validity": validity, "consistency": consistency})
    expected = 0.15 * completeness + 0.70 * validity + 0.15 * consistency
    assert report.quality_score == pytest.approx(expected)
    assert report.passed  # 0.8 >= 0.7
    strict = run("BloodGlucoseRecord", records, quality_threshold=0.9)
    assert not strict.passed and strict.quarantine_reason == "quality_below_threshold"
    assert len(strict.valid_records) == 6


def test_mostly_invalid_file_is_quarantined() -> None:
    records = [glucose("ok")] + [glucose(f"b{i}", 5.0) for i in range(3)]
    report = run("BloodGlucoseRecord", records)
    assert report.quality_score == pytest.approx(0.15 + 0.7 * 0.25 + 0.15)
    assert report.quarantine_reason == "quality_below_threshold"


def test_to_dict_is_stable() -> None:
    report = run("StepsRecord", [steps("a"), steps("a"), steps("b")])
    assert report.to_dict() == {
        "record_type": "StepsRecord", "total_records": 3, "valid_records": 2,
        "quality_score": 0.7167,
        "components": {"completeness": 1.0, "consistency": 0.6667, "validity": 0.6667},
        "issue_counts": {"duplicate_record_id": 1}, "passed": True, "quarantine_reason": None,
        "in_progress_records": 0,
    }


def test_throughput_few_microseconds_per_record() -> None:
    records = [glucose(f"g{i}", 80.0 + i % 100, t=T0 + i * 1000) for i in range(100_000)]
    start = time.perf_counter()
    report = run("BloodGlucoseRecord", records)
    per_record_us = (time.perf_counter() - start) / len(records) * 1e6
    assert report.passed and len(report.valid_records) == len(records)
    assert per_record_us < 20  # generous for slow CI; ~1.3 µs on a laptop


# --- whole clean chunks at once == record by record ---------------------------------------------
class _Sub(dict):  # type: ignore[type-arg]
    """A dict subclass: not a record (``malformed_record``)."""


def _clean_files() -> dict[str, list[Rec]]:
    n = 12
    return {
        "BloodGlucoseRecord": [glucose(f"g{i}", 60.0 + i, t=T0 + i * MIN) for i in range(n)],
        "HeartRateVariabilityRmssdRecord": [hrv(f"v{i}", t=T0 + i * MIN) for i in range(n)],
        "StepsRecord": [steps(f"s{i}", 10 * i) for i in range(n)],
        "ActiveCaloriesBurnedRecord": [kcal(f"k{i}", 1.5 * i) for i in range(n)],
        "HeartRateRecord": [heart(f"h{i}", [60 + i, 70, 80], s=T0 + i * HOUR) for i in range(n)],
    }


def _spoilers(rtype: str) -> list[tuple[str, Any]]:
    """(what, how to spoil one record) — every rule a chunk check must notice."""
    value = {"BloodGlucoseRecord": "levelInMilligramsPerDeciliter",
             "HeartRateVariabilityRmssdRecord": "heartRateVariabilityRmssd",
             "StepsRecord": "count", "ActiveCaloriesBurnedRecord": "energyInKilocalories",
             "HeartRateRecord": "samples"}[rtype]
    time_key = "timeEpochMillis" if rtype in ("BloodGlucoseRecord",
                                              "HeartRateVariabilityRmssdRecord") else None
    zone_keys = ["zoneOffsetId"] if time_key else ["startZoneOffsetId", "endZoneOffsetId"]
    out: list[tuple[str, Any]] = [
        ("not a dict", lambda r: ["x"]),
        ("dict subclass", _Sub),
        ("no metadata", lambda r: {k: v for k, v in r.items() if k != "metadata"}),
        ("metadata not a dict", lambda r: {**r, "metadata": "m"}),
        ("empty id", lambda r: {**r, "metadata": {**r["metadata"], "id": ""}}),
        ("int id", lambda r: {**r, "metadata": {**r["metadata"], "id": 7}}),
        ("unhashable id", lambda r: {**r, "metadata": {**r["metadata"], "id": ["a"]}}),
        ("duplicate id", lambda r: {**r, "metadata": {**r["metadata"], "id": "dup"}}),
        ("empty origin", lambda r: {**r, "metadata": {**r["metadata"],
                                                       "dataOriginPackageName": ""}}),
        ("unhashable origin", lambda r: {**r, "metadata": {**r["metadata"],
                                                            "dataOriginPackageName": {}}}),
        ("value None", lambda r: {**r, value: None}),
        ("value bool", lambda r: {**r, value: True}),
        ("value NaN", lambda r: {**r, value: math.nan}),
        ("value huge", lambda r: {**r, value: 10**9}),
        ("value negative", lambda r: {**r, value: -1}),
        ("value float", lambda r: {**r, value: 1.5}),
        ("value unhashable", lambda r: {**r, value: [1]}),
        ("no zone", lambda r: {**r, **dict.fromkeys(zone_keys)}),
        ("bad zone", lambda r: {**r, zone_keys[-1]: "+25:00"}),
        ("unhashable zone", lambda r: {**r, zone_keys[0]: ["Z"]}),
    ]
    if time_key:
        out += [("time float", lambda r: {**r, time_key: float(r[time_key])}),
                ("time old", lambda r: {**r, time_key: MIN_TIMESTAMP_MS - 1}),
                ("time future", lambda r: {**r, time_key: NOW + HOUR}),
                ("time bool", lambda r: {**r, time_key: True})]
    else:
        out += [("start after end", lambda r: {**r, "startTimeEpochMillis":
                                                r["endTimeEpochMillis"] + 1}),
                ("end float", lambda r: {**r, "endTimeEpochMillis": 1.0 * T0}),
                ("start None", lambda r: {**r, "startTimeEpochMillis": None}),
                ("end future", lambda r: {**r, "endTimeEpochMillis": NOW + HOUR})]
    if rtype == "BloodGlucoseRecord":
        out += [("enum", lambda r: {**r, "mealType": "BRUNCH"}),
                ("enum None", lambda r: {**r, "relationToMeal": None})]
    if rtype == "HeartRateRecord":
        def sample(**kw: Any) -> Any:
            return lambda r: {**r, "samples": [*r["samples"][:-1], {**r["samples"][-1], **kw}]}
        out += [("no samples", lambda r: {**r, "samples": []}),
                ("samples tuple", lambda r: {**r, "samples": tuple(r["samples"])}),
                ("sample bpm high", sample(beatsPerMinute=251)),
                ("sample bpm NaN", sample(beatsPerMinute=math.nan)),
                ("sample bpm None", sample(beatsPerMinute=None)),
                ("sample outside", sample(timeEpochMillis=T0 - 1)),
                ("sample no time", lambda r: {**r, "samples": [{"beatsPerMinute": 60}]}),
                ("sample not a dict", lambda r: {**r, "samples": [[1, 2]]})]
    return out


def _report(rtype: str, records: list[Any], options: ValidationOptions) -> tuple[Any, ...]:
    rep = validate(DecodedFile(rtype, records, "null", rtype, 0), now_ms=NOW, config=CFG,
                   options=options)
    return (rep.to_dict(), rep.quality_score, rep.components, rep.valid_records)


@pytest.mark.parametrize("rtype", sorted(_clean_files()))
@pytest.mark.parametrize("chunk", [1024, 5])
def test_chunk_checks_equal_record_by_record(rtype: str, chunk: int) -> None:
    fast_path = ValidationOptions(chunk_records=chunk)
    slow_path = ValidationOptions(fast_chunks=False, chunk_records=chunk)
    clean = _clean_files()[rtype]
    cases: list[tuple[str, list[Any]]] = [("clean", clean)]
    for what, spoil in _spoilers(rtype):
        for at in (0, 6, 11):
            records = list(clean)
            records[at] = spoil(records[at])
            if what == "duplicate id":
                records[3] = spoil(records[3])
            cases.append((f"{what}@{at}", records))
    cases.append(("id repeated across chunks", [*clean, clean[0]]))
    for what, records in cases:
        fast = _report(rtype, records, fast_path)
        slow = _report(rtype, records, slow_path)
        assert fast == slow, what


def test_chunk_sum_of_usable_matches_one_by_one() -> None:
    """A partly kept heart-rate record leaves a fraction; later whole chunks add 1.0 each."""
    records = [heart("h0", [60, 300, 300]), *(heart(f"h{i}", [60], s=T0 + i * HOUR)
                                              for i in range(1, 40))]
    fast = _report("HeartRateRecord", records, ValidationOptions(chunk_records=2))
    slow = _report("HeartRateRecord", records,
                   ValidationOptions(fast_chunks=False, chunk_records=2))
    assert fast == slow


def test_only_a_running_total_day_can_be_in_progress() -> None:
    """A sleep session is written when it ends, and a 50-year "interval" is no day: both
    ending after their export time are in the future, as before."""
    export = MIDNIGHT + 5 * HOUR
    night = sleep("s", s=MIDNIGHT - HOUR, hours=8)
    night["appRecordFetchTimeEpochMillis"] = export
    report = validate(DecodedFile("SleepSessionRecord", [night], "null", "x", 0),
                      now_ms=export + MIN, config=CFG, upload_ms=export + MIN)
    assert_rejected(report, "timestamp_in_future")
    endless = running_day("a", export, start=MIDNIGHT - 400 * DAY)
    assert_rejected(validate_at([endless], now=export + MIN, upload=export + MIN),
                    "timestamp_in_future")
