"""Blood glucose against the international consensus (Battelino 2019; Danne 2017).

Why these tests: real CGM exports (Dexcom Stelo via Health Sync, a reading every 5 min,
stamped Z) produced a GMI, an estimated A1c and "meets the consensus targets" from 21 hours
of readings. The consensus asks for >= 14 days with >= 70 % wear first, defines episodes
as >= 15 min beyond a limit, and GMI replaces the estimated A1c. Each test here fails on the
old behaviour (no sufficiency, no flags, old episode rule, A1c in the text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from etl_engine.domain import narratives
from etl_engine.domain.model import DomainConfig
from etl_engine.domain.records import glucose as glucose_mod
from etl_engine.domain.transform import compute_statistics

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
START = 1_758_312_000_000  # 2025-09-19T20:00:00Z
CFG = DomainConfig()
STELO = "com.dexcom.stelo"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "clinical.md"

Rec = dict[str, Any]


def reading(t: int, level: float, origin: str = STELO, zone: str | None = "Z") -> Rec:
    return {"metadata": {"id": f"{origin}-{t}", "dataOriginPackageName": origin},
            "timeEpochMillis": t, "zoneOffsetId": zone,
            "levelInMilligramsPerDeciliter": float(level)}


def series(levels: Sequence[float], start: int = START, step: int = 5 * MIN,
           zone: str | None = "Z") -> list[Rec]:
    return [reading(start + i * step, v, zone=zone) for i, v in enumerate(levels)]


def stats_of(records: list[Rec]) -> dict[str, Any]:
    return compute_statistics("BloodGlucoseRecord", records, CFG)


def episodes(levels: Sequence[float]) -> dict[str, int | None]:
    return stats_of(series(levels))["episodes"]


N = [110.0] * 5  # in range, also fixes the 5-minute sampling interval


# --- episodes --------------------------------------------------------------------------------
def test_three_readings_start_an_episode_two_do_not() -> None:
    assert episodes(N + [65] * 3 + N)["low_level_1_below_70"] == 1  # 3 x 5 min = 15 min
    assert episodes(N + [65] * 2 + N)["low_level_1_below_70"] == 0  # 10 min
    assert episodes(N + [65] * 2 + [110] + [65] * 2 + N)["low_level_1_below_70"] == 0


def test_episode_ends_only_after_three_in_range_readings() -> None:
    one = N + [65] * 3 + [110] + [65] * 3 + N  # low-normal-low: one episode
    assert episodes(one)["low_level_1_below_70"] == 1
    still_one = N + [65] * 3 + [110] * 2 + [65] + N  # 10 min back in range does not end it
    assert episodes(still_one)["low_level_1_below_70"] == 1
    two = N + [65] * 3 + [110] * 3 + [65] * 3 + N  # 15 min in range ends it
    assert episodes(two)["low_level_1_below_70"] == 2


def test_gap_over_twice_the_interval_breaks_continuity() -> None:
    def at(minutes: Sequence[int], levels: Sequence[float]) -> dict[str, int | None]:
        recs = [reading(START + m * MIN, v) for m, v in zip(minutes, levels, strict=True)]
        return stats_of(recs)["episodes"]

    steady = list(range(0, 50, 5))  # 10 readings every 5 min: the interval is 5
    after = [m + 50 for m in steady]
    # 2 lows, a gap of 15 min (> 10), 2 lows: no run of 15 minutes
    lows = [110.0] * 8 + [65, 65]
    gap = [m + 10 for m in after]  # first reading 15 min after the last low
    assert at(steady + gap, lows + [65, 65] + [110.0] * 8)["low_level_1_below_70"] == 0
    # the same with a 10-minute gap (= twice the interval) stays one run of 4 lows
    near = [m + 5 for m in after]
    assert at(steady + near, lows + [65, 65] + [110.0] * 8)["low_level_1_below_70"] == 1
    # an episode in progress ends at the gap: a new run after it is a second episode
    lows3 = [110.0] * 7 + [65, 65, 65]
    assert at(steady + gap, lows3 + [65, 65, 65] + [110.0] * 7)["low_level_1_below_70"] == 2


def test_level_2_counted_separately() -> None:
    levels = N + [50] * 3 + [60] * 3 + [50] * 3 + N  # back >= 54 for 15 min in between
    got = episodes(levels)
    assert got["low_level_1_below_70"] == 1
    assert got["low_level_2_below_54"] == 2
    assert episodes(N + [50] * 2 + [60] * 2 + N)["low_level_2_below_54"] == 0


def test_high_episodes() -> None:
    got = episodes(N + [200] * 3 + [260] * 3 + N + [190] * 2 + N)
    assert got == {"low_level_1_below_70": 0, "low_level_2_below_54": 0,
                   "high_level_1_above_180": 1, "high_level_2_above_250": 1}
    assert episodes(N + [251] * 2 + [180] + N)["high_level_1_above_180"] == 0


def test_old_keys_are_gone() -> None:
    stats = stats_of(series(N))
    for key in ("estimated_a1c_percent", "hypo_episodes_below_70", "hypo_episodes_below_54"):
        assert key not in stats


def test_jittered_timestamps_keep_the_five_minute_rule() -> None:
    jitter = [0, 2_000, -1_500, 800, -2_500, 1_200]
    recs = [reading(START + i * 5 * MIN + jitter[i % 6], v)
            for i, v in enumerate(N + [65] * 3 + N)]
    stats = stats_of(recs)
    assert stats["sufficiency"]["sampling_interval_minutes"] == 5.0
    assert stats["episodes"]["low_level_1_below_70"] == 1


def test_count_episodes_is_linear_over_runs() -> None:
    # a direct call: one segment, 1-minute sampling needs 15 readings
    values = [60.0] * 14 + [100.0] * 20 + [60.0] * 15
    segs = [(0, len(values))]
    assert glucose_mod.count_episodes(segs, values, 1.0, 70, below=True) == 1
    assert glucose_mod.count_episodes(segs, values, 5.0, 70, below=True) == 2
    # split after the 14th reading: the second segment's first run is 20 minutes of range
    assert glucose_mod.count_episodes([(0, 14), (14, 49)], values, 5.0, 70, below=True) == 2
    assert glucose_mod.count_episodes([(0, 40), (40, 49)], values, 1.0, 70, below=True) == 0


def test_sampling_interval_is_the_median_gap() -> None:
    gaps = [5 * MIN] * 6 + [60 * MIN] * 5
    assert glucose_mod.sampling_interval_minutes(gaps) == 5.0
    assert glucose_mod.sampling_interval_minutes([MIN, 2 * MIN]) == 1.5  # even: average
    assert glucose_mod.sampling_interval_minutes([3 * MIN, MIN, 2 * MIN]) == 2.0
    assert glucose_mod.sampling_interval_minutes([]) is None
    times = [0, 5 * MIN, 10 * MIN, 30 * MIN, 35 * MIN]
    assert glucose_mod.segments(glucose_mod.gaps_of(times), 5.0) == [(0, 3), (3, 5)]


# --- sufficiency -----------------------------------------------------------------------------
def test_21_hours_stamped_z_is_not_enough() -> None:
    stats = stats_of(series([100 + i % 30 for i in range(252)]))  # 21 h, into September 20
    q = stats["sufficiency"]
    assert stats["days"] == 2  # calendar days touched, kept, not coverage
    assert q["days_covered"] == 0.9 and q["hours_covered"] == 21.0
    assert q["sampling"] == "continuous" and q["sampling_interval_minutes"] == 5.0
    assert q["expected_readings"] == 252 and q["received_readings"] == 252
    assert q["wear_percent"] == 100.0
    assert q["consensus_minimum"] == {"days": 14, "wear_percent": 70}
    assert q["consensus_minimum_met"] is False
    assert stats["gmi_insufficient_data"] is True
    assert stats["control_assessment_insufficient_data"] is True
    assert stats["control_assessment"] == "meets_targets"  # kept as computed, only flagged
    assert stats["gmi_percent"] == round(3.31 + 0.02392 * stats["mean_mg_dl"], 1)
    assert stats["day_basis"] == "utc"


def test_day_basis_local_with_an_offset() -> None:
    assert stats_of(series(N, zone="-05:00"))["day_basis"] == "local"
    assert stats_of(series(N, zone=None))["day_basis"] == "utc"


def _fortnight(drop: range, days: int = 14) -> list[Rec]:
    """5-min readings over ``days`` whole days, without the slots in ``drop`` each day."""
    return [reading(START + d * DAY + k * 5 * MIN, 120 + (k % 40))
            for d in range(days) for k in range(288) if k not in drop]


def test_14_days_with_80_percent_wear_meets_the_minimum() -> None:
    stats = stats_of(_fortnight(range(100, 158)))  # 58 of 288 slots missing: 79.9 %
    q = stats["sufficiency"]
    assert q["days_covered"] == 14.0 and q["hours_covered"] == 336.0
    assert q["expected_readings"] == 14 * 288
    assert q["received_readings"] == 14 * 230 == stats["reading_count"]
    assert q["wear_percent"] == 79.9
    assert q["consensus_minimum_met"] is True
    assert stats["gmi_insufficient_data"] is False
    assert stats["control_assessment_insufficient_data"] is False


def test_14_days_with_60_percent_wear_does_not() -> None:
    stats = stats_of(_fortnight(range(100, 215)))  # 173 of 288: 60.1 %
    q = stats["sufficiency"]
    assert q["days_covered"] == 14.0 and q["wear_percent"] == 60.1
    assert q["sampling_interval_minutes"] == 5.0  # the holes do not move the median
    assert q["consensus_minimum_met"] is False
    assert stats["gmi_insufficient_data"] is True


def test_13_days_full_wear_does_not() -> None:
    stats = stats_of(_fortnight(range(0), days=13))
    assert stats["sufficiency"]["wear_percent"] == 100.0
    assert stats["sufficiency"]["consensus_minimum_met"] is False


def test_meter_readings_are_intermittent() -> None:
    recs = [reading(START + d * DAY + h * 5 * HOUR, 130.0, "com.meter")
            for d in range(20) for h in range(3)]
    stats = stats_of(recs)
    q = stats["sufficiency"]
    assert q["sampling"] == "intermittent" and q["sampling_interval_minutes"] == 300.0
    assert q["wear_percent"] is None and q["expected_readings"] is None
    assert q["consensus_minimum_met"] is False and stats["gmi_insufficient_data"] is True
    assert set(stats["episodes"].values()) == {None}
    single = stats_of([reading(START, 90.0)])["sufficiency"]
    assert single["sampling_interval_minutes"] is None and single["days_covered"] == 0.0


# --- narrative -------------------------------------------------------------------------------
def _text(stats: dict[str, Any], first: date, last: date) -> str:
    return narratives.narrative("BloodGlucoseRecord", stats, first, last)


def _thresholds() -> set[float]:
    line = next(x for x in DOCS.read_text().splitlines()
                if x.startswith("- BloodGlucoseRecord:"))
    return {float(v) for v in line.split(":", 1)[1].split(",")}


def _numbers(value: Any) -> set[float]:
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int | float):
        return {float(value)}
    if isinstance(value, dict):
        return set().union(*map(_numbers, value.values())) if value else set()
    return set()


_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def assert_numbers_from_statistics(text: str, stats: dict[str, Any], period: str) -> None:
    """Every number is a statistic as printed, or a documented threshold (dates aside)."""
    body = text.replace(narratives.cap(period), "", 1)
    assert body != text, "the period phrase opens the narrative"
    allowed = _numbers(stats) | _thresholds()
    for token in _NUMBER.findall(body):
        assert float(token.replace(",", "")) in allowed, f"{token!r} is not a statistic"


BELOW = [100 + i % 30 for i in range(252)]


def test_narrative_below_minimum_refuses_gmi_and_verdict() -> None:
    levels = BELOW[:]
    levels[20:24] = [62, 60, 58, 61]
    stats = stats_of(series(levels))
    first, last = date(2025, 9, 19), date(2025, 9, 20)
    text = _text(stats, first, last)
    assert "meets" not in text and "A1c" not in text
    gmi = re.escape(narratives.num(stats["gmi_percent"]))
    assert "GMI) is" not in text and not re.search(rf"(?<![\d.]){gmi}%", text)
    assert "Together these" not in text and "fall short" not in text
    assert "at least 14 days" in text and "70% of the expected readings" in text
    assert "no target assessment and no GMI" in text
    assert "(UTC dates)" in text
    assert "0.9 days (21 hours)" in text and "100% of the readings expected" in text
    assert "2 days" not in text  # calendar days touched are not coverage
    assert "1 low below 70 mg/dL" in text and "at least 15 minutes in a row" in text
    assert_numbers_from_statistics(text, stats, narratives.period_phrase(first, last))


def test_narrative_above_minimum_quotes_gmi() -> None:
    stats = stats_of(_fortnight(range(100, 158)))
    first, last = date(2025, 9, 19), date(2025, 10, 3)
    text = _text(stats, first, last)
    assert f"(GMI) is {narratives.num(stats['gmi_percent'])}%" in text
    assert "not a laboratory result" in text
    assert "A1c" not in text and "estimated a1c" not in text.lower()
    assert "Together these meet" in text
    assert "14 days (336 hours)" in text and "79.9%" in text
    assert_numbers_from_statistics(text, stats, narratives.period_phrase(first, last))


def test_narrative_local_days_are_not_labelled_utc() -> None:
    stats = stats_of(series(N, zone="+02:00"))
    assert "UTC" not in _text(stats, date(2025, 9, 19), date(2025, 9, 19))


def test_narrative_meter_readings() -> None:
    recs = [reading(START + h * 5 * HOUR, 130.0 + h, "com.meter") for h in range(4)]
    stats = stats_of(recs)
    day = date(2025, 9, 19)
    text = _text(stats, day, date(2025, 9, 20))
    assert "not counted" in text and "meets" not in text and "GMI) is" not in text
    assert_numbers_from_statistics(text, stats, narratives.period_phrase(day, date(2025, 9, 20)))


@pytest.mark.parametrize("levels", [BELOW, N + [50] * 4 + [300] * 4 + N, [95.0]])
def test_every_number_in_the_narrative_is_a_statistic(levels: list[float]) -> None:
    stats = stats_of(series(levels))
    first, last = date(2025, 9, 19), date(2025, 9, 20)
    assert_numbers_from_statistics(_text(stats, first, last), stats,
                                   narratives.period_phrase(first, last))
