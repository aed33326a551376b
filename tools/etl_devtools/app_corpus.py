"""The realistic app corpus: exports shaped like the Health Sync app's, for the demo and tests.

Why: the first engine was tested only with files written in our own layout, and half of the
app's real exports never became a training record. These files follow what
``tools/etl_devtools/app_writer_schemas`` and the contract say of the real client (September
2025, one phone): Samsung Health (``com.sec.android.app.shealth``) and Oura
(``com.ouraring.oura``) report the same days and nights; steps and active calories are one
running-total record per local day (Samsung 00:00-23:59:59.999, Oura 04:00-23:59:59.999),
exported while the day is still going; Samsung sleep stages can be 30 s long, Oura's are
5 min; Oura measures HRV only during sleep; a Dexcom Stelo writes a reading every 5 min
stamped ``Z``, the other types carry the phone's offset (-05:00). Codec ``null``.

Deterministic: every value comes from ``random.Random`` seeded per file, so the expected
figures in ``docs/clinical.md`` stay true (a test checks them).
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro

Record = dict[str, Any]

SAMSUNG = "com.sec.android.app.shealth"
OURA = "com.ouraring.oura"
STELO = "com.dexcom.stelo"
PHONE_ZONE = "-05:00"
_TZ = timezone(timedelta(hours=-5))
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
_DEVICES = {
    SAMSUNG: {"manufacturer": "samsung", "model": "SM-R960", "type": "WATCH"},
    OURA: {"manufacturer": "Oura", "model": "Oura Ring Gen3", "type": "RING"},
    STELO: {"manufacturer": "Dexcom", "model": "Stelo", "type": "UNKNOWN"},
}
PREFIX = "app_"  # corpus files sit beside the other samples, named app_*.avro


def local_ms(day: int, hour: int, minute: int = 0, second: int = 0) -> int:
    """Epoch ms of a wall-clock time on September ``day``, 2025, at -05:00."""
    return int(datetime(2025, 9, day, hour, minute, second, tzinfo=_TZ).timestamp() * 1000)


def utc_ms(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2025, 9, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def _meta(rng: random.Random, origin: str, modified: int) -> Record:
    return {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "dataOriginPackageName": origin, "lastModifiedTimeEpochMillis": modified,
            "clientRecordId": None, "clientRecordVersion": 0, "device": dict(_DEVICES[origin])}


def _interval(rng: random.Random, origin: str, start: int, end: int, fetch: int,
              **fields: Any) -> Record:
    return {"metadata": _meta(rng, origin, min(end, fetch) - MIN), "startTimeEpochMillis": start,
            "endTimeEpochMillis": end, "startZoneOffsetId": PHONE_ZONE,
            "endZoneOffsetId": PHONE_ZONE, **fields, "appRecordFetchTimeEpochMillis": fetch}


# --- steps and active calories: one running total per origin and local day ------------------
def _day_totals(rng: random.Random, day: int, fetch: int, value: str,
                per_hour: Callable[[int, int], float]) -> list[Record]:
    """Samsung's and Oura's records of one local day, as they stood at ``fetch``: the same
    hours give the same amounts in every export, so a later export only adds to a day."""
    out = []
    for origin, first_hour in ((SAMSUNG, 0), (OURA, 4)):
        start, end = local_ms(day, first_hour), local_ms(day + 1, 0) - 1
        hours = min(24, (fetch - local_ms(day, 0)) / HOUR)
        total = sum(per_hour(day, h) for h in range(first_hour, math.floor(hours)))
        total *= 1.0 if origin == SAMSUNG else 0.93  # the ring counts a little less
        amount: float | int = round(total) if value == "count" else round(total, 2)
        out.append(_interval(rng, origin, start, end, fetch, **{value: amount}))
    return out


def _steps_per_hour(day: int, hour: int) -> float:
    rng = random.Random(f"steps/{day}/{hour}")
    if hour < 7 or hour >= 23:
        return rng.uniform(0, 15)
    return rng.uniform(250, 900) if hour not in (8, 12, 18) else rng.uniform(1500, 2600)


def _kcal_per_hour(day: int, hour: int) -> float:
    return _steps_per_hour(day, hour) * 0.045


def steps_files() -> dict[str, tuple[str, Callable[[random.Random], list[Record]]]]:
    """Sept 19 exported at 17:25 (in progress); Sept 19 complete + Sept 20 at 10:40."""
    d1 = local_ms(19, 17, 25)
    d2 = local_ms(20, 10, 40)
    return {
        "app_steps_0919_1725": ("StepsRecord", lambda r: _day_totals(
            r, 19, d1, "count", _steps_per_hour)),
        "app_steps_0920_1040": ("StepsRecord", lambda r: _day_totals(
            r, 19, d2, "count", _steps_per_hour) + _day_totals(
            r, 20, d2, "count", _steps_per_hour)),
        "app_calories_0919_1725": ("ActiveCaloriesBurnedRecord", lambda r: _day_totals(
            r, 19, d1, "energyInKilocalories", _kcal_per_hour)),
        "app_calories_0920_1040": ("ActiveCaloriesBurnedRecord", lambda r: _day_totals(
            r, 19, d2, "energyInKilocalories", _kcal_per_hour) + _day_totals(
            r, 20, d2, "energyInKilocalories", _kcal_per_hour)),
    }


# --- heart rate: both origins over the same windows, most samples asleep ----------------------
def _bpm(t: int, rng: random.Random) -> int:
    hour = ((t - local_ms(19, 0)) / HOUR) % 24
    asleep = hour >= 23 or hour < 7
    base = 54 + 4 * math.sin(hour) if asleep else 74 + 10 * math.sin(hour / 2)
    return max(40, round(base + rng.gauss(0, 2)))


def _heart_rate(rng: random.Random) -> list[Record]:
    """Sept 19 21:00 to Sept 20 08:00: Samsung one sample a minute in 10-minute records,
    Oura one sample every 5 minutes in hourly records; exported at 08:30."""
    fetch = local_ms(20, 8, 30)
    out = []
    for origin, record_min, step_min in ((SAMSUNG, 10, 1), (OURA, 60, 5)):
        t = local_ms(19, 21)
        while t < local_ms(20, 8):
            end = t + record_min * MIN
            samples = [{"timeEpochMillis": s + rng.randint(0, 20) * 1000,
                        "beatsPerMinute": _bpm(s, rng)}
                       for s in range(t, end, step_min * MIN)]
            out.append(_interval(rng, origin, t, end, fetch, samples=samples))
            t = end
    return out


# --- HRV: Oura, only while asleep, two nights ---------------------------------------------------
def _hrv(rng: random.Random) -> list[Record]:
    """Every 5 minutes from 23:40 to 06:50 on the nights of Sept 18 and Sept 19."""
    fetch = local_ms(20, 8, 30)
    out = []
    for night in (18, 19):
        level = rng.uniform(38, 48)
        t = local_ms(night, 23, 40)
        while t <= local_ms(night + 1, 6, 50):
            value = round(level * math.exp(rng.gauss(0, 0.2)), 1)
            out.append({"metadata": _meta(rng, OURA, fetch - HOUR), "timeEpochMillis": t,
                        "zoneOffsetId": PHONE_ZONE, "heartRateVariabilityRmssd": value,
                        "appRecordFetchTimeEpochMillis": fetch})
            t += 5 * MIN
    return out


# --- sleep: the same night from both apps ----------------------------------------------------
_CYCLE = (("LIGHT", 25), ("DEEP", 35), ("LIGHT", 15), ("REM", 15))


def _stages(rng: random.Random, start: int, end: int, unit_s: int) -> list[Record]:
    """Cycles of light, deep, REM with wake bouts of ~12 and ~6 minutes, in ``unit_s``
    steps; at Samsung's 30-s resolution light and REM are broken by many 30-60 s wakes."""
    stages: list[Record] = []
    t, i = start, 0
    wake_at = [start + 130 * MIN, start + 300 * MIN]
    while t < end:
        kind, minutes = _CYCLE[i % len(_CYCLE)]
        if wake_at and t >= wake_at[0]:
            kind, minutes = "AWAKE", 12 if len(wake_at) == 2 else 6
            wake_at.pop(0)
        stop = min(end, t + round(minutes * 60 / unit_s) * unit_s * 1000)
        if unit_s == 30 and kind in ("LIGHT", "REM"):
            stages.extend(_broken(rng, t, stop, kind))
        else:
            stages.append({"startTimeEpochMillis": t, "endTimeEpochMillis": stop,
                           "stage": kind})
        t, i = stop, i + (kind != "AWAKE")
    return stages


def _broken(rng: random.Random, start: int, end: int, kind: str) -> list[Record]:
    """A light or REM stage cut by 30-60 s wakes every 4-8 minutes, as Samsung exports it."""
    out: list[Record] = []
    t = start
    while t < end:
        stop = min(end, t + rng.randint(8, 16) * 30_000)
        out.append({"startTimeEpochMillis": t, "endTimeEpochMillis": stop, "stage": kind})
        wake = min(end, stop + rng.choice((30_000, 60_000)))
        if wake > stop and end - wake >= 60_000:
            out.append({"startTimeEpochMillis": stop, "endTimeEpochMillis": wake,
                        "stage": "AWAKE"})
            stop = wake
        t = stop
    return out


def _sleep(rng: random.Random) -> list[Record]:
    """Bedtime after midnight (00:20 Sept 20), so the night is named for Sept 19."""
    fetch = local_ms(20, 8, 30)
    out = []
    for origin, start, end, unit in ((SAMSUNG, local_ms(20, 0, 20), local_ms(20, 7, 5), 30),
                                     (OURA, local_ms(20, 0, 25), local_ms(20, 7, 0), 300)):
        out.append(_interval(rng, origin, start, end, fetch, title=None, notes=None,
                             durationMillis=end - start if origin == SAMSUNG else None,
                             stages=_stages(rng, start, end, unit)))
    return out


# --- glucose: Dexcom Stelo, readings every 5 min stamped Z ------------------------------------
def _cgm(rng: random.Random, start: int, hours: float, gaps: list[tuple[int, int]]
         ) -> list[Record]:
    fetch = start + round(hours * HOUR) + 5 * MIN
    out = []
    for i in range(round(hours * 12)):
        t = start + i * 5 * MIN + 23_000
        if any(a <= i < b for a, b in gaps):
            continue  # sensor warm-up or signal loss
        minute = (t // MIN) % 1440
        level = 125 + 50 * math.sin((minute - 480) / 1440 * 2 * math.pi) + rng.gauss(0, 6)
        level -= 40 if 40 <= i % 288 < 46 else 0  # a short overnight low most days
        out.append({"metadata": _meta(rng, STELO, t + MIN), "timeEpochMillis": t,
                    "zoneOffsetId": "Z", "levelInMilligramsPerDeciliter": float(round(level)),
                    "specimenSource": "INTERSTITIAL_FLUID", "mealType": "UNKNOWN",
                    "relationToMeal": "GENERAL", "appRecordFetchTimeEpochMillis": fetch})
    return out


def corpus() -> dict[str, tuple[str, Callable[[random.Random], list[Record]]]]:
    """File name -> (record type, builder). Export times are each file's last fetch time."""
    files = steps_files()
    files["app_heart_rate_night_0919"] = ("HeartRateRecord", _heart_rate)
    files["app_hrv_two_nights"] = ("HeartRateVariabilityRmssdRecord", _hrv)
    files["app_sleep_night_0919"] = ("SleepSessionRecord", _sleep)
    files["app_cgm_21_hours"] = ("BloodGlucoseRecord", lambda r: _cgm(
        r, utc_ms(19, 13), 21, []))
    files["app_cgm_15_days"] = ("BloodGlucoseRecord", lambda r: _cgm(
        r, utc_ms(5, 0), 15 * 24, [(0, 24), (1500, 1900)]))
    return files


def write_corpus(out_dir: Path, seed: int,
                 writer_schema: Callable[[str], dict[str, Any]]) -> list[Path]:
    """Write every corpus file under ``out_dir/{RecordType}/``; return the paths."""
    written = []
    for name, (record_type, build) in sorted(corpus().items()):
        rng = random.Random(f"{seed}/{name}")
        path = Path(out_dir) / record_type / f"{name}.avro"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fo:
            fastavro.writer(fo, writer_schema(record_type), build(rng), codec="null",
                            sync_marker=rng.randbytes(16))
        written.append(path)
    return written
