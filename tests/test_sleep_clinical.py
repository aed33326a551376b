"""Sleep counted the way sleep scientists count it (issue: Samsung 30-s vs Oura 5-min stages).

The same night as Samsung Health writes it (30-second stages, many one-epoch wakes) and as
Oura writes it (5-minute stages) must give the same number of awakenings (wake bouts of at
least 5 minutes between sleep); the short ones are counted apart as brief awakenings. Stage
shares are % of total sleep time, and the narrative names the day of ``night_of``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema

from etl_engine.domain import narratives
from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DomainConfig, ValidationReport
from etl_engine.domain.stats.common import percentages
from etl_engine.domain.transform import compute_statistics, transform
from helpers import flat_items

SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
ZONE = "+02:00"
# 00:30 local (+02:00) on 2025-09-20: after midnight, so the night is that of September 19
BED = int(datetime(2025, 9, 19, 22, 30, tzinfo=UTC).timestamp() * 1000)
SAMSUNG = "com.sec.android.app.shealth"
OURA = "com.ouraring.oura"
CFG = DomainConfig()
THRESHOLDS = {5.0, 7.0, 85.0}  # the fixed thresholds the sleep narrative may quote
SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas"
                     / "training-record.schema.json").read_text())

Rec = dict[str, Any]
Plan = list[tuple[str, int]]  # (stage, seconds)


def session(rid: str, start: int, plan: Plan | None, origin: str, hours: float = 8) -> Rec:
    """A SleepSessionRecord from ``(stage, seconds)`` steps; None plan: no stages."""
    stages, t = [], start
    for kind, seconds in plan or []:
        stages.append({"startTimeEpochMillis": t, "endTimeEpochMillis": t + seconds * SEC,
                       "stage": kind})
        t += seconds * SEC
    end = t if plan else start + int(hours * HOUR)
    return {"metadata": {"id": rid, "dataOriginPackageName": origin,
                         "lastModifiedTimeEpochMillis": end, "clientRecordId": None,
                         "clientRecordVersion": 0, "device": None},
            "startTimeEpochMillis": start, "endTimeEpochMillis": end,
            "startZoneOffsetId": ZONE, "endZoneOffsetId": ZONE,
            "appRecordFetchTimeEpochMillis": end, "title": None, "notes": None,
            "durationMillis": end - start, "stages": stages}


def samsung_plan() -> Plan:
    """Samsung-like: 30-s epochs; 13 short wake bouts and 3 of at least 5 minutes."""
    plan: Plan = [("AWAKE", 30)] * 16 + [("LIGHT", 2400)]  # 8 min to fall asleep: no count
    for i in range(12):  # twelve one-epoch (30 s) wakes between sleep: brief
        plan += [(("DEEP", "LIGHT", "REM")[i % 3], 600), ("AWAKE", 30)]
    plan += [("LIGHT", 600)] + [("AWAKE", 30)] * 10  # ten adjacent epochs = 5 min: counts
    plan += [("REM", 1200)] + [("AWAKE", 30)] * 9  # 4.5 min: brief
    plan += [("DEEP", 1200), ("AWAKE", 360)]  # 6 min: counts
    plan += [("LIGHT", 1800), ("OUT_OF_BED", 180), ("AWAKE", 180)]  # one 6-min bout: counts
    plan += [("REM", 1500), ("LIGHT", 3000)] + [("AWAKE", 30)] * 4  # final wake: no count
    return plan


OURA_PLAN: Plan = [(k, m * 60) for k, m in [
    ("AWAKE", 10), ("LIGHT", 45), ("DEEP", 60), ("AWAKE", 5), ("REM", 30), ("LIGHT", 60),
    ("AWAKE", 10), ("DEEP", 30), ("LIGHT", 45), ("AWAKE", 5), ("REM", 40), ("AWAKE", 5)]]


def stats_of(records: list[Rec], config: DomainConfig = CFG) -> dict[str, Any]:
    return compute_statistics("SleepSessionRecord", records, config)


def night_text(stats: dict[str, Any]) -> tuple[str, str]:
    """(instruction, narrative) with the period the lead's transform will take from stats."""
    first = date.fromisoformat(stats["period_first_day"])
    last = date.fromisoformat(stats["period_last_day"])
    return narratives.build("SleepSessionRecord", stats, first_day=first, last_day=last)


# --- awakenings --------------------------------------------------------------------------------
def test_samsung_30s_wakes_are_brief_not_awakenings() -> None:
    night = stats_of([session("s", BED, samsung_plan(), SAMSUNG)])["nights_detail"][0]
    assert night["awakenings"] == 3
    assert night["brief_awakenings"] == 13
    assert night["waso_minutes"] == 12 * 0.5 + 5 + 4.5 + 6 + 6 + 2  # trailing wake included


def test_oura_5min_stages_same_night_same_awakenings() -> None:
    samsung = stats_of([session("s", BED, samsung_plan(), SAMSUNG)])["nights_detail"][0]
    oura = stats_of([session("o", BED, OURA_PLAN, OURA)])["nights_detail"][0]
    assert oura["awakenings"] == samsung["awakenings"] == 3
    assert oura["brief_awakenings"] == 0
    assert oura["waso_minutes"] == 25


def test_one_origin_per_night_most_time_in_bed_unless_priority() -> None:
    records = [session("o", BED, OURA_PLAN, OURA), session("s", BED, samsung_plan(), SAMSUNG)]
    stats = stats_of(records)
    night = stats["nights_detail"][0]
    assert stats["nights"] == 1 and night["origins_present"] == 2
    assert night["origin"] == SAMSUNG  # 352.5 min in bed against Oura's 345
    assert night["time_in_bed_minutes"] == 352.5
    assert night["efficiency_percent"] == round((352.5 - 8 - 29.5) / 352.5 * 100, 1)
    ring = stats_of(records, DomainConfig(origin_priority=(OURA,)))["nights_detail"][0]
    assert ring["origin"] == OURA and ring["awakenings"] == 3 and ring["brief_awakenings"] == 0
    assert ring["time_in_bed_minutes"] == 345


def test_session_breaks_count_by_length() -> None:
    def split(gap_min: int, tail: Plan) -> dict[str, Any]:
        first = session("a", BED, [("LIGHT", 7200), *tail], SAMSUNG)
        second = session("b", first["endTimeEpochMillis"] + gap_min * MIN,
                         [("DEEP", 7200)], SAMSUNG)
        return stats_of([first, second])["nights_detail"][0]

    long_gap, short_gap = split(10, []), split(2, [])
    assert (long_gap["sessions"], long_gap["awakenings"], long_gap["brief_awakenings"]) == (
        2, 1, 0)
    assert (short_gap["awakenings"], short_gap["brief_awakenings"]) == (0, 1)
    merged = split(3, [("AWAKE", 180)])  # 3 min awake, then a 3-min break: one 6-min bout
    assert (merged["awakenings"], merged["brief_awakenings"]) == (1, 0)
    assert merged["waso_minutes"] == 3  # the break is not time in bed


# --- stage shares ------------------------------------------------------------------------------
def test_stage_percent_of_total_sleep_adds_to_100_and_excludes_wake() -> None:
    night = stats_of([session("s", BED, samsung_plan(), SAMSUNG)])["nights_detail"][0]
    of_sleep = night["stage_percent_of_sleep"]
    assert set(of_sleep) == {"light", "deep", "rem", "sleeping"}
    assert round(sum(of_sleep.values()), 1) == 100
    minutes = night["stage_minutes"]
    expected = percentages([minutes[k] for k in ("light", "deep", "rem", "sleeping")])
    assert list(of_sleep.values()) == expected
    assert of_sleep["light"] == round(minutes["light"] / night["total_sleep_minutes"] * 100, 1)
    in_bed = night["stage_percent_of_time_in_bed"]
    assert round(sum(in_bed.values()), 1) == 100 and in_bed["awake"] > 0
    assert in_bed["light"] < of_sleep["light"]


# --- dates and sufficiency ---------------------------------------------------------------------
def test_after_midnight_bedtime_belongs_to_previous_evening() -> None:
    stats = stats_of([session("s", BED, samsung_plan(), SAMSUNG)])
    assert stats["nights_detail"][0]["night_of"] == "2025-09-19"
    assert stats["nights_detail"][0]["bedtime_local"] == "00:30"
    assert (stats["period_first_day"], stats["period_last_day"]) == ("2025-09-19",
                                                                      "2025-09-19")
    question, answer = night_text(stats)
    assert "September 19, 2025" in question and "September 19, 2025" in answer
    assert "September 20" not in question + answer


def test_transform_names_the_night_of() -> None:
    records = [session("s", BED, samsung_plan(), SAMSUNG)]
    report = ValidationReport("SleepSessionRecord", 1, records, 1.0)
    lineage = pseudonymous(b"k", bucket="b", key="raw/s.avro", record_type="SleepSessionRecord",
                           idempotency_key="idem", user_id="u")
    out = transform(report, lineage, config=CFG, processed_at=datetime(2025, 9, 22, tzinfo=UTC))
    assert out.record["metadata"]["period_date"] == "2025-09-19"
    assert "September 19, 2025" in out.record["instruction"]
    assert out.record["output"].startswith("On September 19, 2025, 1 night")


def test_morning_nap_is_dated_by_its_start() -> None:
    nap = session("n", BED + 10 * HOUR, [("LIGHT", 1800)], SAMSUNG)  # 10:30 on Sept 20
    stats = stats_of([session("s", BED, samsung_plan(), SAMSUNG), nap])
    assert [(p["kind"], p["night_of"]) for p in stats["nights_detail"]] == [
        ("night", "2025-09-19"), ("nap", "2025-09-20")]
    assert (stats["period_first_day"], stats["period_last_day"]) == ("2025-09-19",
                                                                      "2025-09-20")


def test_sufficiency() -> None:
    records = [session("s", BED, samsung_plan(), SAMSUNG),
               session("o", BED, OURA_PLAN, OURA),
               session("x", BED + 24 * HOUR, None, SAMSUNG, hours=6.5),
               session("n", BED + 38 * HOUR, [("LIGHT", 1800)], SAMSUNG)]
    stats = stats_of(records)
    assert stats["sufficiency"] == {"nights_covered": 2, "hours_covered": 12.9,
                                    "nights_with_stages": 1}
    assert (stats["nights"], stats["naps"]) == (2, 1)
    assert stats["average_awakenings"] == 3  # over the night with stages only
    assert stats["average_brief_awakenings"] == 13 and stats["average_waso_minutes"] == 29.5


# --- narrative ---------------------------------------------------------------------------------
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)?")


def unquoted_numbers(text: str, stats: dict[str, Any]) -> list[str]:
    """Numbers in the text that are neither statistics (as printed), thresholds nor dates."""
    allowed = set(THRESHOLDS)
    for key, value in flat_items(stats):
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            allowed.add(float(value))
            if key.endswith("minutes"):  # durations are quoted as "7 hours 5 minutes"
                allowed |= {float(x) for x in divmod(round(value), 60)}
        elif isinstance(value, str):  # dates and clock times
            allowed |= {float(x) for x in re.findall(r"\d+", value)}
    return [t for t in _NUMBER.findall(text)
            if float(t.replace(",", "")) not in allowed]


def test_narrative_quotes_only_statistics() -> None:
    nap = session("n", BED + 10 * HOUR, [("LIGHT", 1800), ("AWAKE", 60)], SAMSUNG)
    cases = [[session("s", BED, samsung_plan(), SAMSUNG)],
             [session("o", BED, OURA_PLAN, OURA), session("s", BED, samsung_plan(), SAMSUNG),
              session("s2", BED + 24 * HOUR + 40 * MIN, OURA_PLAN, OURA), nap],
             [session("x", BED, None, SAMSUNG)]]
    for records in cases:
        stats = stats_of(records)
        _, text = night_text(stats)
        assert unquoted_numbers(text, stats) == [], text
    assert unquoted_numbers("awake or out of bed 12.3% of the time", stats) == ["12.3"]


def test_narrative_wording_one_night() -> None:
    stats = stats_of([session("s", BED, samsung_plan(), SAMSUNG)])
    pct = stats["nights_detail"][0]["stage_percent_of_sleep"]
    _, text = night_text(stats)
    assert (f"Of the total sleep time, {narratives.num(pct['light'])}% was light sleep, "
            f"{narratives.num(pct['deep'])}% deep sleep and {narratives.num(pct['rem'])}% "
            "REM sleep.") in text
    assert ("There were 3 awakenings of 5 minutes or more and 13 brief awakenings "
            "(under 5 minutes)") in text
    assert "29.5 minutes" in text and "Of the time in bed" not in text


def test_narrative_wording_several_nights() -> None:
    stats = stats_of([session("s", BED, samsung_plan(), SAMSUNG),
                      session("s2", BED + 24 * HOUR, OURA_PLAN, OURA)])
    _, text = night_text(stats)
    assert stats["average_awakenings"] == 3 and stats["average_brief_awakenings"] == 6.5
    assert ("nights with sleep stages had 3 awakenings of 5 minutes or more, 6.5 brief "
            "awakenings (under 5 minutes) and 27.2 minutes awake") in text
    assert text.startswith("Between September 19 and September 20, 2025, 2 nights")


def test_statistics_validate_against_schema() -> None:
    records = [session("o", BED, OURA_PLAN, OURA), session("s", BED, samsung_plan(), SAMSUNG),
               session("x", BED + 24 * HOUR, None, SAMSUNG)]
    stats = json.loads(json.dumps(stats_of(records), allow_nan=False))
    validator = jsonschema.Draft202012Validator(
        {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/sleepStatistics"},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{e.message} at {list(e.path)}" for e in validator.iter_errors(stats)]
    assert not errors, errors[:5]
    stats["nights_detail"][0]["stage_percent"] = stats["nights_detail"][0].pop(
        "stage_percent_of_time_in_bed")  # the old name is gone from the contract
    assert list(validator.iter_errors(stats))
