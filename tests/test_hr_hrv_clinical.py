"""Heart rate and HRV say only what the data support.

Real exports: most heart-rate samples are taken asleep, and HRV (RMSSD) is measured only
during the night's sleep. So the low heart-rate percentile is named for what it is and never
set against awake resting norms, and HRV is summarised per night rather than by clock hours.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_engine.domain import narratives
from etl_engine.domain.model import DomainConfig
from etl_engine.domain.records import heart_rate as hr_mod
from etl_engine.domain.stats.columns import Samples
from etl_engine.domain.stats.origins import covered_length
from etl_engine.domain.transform import compute_statistics

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
MIDNIGHT = 1_709_528_400_000  # 2024-03-04T00:00 at -05:00
ZONE = "-05:00"
CFG = DomainConfig()
OURA = "com.ouraring.oura"
SAMSUNG = "com.samsung.android.app.health"
HR = "HeartRateRecord"
HRV = "HeartRateVariabilityRmssdRecord"
# fixed numbers the narratives may quote (docs/clinical.md, "Fixed thresholds"): zone
# labels 1-5, the 5th percentile, zone upper bounds; the HRV 3 h night gap and trend rule
THRESHOLDS = {HR: {"1", "2", "3", "4", "5", "113", "132", "151", "170"}, HRV: {"3", "24"}}

Rec = dict[str, Any]
_ids = iter(range(10**9))


def meta(origin: str) -> Rec:
    return {"id": f"id-{next(_ids)}", "dataOriginPackageName": origin,
            "lastModifiedTimeEpochMillis": MIDNIGHT, "clientRecordId": None,
            "clientRecordVersion": 0, "device": None}


def heart(s: int, e: int, samples: list[tuple[int, float]], origin: str = SAMSUNG) -> Rec:
    return {"metadata": meta(origin), "startTimeEpochMillis": s, "endTimeEpochMillis": e,
            "startZoneOffsetId": ZONE, "endZoneOffsetId": ZONE,
            "appRecordFetchTimeEpochMillis": MIDNIGHT,
            "samples": [{"timeEpochMillis": t, "beatsPerMinute": b} for t, b in samples]}


def hrv(t: int, value: float, origin: str = OURA) -> Rec:
    return {"metadata": meta(origin), "timeEpochMillis": t, "zoneOffsetId": ZONE,
            "appRecordFetchTimeEpochMillis": MIDNIGHT, "heartRateVariabilityRmssd": value}


def hourly_records(first_hour: int, hours: int, step: int,
                   bpm: Any) -> Iterator[Rec]:
    """One record an hour from ``first_hour`` (relative to MIDNIGHT), a sample every
    ``step`` ms, rate ``bpm(i)`` for the i-th sample of the hour."""
    for h in range(first_hour, first_hour + hours):
        s = MIDNIGHT + h * HOUR
        yield heart(s, s + HOUR, [(s + i * step, bpm(i)) for i in range(HOUR // step)])


def night_and_day(asleep_bpm: int) -> list[Rec]:
    """22:00 Mar 3 - 07:00 Mar 4 asleep (a sample a minute), then 07:00-22:00 awake (a
    sample every 10 min): 540 of 630 samples (86 %) asleep."""
    night = hourly_records(-2, 9, MIN, lambda i: asleep_bpm + i % 5)
    day = hourly_records(7, 15, 10 * MIN, lambda i: 75 + 6 * (i % 6))
    return [*night, *day]


def text_of(rtype: str, stats: dict[str, Any], first: date, last: date) -> str:
    return narratives.narrative(rtype, stats, first, last)


def _printed(value: Any) -> Iterator[str]:
    """Every number of a statistics block as a narrative prints it (``num``), plus the
    digit runs of strings (dates, clock times)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield narratives.num(value)
    elif isinstance(value, str):
        yield from (str(int(x)) for x in re.findall(r"\d+", value))
        yield from re.findall(r"\d+", value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _printed(v)
    elif isinstance(value, list):
        for v in value:
            yield from _printed(v)


_NUMBER = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)?")


def assert_numbers_from_statistics(rtype: str, stats: dict[str, Any], text: str,
                                   first: date, last: date) -> None:
    """Every number in the text is a statistic exactly as printed, a date or clock-time
    part, or one of the type's fixed thresholds."""
    allowed = set(_printed(stats)) | THRESHOLDS[rtype]
    for d in (first, last):
        allowed |= {str(d.year), str(d.day)}
    for token in _NUMBER.findall(text):
        assert token.rstrip(",").lstrip("+") in allowed, f"{token!r} is not a statistic"


# --- heart rate ------------------------------------------------------------------------------
@pytest.mark.parametrize("asleep_bpm", [44, 58, 104])
def test_heart_rate_low_percentile_is_not_called_resting(asleep_bpm: int) -> None:
    records = night_and_day(asleep_bpm)
    stats = compute_statistics(HR, records, CFG)
    bpms = sorted(s["beatsPerMinute"] for r in records for s in r["samples"])
    assert stats["sample_count"] == len(bpms) == 630
    p5 = statistics.quantiles(bpms, n=100, method="inclusive")[4]
    assert stats["lowest_sustained_bpm"] == round(p5, 1)
    assert stats["lowest_sustained_method"] == "p5_of_all_samples_sleep_included"
    assert "resting_estimate_bpm" not in stats and "resting_estimate_method" not in stats
    assert stats["mean_bpm"] == round(statistics.fmean(bpms), 1)
    text = text_of(HR, stats, date(2024, 3, 3), date(2024, 3, 4))
    for banned in ("resting", "60-100", "60 to 100", "fit", "athlet", "healthcare"):
        assert banned not in text.lower(), banned
    assert (f"lowest sustained heart rate (the 5th percentile of all samples, including any "
            f"taken during sleep) was about {narratives.num(stats['lowest_sustained_bpm'])} "
            "bpm") in text
    assert_numbers_from_statistics(HR, stats, text, date(2024, 3, 3), date(2024, 3, 4))


def test_heart_rate_sufficiency() -> None:
    stats = compute_statistics(HR, night_and_day(50), CFG)
    assert stats["sufficiency"] == {"days_covered": 2, "hours_covered": 24.0,
                                    "samples_per_hour": 26.2}  # 630 / 24 = 26.25
    text = text_of(HR, stats, date(2024, 3, 3), date(2024, 3, 4))
    assert "the records cover 24 hours on 2 days, about 26.2 samples per hour" in text


def test_heart_rate_hours_covered_is_a_union_and_days_follow_the_samples() -> None:
    a = heart(MIDNIGHT + HOUR, MIDNIGHT + 2 * HOUR, [(MIDNIGHT + HOUR, 60)])
    b = heart(MIDNIGHT + 90 * MIN, MIDNIGHT + 150 * MIN, [(MIDNIGHT + 2 * HOUR, 62)])
    stats = compute_statistics(HR, [a, b], CFG)
    assert stats["sufficiency"] == {"days_covered": 1, "hours_covered": 1.5,
                                    "samples_per_hour": 1.3}
    # a record crossing local midnight: its samples decide the days
    s = MIDNIGHT - 30 * MIN
    before = heart(s, s + HOUR, [(s + i * MIN, 55) for i in range(20)])
    across = heart(s, s + HOUR, [(s + i * MIN, 55) for i in range(50)])
    assert compute_statistics(HR, [before], CFG)["sufficiency"]["days_covered"] == 1
    assert compute_statistics(HR, [across], CFG)["sufficiency"]["days_covered"] == 2


def test_heart_rate_sufficiency_without_duration() -> None:
    rec = heart(MIDNIGHT, MIDNIGHT, [(MIDNIGHT, 70)])
    stats = compute_statistics(HR, [rec], CFG)
    assert stats["sufficiency"] == {"days_covered": 1, "hours_covered": 0.0,
                                    "samples_per_hour": None}
    text = text_of(HR, stats, date(2024, 3, 4), date(2024, 3, 4))
    assert "the records cover a few minutes on 1 day." in text
    assert_numbers_from_statistics(HR, stats, text, date(2024, 3, 4), date(2024, 3, 4))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), max_size=30))
def test_covered_length_is_the_union(spans: list[tuple[int, int]]) -> None:
    starts = [s * MIN for s, _ in spans]
    ends = [(s + d) * MIN for s, d in spans]
    covered = {m for s, d in spans for m in range(s, s + d)}  # brute force, minute by minute
    assert covered_length(starts, ends) == len(covered) * MIN


def test_heart_rate_column_path_agrees() -> None:
    records = night_and_day(50)
    assert hr_mod.statistics(Samples.from_records(records), CFG) == compute_statistics(
        HR, records, CFG)


# --- HRV -------------------------------------------------------------------------------------
def two_nights() -> list[Rec]:
    """Readings every 30 min, 23:30-06:30 local (-05:00), nights of March 3 and March 4."""
    out = []
    for night in range(2):
        start = MIDNIGHT - 30 * MIN + night * DAY
        out += [hrv(start + i * 30 * MIN, 40.0 + night * 10 + i % 3) for i in range(15)]
    return out


def test_hrv_is_summarised_per_night() -> None:
    records = two_nights()
    stats = compute_statistics(HRV, records, CFG)
    values = [r["heartRateVariabilityRmssd"] for r in records]
    assert stats["mean_ms"] == round(statistics.fmean(values), 1)
    assert stats["median_ms"] == round(statistics.median(values), 1)
    assert stats["nights"] == 2
    for key in ("night_readings", "night_mean_ms", "day_readings", "day_mean_ms", "days"):
        assert key not in stats
    first, second = stats["nights_detail"]
    assert first == {"night_of": "2024-03-03", "readings": 15,
                     "mean_ms": round(statistics.fmean(values[:15]), 1),
                     "median_ms": 41.0, "first_reading_local": "23:30",
                     "last_reading_local": "06:30", "origin": OURA, "origins_present": 1}
    assert second["night_of"] == "2024-03-04" and second["mean_ms"] == round(
        statistics.fmean(values[15:]), 1)
    assert stats["period_first_day"] == "2024-03-03"
    assert stats["period_last_day"] == "2024-03-04"
    assert stats["sufficiency"] == {"nights_covered": 2, "hours_covered": 14.0,
                                    "readings_per_hour": 2.1}
    assert stats["trend_direction"] is None  # two nights are not enough
    text = text_of(HRV, stats, date(2024, 3, 3), date(2024, 3, 5))
    for banned in ("midnight", "6 a.m.", "rest of the day", "night window"):
        assert banned not in text
    assert "over 2 nights" in text
    assert (f"Nightly averages ranged from {narratives.num(first['mean_ms'])} ms (night of "
            f"March 3) to {narratives.num(second['mean_ms'])} ms (night of March 4)") in text
    assert "RMSSD differs a lot from person to person" in text
    assert_numbers_from_statistics(HRV, stats, text, date(2024, 3, 3), date(2024, 3, 5))


def test_hrv_after_midnight_belongs_to_the_previous_evening() -> None:
    stats = compute_statistics(HRV, [hrv(MIDNIGHT + HOUR, 45.0)], CFG)  # 01:00 on March 4
    assert stats["nights_detail"][0]["night_of"] == "2024-03-03"
    assert stats["period_first_day"] == stats["period_last_day"] == "2024-03-03"
    text = text_of(HRV, stats, date(2024, 3, 4), date(2024, 3, 4))
    assert "on the night of March 3 at 01:00, was 45 ms" in text
    assert_numbers_from_statistics(HRV, stats, text, date(2024, 3, 4), date(2024, 3, 4))


def test_hrv_gap_over_three_hours_splits_a_night() -> None:
    t0 = MIDNIGHT - 2 * HOUR  # 22:00
    split = [hrv(t0, 40.0), hrv(t0 + HOUR, 42.0), hrv(t0 + 4 * HOUR + MIN, 50.0)]
    stats = compute_statistics(HRV, split, CFG)
    assert stats["nights"] == 2
    assert [n["readings"] for n in stats["nights_detail"]] == [2, 1]
    assert stats["sufficiency"] == {"nights_covered": 1, "hours_covered": 1.0,
                                    "readings_per_hour": 2.0}
    kept = [hrv(t0, 40.0), hrv(t0 + HOUR, 42.0), hrv(t0 + 4 * HOUR, 50.0)]  # exactly 3 h
    one = compute_statistics(HRV, kept, CFG)
    assert one["nights"] == 1 and one["nights_detail"][0]["last_reading_local"] == "02:00"
    text = text_of(HRV, one, date(2024, 3, 3), date(2024, 3, 4))
    assert "On the night of March 3 (readings from 22:00 to 02:00), the average was 44 ms" \
        in text
    assert_numbers_from_statistics(HRV, one, text, date(2024, 3, 3), date(2024, 3, 4))


def test_hrv_one_origin_per_night() -> None:
    start = MIDNIGHT - HOUR
    oura = [hrv(start + i * 20 * MIN, 40.0) for i in range(10)]
    watch = [hrv(start + i * HOUR + 5 * MIN, 70.0, SAMSUNG) for i in range(3)]
    stats = compute_statistics(HRV, oura + watch, CFG)
    assert stats["nights"] == 1 and stats["reading_count"] == 10 and stats["mean_ms"] == 40
    assert stats["nights_detail"][0]["origin"] == OURA
    assert stats["nights_with_multiple_origins"] == 1
    assert stats["origins"][SAMSUNG] == {"readings": 3, "mean_ms": 70.0}
    pri = compute_statistics(HRV, oura + watch, DomainConfig(origin_priority=(SAMSUNG,)))
    assert pri["mean_ms"] == 70 and pri["nights_detail"][0]["origin"] == SAMSUNG


def test_hrv_trend_uses_nightly_means() -> None:
    # night 1: 10 readings 23:00-03:30 (midpoint 01:15) at 40 ms; nights 2 and 3: one
    # reading each at 01:15, 50 and 60 ms. Per night: +10 ms a day exactly.
    first = [hrv(MIDNIGHT - HOUR + i * 30 * MIN, 40.0) for i in range(10)]
    rest = [hrv(MIDNIGHT + 75 * MIN + d * DAY, v) for d, v in ((1, 50.0), (2, 60.0))]
    stats = compute_statistics(HRV, first + rest, CFG)
    assert stats["nights"] == 3 and stats["trend_basis"] == "nightly_means"
    assert stats["trend_ms_per_day"] == 10.0 and stats["trend_direction"] == "rising"
    text = text_of(HRV, stats, date(2024, 3, 3), date(2024, 3, 6))
    assert "the trend in nightly averages was rising (+10 ms per day)" in text
    assert_numbers_from_statistics(HRV, stats, text, date(2024, 3, 3), date(2024, 3, 6))
    short = compute_statistics(HRV, first + rest[:1], CFG)
    assert short["trend_direction"] is None
    assert "at least 3 nights spanning 24 hours" in text_of(HRV, short, date(2024, 3, 3),
                                                             date(2024, 3, 5))
