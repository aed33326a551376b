"""Narratives: golden texts for fixed inputs, determinism, numbers taken from statistics.

Golden files live in ``tests/golden/<case>.json``. After an intended wording change,
regenerate them with ``ETL_UPDATE_GOLDEN=1 pytest tests/test_narratives.py`` and review the
diff like code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_engine.domain import narratives
from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DomainConfig, ValidationReport
from etl_engine.domain.transform import compute_statistics, transform
from helpers import flat_items

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("ETL_UPDATE_GOLDEN") == "1"
SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "training-record.schema.json")
    .read_text()
)

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
MIDNIGHT = 1_709_528_400_000  # 2024-03-04T00:00 at -05:00
BED = MIDNIGHT - 75 * MIN  # 22:45 local on March 3
ZONE = "-05:00"
PHONE = "com.google.android.apps.fitness"
WATCH = "com.samsung.android.app.health"
CFG = DomainConfig(processor_version="9.9.9")
PROCESSED = datetime(2024, 3, 12, 8, 30, tzinfo=UTC)

Rec = dict[str, Any]


# --- builders (deterministic ids: golden outputs must not depend on a counter) ----------------
def meta(rid: str, origin: str) -> Rec:
    return {"id": rid, "dataOriginPackageName": origin, "lastModifiedTimeEpochMillis": MIDNIGHT,
            "clientRecordId": None, "clientRecordVersion": 0, "device": None}


def instant(rid: str, t: int, origin: str, **fields: Any) -> Rec:
    return {"metadata": meta(rid, origin), "timeEpochMillis": t, "zoneOffsetId": ZONE,
            "appRecordFetchTimeEpochMillis": MIDNIGHT, **fields}


def interval(rid: str, s: int, e: int, origin: str, **fields: Any) -> Rec:
    return {"metadata": meta(rid, origin), "startTimeEpochMillis": s, "endTimeEpochMillis": e,
            "startZoneOffsetId": ZONE, "endZoneOffsetId": ZONE,
            "appRecordFetchTimeEpochMillis": MIDNIGHT, **fields}


def cgm(levels: Sequence[float], start: int, origin: str = "com.dexcom.g7") -> list[Rec]:
    return [instant(f"{origin}-{start}-{i}", start + i * 5 * MIN, origin,
                    levelInMilligramsPerDeciliter=float(v), specimenSource="INTERSTITIAL_FLUID",
                    mealType="UNKNOWN", relationToMeal="GENERAL")
            for i, v in enumerate(levels)]


def sleep(rid: str, s: int, plan: list[tuple[str, int]], origin: str = WATCH) -> Rec:
    stages, t = [], s
    for kind, minutes in plan:
        stages.append({"startTimeEpochMillis": t, "endTimeEpochMillis": t + minutes * MIN,
                       "stage": kind})
        t += minutes * MIN
    return interval(rid, s, t, origin, title=None, notes=None, durationMillis=t - s,
                    stages=stages)


NIGHT = [("AWAKE", 12), ("LIGHT", 95), ("DEEP", 60), ("LIGHT", 45), ("AWAKE", 6), ("REM", 35),
         ("LIGHT", 80), ("DEEP", 25), ("REM", 50), ("AWAKE", 4), ("LIGHT", 30), ("REM", 25)]


def _glucose_in_range() -> list[Rec]:
    wave = [105, 112, 126, 148, 162, 171, 158, 139, 121, 110, 102, 98]
    return cgm(wave * 24, MIDNIGHT)  # one day, every 5 min


def _glucose_low_and_high() -> list[Rec]:
    day1 = [140, 190, 230, 260, 270, 240, 200, 160, 120, 85, 66, 62, 58, 52, 50, 55, 68, 90]
    day2 = [180, 210, 255, 265, 230, 195, 150, 110, 80, 64, 60, 63, 75, 120]
    meter = [instant(f"m{i}", MIDNIGHT + 7 * HOUR + i * DAY, "com.meter.app",
                     levelInMilligramsPerDeciliter=130.0, specimenSource="CAPILLARY_BLOOD",
                     mealType="BREAKFAST", relationToMeal="FASTING") for i in range(2)]
    return (cgm(day1, MIDNIGHT + 6 * HOUR) + cgm(day2, MIDNIGHT + DAY + 6 * HOUR) + meter)


def _glucose_two_weeks_utc() -> list[Rec]:
    # 14 days of 5-min readings stamped Z, 4 hours off the sensor each day (83.3 % wear):
    # enough for the consensus, so GMI and the target verdict are given
    wave = [105, 112, 126, 148, 162, 171, 158, 139, 121, 110, 102, 98]
    start = MIDNIGHT - 5 * HOUR  # 2024-03-04T00:00Z
    return [instant(f"z{d}-{k}", start + d * DAY + k * 5 * MIN, "com.dexcom.stelo",
                    zoneOffsetId="Z", levelInMilligramsPerDeciliter=float(wave[k % 12]),
                    specimenSource="INTERSTITIAL_FLUID", mealType="UNKNOWN",
                    relationToMeal="GENERAL")
            for d in range(14) for k in range(288) if not 120 <= k < 168]


def _heart_rate() -> list[Rec]:
    out = []
    bpm_plan = [52, 54, 55, 58, 61, 64, 70, 76, 82, 97, 118, 136, 149, 158, 166, 174, 162, 120,
                96, 80, 72, 68, 63, 60]
    for hour, bpm in enumerate(bpm_plan):
        s = MIDNIGHT + hour * HOUR
        samples = [{"timeEpochMillis": s + k * 5 * MIN, "beatsPerMinute": bpm + (k % 3) - 1}
                   for k in range(12)]
        out.append(interval(f"hr{hour}", s, s + HOUR, WATCH, samples=samples))
    return out


def _hrv() -> list[Rec]:
    values = [38.0, 52.4, 41.2, 55.0, 44.8, 57.9, 47.5, 61.3, 49.0, 63.8]
    # five nights, two readings each (22:45 and 01:15 local), as ring/watch HRV is taken asleep
    return [instant(f"v{i}", BED + (i // 2) * DAY + (i % 2) * 150 * MIN, WATCH,
                    heartRateVariabilityRmssd=v) for i, v in enumerate(values)]


def _steps_week() -> list[Rec]:
    daily = [3200, 8400, 10450, 6100, 12020, 4700, 9150]
    out = []
    for d, total in enumerate(daily):
        for h in range(4):
            s = MIDNIGHT + d * DAY + (8 + 3 * h) * HOUR
            out.append(interval(f"w{d}-{h}", s, s + HOUR, WATCH, count=total // 4))
        # the phone saw part of the same hours: never added on top of the watch
        s = MIDNIGHT + d * DAY + 8 * HOUR
        out.append(interval(f"p{d}", s, s + HOUR, PHONE, count=total // 5))
    return out


CASES: dict[str, tuple[str, Callable[[], list[Rec]]]] = {
    "glucose_in_range": ("BloodGlucoseRecord", _glucose_in_range),
    "glucose_low_and_high": ("BloodGlucoseRecord", _glucose_low_and_high),
    "glucose_two_weeks_utc": ("BloodGlucoseRecord", _glucose_two_weeks_utc),
    "heart_rate_day": ("HeartRateRecord", _heart_rate),
    "hrv_five_days": ("HeartRateVariabilityRmssdRecord", _hrv),
    "hrv_single": ("HeartRateVariabilityRmssdRecord", lambda: _hrv()[:1]),
    "sleep_one_night": ("SleepSessionRecord", lambda: [sleep("s1", BED, NIGHT)]),
    "sleep_nights_nap_two_devices": ("SleepSessionRecord", lambda: [
        sleep("s1", BED, NIGHT),
        sleep("r1", BED + 10 * MIN, [("LIGHT", 400)], "com.ouraring.oura"),
        sleep("s2", BED + DAY + 50 * MIN, NIGHT[:9]),
        sleep("nap", MIDNIGHT + DAY + 14 * HOUR, [("LIGHT", 25), ("AWAKE", 5)]),
        sleep("s3", BED + 2 * DAY - 20 * MIN, NIGHT),
    ]),
    "sleep_no_stages": ("SleepSessionRecord", lambda: [
        interval("x", BED, BED + 6 * HOUR, PHONE, title=None, notes=None, durationMillis=None,
                 stages=[])]),
    "steps_one_day": ("StepsRecord", lambda: [
        interval("a", MIDNIGHT + 9 * HOUR, MIDNIGHT + 10 * HOUR, PHONE, count=4200),
        interval("b", MIDNIGHT + 18 * HOUR, MIDNIGHT + 19 * HOUR, PHONE, count=3350)]),
    "steps_week_two_origins": ("StepsRecord", _steps_week),
    "calories_three_days": ("ActiveCaloriesBurnedRecord", lambda: [
        interval(f"k{d}", MIDNIGHT + d * DAY + 7 * HOUR, MIDNIGHT + d * DAY + 8 * HOUR, WATCH,
                 energyInKilocalories=e) for d, e in enumerate([312.4, 455.25, 198.0])]),
    "generic_weight": ("WeightRecord", lambda: [
        instant(f"w{i}", MIDNIGHT + i * DAY + 7 * HOUR, "com.withings.wiscale2",
                weightInKilograms=w) for i, w in enumerate([81.2, 80.9, 80.6])]),
}


def run_case(name: str, seed: str | None = None) -> dict[str, Any]:
    rtype, build = CASES[name]
    records = build()
    report = ValidationReport(rtype, len(records), records, 1.0,
                              {"completeness": 1.0, "validity": 1.0, "consistency": 1.0})
    lineage = pseudonymous(b"test-lineage-key", bucket="health-data", key=f"raw/{name}.avro",
                           record_type=rtype, idempotency_key=seed or f"idem-{name}",
                           user_id="user-1", message_id=f"msg-{name}",
                           correlation_id=f"corr-{name}")
    return transform(report, lineage, config=CFG, processed_at=PROCESSED).record


# --- golden ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_narrative(name: str) -> None:
    record = run_case(name)
    got = {"instruction": record["instruction"], "output": record["output"]}
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert path.exists(), f"missing golden file {path}; run with ETL_UPDATE_GOLDEN=1"
    assert got == json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_records_validate_against_schema(name: str) -> None:
    record = json.loads(json.dumps(run_case(name), allow_nan=False))
    validator = jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{e.message} at {list(e.path)}" for e in validator.iter_errors(record)]
    assert not errors, errors[:5]


# --- determinism -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic(name: str) -> None:
    assert run_case(name) == run_case(name)


def test_instruction_phrasing_depends_only_on_seed() -> None:
    phrasings = {run_case("steps_one_day", seed=f"key-{i}")["instruction"] for i in range(40)}
    assert len(phrasings) == 3  # all variants are used ...
    assert run_case("steps_one_day", "k")["instruction"] == run_case("steps_one_day",
                                                                      "k")["instruction"]
    outputs = {run_case("steps_one_day", seed=f"key-{i}")["output"] for i in range(5)}
    assert len(outputs) == 1  # ... and the answer never depends on it


# --- the text agrees with the statistics -----------------------------------------------------
_CONSTANTS = {0, 1, 3, 4, 5, 6, 7, 15, 24, 25, 36, 54, 60, 70, 85, 100, 180, 250, 2024,
              5000, 7000, 10000}
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)?")


def _numbers(value: Any) -> set[float]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, int | float):
        return {float(value)}
    if isinstance(value, dict):
        return set().union(*(_numbers(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_numbers(v) for v in value)) if value else set()
    if isinstance(value, str):  # dates and clock times quoted in the text
        return {float(x) for x in re.findall(r"\d+", value)}
    return set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_number_in_the_text_comes_from_the_statistics(name: str) -> None:
    record = run_case(name)
    stats = record["metadata"]["statistics"]
    allowed = _numbers(stats) | {float(c) for c in _CONSTANTS}
    for key in ("zone_lower_bounds_bpm",):  # zone ranges are quoted as "95-113 bpm"
        allowed |= {float(v - 1) for v in stats.get(key, {}).values()}
    for minutes in [v for k, v in flat_items(stats) if k.endswith("minutes") and v is not None]:
        h, m = divmod(round(minutes), 60)  # durations are quoted as "7 hours 5 minutes"
        allowed |= {float(h), float(m)}
    allowed |= {float(x) for d in (record["metadata"]["period_date"],) for x in d.split("-")}
    for token in _NUMBER.findall(record["output"]):
        value = float(token.replace(",", "").lstrip("+"))
        if value.is_integer() and 1 <= value <= 31:
            continue  # day of month, counts of days; checked by golden texts
        assert value in allowed, f"{token!r} in narrative is not a statistic"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(40, 400), min_size=1, max_size=60))
def test_glucose_text_quotes_the_statistics(levels: list[int]) -> None:
    stats = compute_statistics("BloodGlucoseRecord", cgm(levels, MIDNIGHT), CFG)
    text = narratives.narrative("BloodGlucoseRecord", stats, date(2024, 3, 4), date(2024, 3, 4))
    bands = stats["time_in_ranges_percent"]
    assert f"{narratives.num(bands['in_range_70_180'])}% of readings were in the target" in text
    assert f"average glucose was {narratives.num(stats['mean_mg_dl'])} mg/dL" in text
    meets = stats["control_assessment"] == "meets_targets"
    # at most 5 hours of readings: below the consensus minimum, so no verdict and no GMI
    assert stats["gmi_insufficient_data"] and stats["control_assessment_insufficient_data"]
    assert "meets" not in text and "GMI) is" not in text and "A1c" not in text
    e = stats["episodes"]
    lows = bool(e["low_level_1_below_70"] or e["low_level_2_below_54"])
    assert ("healthcare professional" in text) == (not meets or lows)


_NOT_GENTLE = re.compile(
    r"diagnos|you have|disease|disorder|abnormal|dangerous|alarming|you must|you should|"
    r"diabet|insomnia|arrhythmi|tachycardi|bradycardi", re.IGNORECASE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_wording_is_gentle(name: str) -> None:
    record = run_case(name)
    assert not _NOT_GENTLE.search(record["output"])
    assert not _NOT_GENTLE.search(record["instruction"])
    assert record["output"].isascii()


# --- formatting helpers ----------------------------------------------------------------------
def test_dates_and_periods() -> None:
    assert narratives.long_date(date(2024, 3, 4)) == "March 4, 2024"
    assert narratives.period_phrase(date(2024, 3, 4), date(2024, 3, 4)) == "on March 4, 2024"
    assert (narratives.period_phrase(date(2024, 3, 4), date(2024, 3, 10))
            == "between March 4 and March 10, 2024")
    assert (narratives.period_phrase(date(2023, 12, 30), date(2024, 1, 2))
            == "between December 30, 2023 and January 2, 2024")


@pytest.mark.parametrize(("value", "text"), [(1234, "1,234"), (12.0, "12"), (12.5, "12.5"),
                                             (10219.3, "10,219.3"), (None, "n/a"), (0.0, "0")])
def test_num(value: float | None, text: str) -> None:
    assert narratives.num(value) == text


@pytest.mark.parametrize(("minutes", "text"), [(0, "0 minutes"), (1, "1 minute"),
                                               (60, "1 hour"), (451.4, "7 hours 31 minutes"),
                                               (121, "2 hours 1 minute")])
def test_duration(minutes: float, text: str) -> None:
    assert narratives.duration(minutes) == text


def test_readable_type() -> None:
    assert narratives.readable_type("BodyTemperatureRecord") == "body temperature"
    assert "body temperature" in narratives.instruction("BodyTemperatureRecord",
                                                        date(2024, 3, 4), date(2024, 3, 4))
