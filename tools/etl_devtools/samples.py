"""Deterministic, realistic Health Connect Avro exports for tests, demos and load runs.

Real exports carry health data, so tests must never depend on them; these files imitate
what the phone app uploads (same writer names, plausible physiology, several data origins
that overlap) and add deliberately broken variants for the failure paths. Everything is
driven by ``random.Random`` seeded from the caller's seed, Avro sync markers included, so
the same seed always yields byte-identical files and the committed ``samples/`` can be
regenerated and diffed.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import parse_schema

from etl_devtools.app_corpus import write_corpus
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES

Record = dict[str, Any]

DEFAULT_DAY = date(2026, 11, 1)
N_DAYS = 3
ZONE = "-05:00"
_TZ = timezone(timedelta(hours=-5))
MINUTE_MS = 60_000
DAY_MINUTES = 1440

PHONE = "com.google.android.apps.fitness"
WATCH = "com.samsung.android.app.health"
RING = "com.ouraring.oura"
CGM = "com.dexcom.g7"
METER = "com.mysugr.android.companion"

_DEVICES: dict[str, Record] = {
    PHONE: {"manufacturer": "Google", "model": "Pixel 9", "type": "PHONE"},
    WATCH: {"manufacturer": "Samsung", "model": "Galaxy Watch7", "type": "WATCH"},
    RING: {"manufacturer": "Oura", "model": "Oura Ring 4", "type": "RING"},
    CGM: {"manufacturer": "Dexcom", "model": "G7", "type": "UNKNOWN"},
    METER: {"manufacturer": "Accu-Chek", "model": "Guide Me", "type": "UNKNOWN"},
}

BAD_MANIFEST = "manifest.json"
# The writer schemas the Health Sync app embeds in its exports, copied from real files (the
# contract). Files are written with these, never with our reader schemas, so every sample,
# test and benchmark input looks like what the phone uploads.
APP_SCHEMA_DIR = Path(__file__).resolve().parent / "app_writer_schemas"


@cache
def app_writer_schema(record_type: str) -> dict[str, Any]:
    """The app's parsed writer schema for ``record_type`` (callers must not mutate it)."""
    path = APP_SCHEMA_DIR / f"{record_type}.avsc"
    if not path.is_file():
        raise FileNotFoundError(f"no app writer schema for {record_type!r} at {path} "
                                "(package data: tools/etl_devtools/app_writer_schemas)")
    parsed = parse_schema(json.loads(path.read_text()))
    assert isinstance(parsed, dict)
    return parsed


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _rng(seed: int, label: str) -> random.Random:
    """Independent stream per file, so changing one file's recipe leaves the others alone."""
    return random.Random(f"{seed}/{label}")


def _midnight_ms(day: date) -> int:
    """Local midnight (fixed -05:00 offset) of ``day`` in epoch milliseconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=_TZ).timestamp() * 1000)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _metadata(
    rng: random.Random,
    origin: str,
    end_ms: int,
    fetch_ms: int,
    *,
    client_id: str | None = None,
    device: bool = True,
) -> Record:
    """Health Connect metadata: written a little after the data ends, before the fetch."""
    modified = min(end_ms + rng.randint(20_000, 15 * MINUTE_MS), fetch_ms - 1_000)
    return {
        "id": _uuid(rng),
        "dataOriginPackageName": origin,
        "lastModifiedTimeEpochMillis": modified,
        "clientRecordId": client_id,
        "clientRecordVersion": 0 if client_id is None else rng.choice((0, 0, 1)),
        "device": dict(_DEVICES[origin]) if device else None,
    }


def _write(
    path: Path,
    record_type: str,
    records: Iterable[Record],
    rng: random.Random,
    *,
    codec: str = "null",
    validate: bool = True,
    schema: dict[str, Any] | None = None,
) -> Path:
    """Write one Avro container file; the sync marker comes from ``rng`` for determinism."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fo:
        fastavro.writer(
            fo,
            schema if schema is not None else app_writer_schema(record_type),
            records,
            codec=codec,
            validator=validate,
            sync_marker=rng.randbytes(16),
        )
    return path


def _instant(meta: Record, t_ms: int, zone: str | None = ZONE, **fields: Any) -> Record:
    return {"metadata": meta, "timeEpochMillis": t_ms, "zoneOffsetId": zone, **fields}


def _interval(
    meta: Record, start_ms: int, end_ms: int, zone: str | None = ZONE, **fields: Any
) -> Record:
    return {
        "metadata": meta,
        "startTimeEpochMillis": start_ms,
        "startZoneOffsetId": zone,
        "endTimeEpochMillis": end_ms,
        "endZoneOffsetId": zone,
        **fields,
    }


def _finish(records: list[Record], fetch_ms: int) -> list[Record]:
    """Stamp the app's fetch time (one export batch) on every record, as the app does."""
    for rec in records:
        rec["appRecordFetchTimeEpochMillis"] = fetch_ms
    return records


# --------------------------------------------------------------------------------------
# one simulated person: a plan per day that all record types are derived from
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _DayPlan:
    """One day of a simulated adult: sleep, meals, a workout and minute-level activity."""

    day: date
    midnight_ms: int
    wake_min: int  # minutes after local midnight
    bed_min: int  # may exceed 1440 only conceptually; always < 1440 here
    meals: list[tuple[str, int, float]]  # (meal type, minute, glucose rise mg/dL)
    workout: tuple[int, int] | None  # (start minute, end minute)
    cadence: list[int] = field(default_factory=list)  # steps per minute
    heart_rate: list[float] = field(default_factory=list)  # bpm per minute

    def ms(self, minute: float) -> int:
        return self.midnight_ms + round(minute * MINUTE_MS)

    def asleep(self, minute: int) -> bool:
        return minute < self.wake_min or minute >= self.bed_min


def _plan_days(seed: int, first: date, n_days: int) -> list[_DayPlan]:
    rng = _rng(seed, "plan")
    plans: list[_DayPlan] = []
    for i in range(n_days):
        d = first + timedelta(days=i)
        wake = 405 + rng.randint(-15, 20)  # ~06:45
        bed = 1380 + rng.randint(-25, 30)  # ~23:00
        meals = [
            ("BREAKFAST", wake + rng.randint(30, 50), rng.uniform(45, 65)),
            ("LUNCH", 750 + rng.randint(-20, 25), rng.uniform(40, 60)),
            ("DINNER", 1140 + rng.randint(-20, 30), rng.uniform(55, 80)),
        ]
        if rng.random() < 0.6:
            meals.append(("SNACK", 930 + rng.randint(-20, 20), rng.uniform(15, 30)))
        workout = None
        if i != 1:  # the second day is a rest day
            ws = 1050 + rng.randint(-10, 15)  # ~17:30
            workout = (ws, ws + rng.randint(32, 50))
        plan = _DayPlan(d, _midnight_ms(d), wake, bed, meals, workout)
        _fill_activity(plan, rng)
        plans.append(plan)
    return plans


def _fill_activity(plan: _DayPlan, rng: random.Random) -> None:
    """Minute-level steps cadence and heart rate, consistent with sleep and workout."""
    walks = [(plan.wake_min + 60, plan.wake_min + 80), (1025, 1040), (780, 795)]
    hr = 56.0
    resting = rng.uniform(62, 70)
    for m in range(DAY_MINUTES):
        if plan.asleep(m):
            cad = 0
            target = 52 + 4 * math.sin(m / 90 * math.pi) + rng.gauss(0, 1.5)
        elif plan.workout and plan.workout[0] <= m < plan.workout[1]:
            cad = rng.randint(150, 172)
            into = m - plan.workout[0]
            target = min(158.0, 110 + 4.0 * into) + rng.gauss(0, 3)
        elif any(a <= m < b for a, b in walks):
            cad = rng.randint(95, 118)
            target = resting + 30 + rng.gauss(0, 3)
        elif rng.random() < 0.07:
            cad = rng.randint(20, 90)
            target = resting + cad * 0.25 + rng.gauss(0, 3)
        else:
            cad = rng.choice((0, 0, 0, 0, 2, 5, 8, 12))
            target = resting + rng.gauss(0, 2.5)
        hr += 0.45 * (target - hr)  # heart rate follows load with some lag
        plan.cadence.append(cad)
        plan.heart_rate.append(hr)


# --------------------------------------------------------------------------------------
# per-type builders
# --------------------------------------------------------------------------------------


def _glucose_curve(plan: _DayPlan, rng: random.Random, *, hypo: bool) -> list[float]:
    """CGM trace every 5 minutes: baseline, dawn rise, meal peaks, exercise dip, noise."""
    values: list[float] = []
    noise = 0.0
    for i in range(288):
        m = i * 5
        g = 94.0 + 10.0 * math.exp(-(((m - 330) / 70) ** 2))  # dawn phenomenon ~05:30
        for _meal, at, rise in plan.meals:
            t = m - at
            if t > 0:
                g += rise * (t / 55) * math.exp(1 - t / 55)  # peaks ~55 min after eating
        if plan.workout:
            t = m - plan.workout[0]
            if t > 0:
                g -= 18 * (t / 50) * math.exp(1 - t / 50)
        if hypo:
            g -= 44 * math.exp(-(((m - 185) / 22) ** 2))  # nocturnal low around 03:05
        noise = 0.8 * noise + rng.gauss(0, 2.2)
        values.append(float(round(max(40.0, g + noise + rng.gauss(0, 1.2)))))
    return values


def _cgm_records(
    plan: _DayPlan, rng: random.Random, fetch_ms: int, *, hypo: bool, gap: tuple[int, int] | None
) -> list[Record]:
    out: list[Record] = []
    for i, level in enumerate(_glucose_curve(plan, rng, hypo=hypo)):
        m = i * 5
        if gap and gap[0] <= m < gap[1]:
            continue  # sensor signal loss
        t = plan.ms(m) + 17_000  # CGM clocks are not aligned to the minute
        meta = _metadata(rng, CGM, t, fetch_ms, client_id=f"g7-{t // 1000}")
        out.append(
            _instant(
                meta,
                t,
                levelInMilligramsPerDeciliter=level,
                specimenSource="INTERSTITIAL_FLUID",
                mealType="UNKNOWN",
                relationToMeal="GENERAL",
            )
        )
    return _finish(out, fetch_ms)


def _fingerstick_records(plans: list[_DayPlan], rng: random.Random, fetch_ms: int) -> list[Record]:
    """Capillary meter readings with meal context, as a logging app would export."""
    out: list[Record] = []
    for plan in plans:
        curve = _glucose_curve(plan, random.Random(rng.getrandbits(64)), hypo=False)
        points = [(plan.wake_min + 5, "UNKNOWN", "FASTING")]
        for meal, at, _rise in plan.meals[:3]:
            points.append((at - 10, meal, "BEFORE_MEAL"))
            points.append((at + 120, meal, "AFTER_MEAL"))
        for minute, meal, relation in points:
            t = plan.ms(minute)
            level = float(round(curve[min(287, minute // 5)] + rng.gauss(0, 4)))
            out.append(
                _instant(
                    _metadata(rng, METER, t, fetch_ms, device=False),
                    t,
                    levelInMilligramsPerDeciliter=level,
                    specimenSource="CAPILLARY_BLOOD",
                    mealType=meal,
                    relationToMeal=relation,
                )
            )
    return _finish(out, fetch_ms)


def _heart_rate_records(plan: _DayPlan, rng: random.Random, fetch_ms: int) -> list[Record]:
    """Watch HR: consecutive records of 1..30 one-per-minute samples, a gap while charging."""
    out: list[Record] = []
    charging = (1200 + rng.randint(0, 30), 1245 + rng.randint(0, 30))
    m = 0
    while m < DAY_MINUTES:
        length = 1 if rng.random() < 0.08 else rng.randint(2, 30)
        end = min(DAY_MINUTES, m + length)
        minutes = [x for x in range(m, end) if not charging[0] <= x < charging[1]]
        if minutes:
            samples = [
                {
                    "timeEpochMillis": plan.ms(x) + rng.randint(0, 59) * 1000,
                    "beatsPerMinute": max(35, round(plan.heart_rate[x] + rng.gauss(0, 1.5))),
                }
                for x in minutes
            ]
            start_ms, end_ms = plan.ms(minutes[0]), plan.ms(minutes[-1] + 1)
            meta = _metadata(rng, WATCH, end_ms, fetch_ms)
            out.append(_interval(meta, start_ms, end_ms, samples=samples))
        m = end
    return _finish(out, fetch_ms)


def _hrv_records(
    plans: list[_DayPlan], rng: random.Random, origin: str, fetch_ms: int, *, night_only: bool
) -> list[Record]:
    """RMSSD in ms: higher and steadier at night, lower in the day (log-normal spread)."""
    out: list[Record] = []
    for plan in plans:
        night = [plan.wake_min - 250, plan.wake_min - 100]
        day = [plan.wake_min + 25, 840 + rng.randint(-30, 30), plan.bed_min - 60]
        for minute, base in [(x, 52.0) for x in night] + [(x, 34.0) for x in day]:
            if night_only and base < 50:
                continue
            t = plan.ms(minute) + rng.randint(0, 59_000)
            value = round(base * math.exp(rng.gauss(0, 0.18)), 1)
            zone = None if origin == RING else ZONE
            out.append(
                _instant(
                    _metadata(rng, origin, t, fetch_ms), t, zone, heartRateVariabilityRmssd=value
                )
            )
    return _finish(out, fetch_ms)


def _sleep_stages(rng: random.Random, start_ms: int, end_ms: int) -> list[Record]:
    """Contiguous stages in ~90-minute cycles: deep early in the night, REM later."""
    stages: list[Record] = []
    t = start_ms

    def add(stage: str, minutes: float) -> None:
        nonlocal t
        if t >= end_ms:
            return
        stop = min(end_ms, t + int(minutes * MINUTE_MS))
        stages.append({"startTimeEpochMillis": t, "endTimeEpochMillis": stop, "stage": stage})
        t = stop

    add("AWAKE", rng.uniform(4, 14))
    cycle = 0
    while end_ms - t > 20 * MINUTE_MS:
        add("LIGHT", rng.uniform(18, 32))
        if cycle < 4:
            add("DEEP", max(5.0, rng.uniform(28, 42) - 9 * cycle))
        add("LIGHT", rng.uniform(8, 16))
        add("REM", min(35.0, rng.uniform(6, 12) + 6 * cycle))
        if rng.random() < 0.45:
            add("AWAKE", rng.uniform(1, 5))
        cycle += 1
    add("LIGHT", max(1.0, (end_ms - t) / MINUTE_MS - 3))
    add("AWAKE", (end_ms - t) / MINUTE_MS)
    return stages


def _sleep_records(
    plans: list[_DayPlan], rng: random.Random, origin: str, fetch_ms: int, *, nights: int
) -> list[Record]:
    out: list[Record] = []
    for i in range(nights):
        plan, nxt = plans[i], plans[i + 1]
        jitter = 0 if origin == WATCH else rng.randint(4, 12)  # the ring sees it a bit later
        start = plan.ms(plan.bed_min + jitter)
        end = nxt.ms(nxt.wake_min + (0 if origin == WATCH else rng.randint(-3, 6)))
        stages = _sleep_stages(rng, start, end)
        meta = _metadata(rng, origin, end, fetch_ms)
        out.append(
            _interval(
                meta,
                start,
                end,
                title=None,
                notes=None,
                durationMillis=end - start if origin == WATCH else None,
                stages=stages,
            )
        )
        if origin == WATCH and i == 1:  # an afternoon nap on the rest day
            nap_start = nxt.ms(900)
            nap_end = nap_start + 26 * MINUTE_MS
            out.append(
                _interval(
                    _metadata(rng, origin, nap_end, fetch_ms),
                    nap_start,
                    nap_end,
                    title="Nap",
                    notes=None,
                    durationMillis=nap_end - nap_start,
                    stages=[
                        {
                            "startTimeEpochMillis": nap_start,
                            "endTimeEpochMillis": nap_start + 4 * MINUTE_MS,
                            "stage": "AWAKE",
                        },
                        {
                            "startTimeEpochMillis": nap_start + 4 * MINUTE_MS,
                            "endTimeEpochMillis": nap_end,
                            "stage": "LIGHT",
                        },
                    ],
                )
            )
    out.sort(key=lambda r: r["startTimeEpochMillis"])
    return _finish(out, fetch_ms)


def _bucket_records(
    plans: list[_DayPlan],
    rng: random.Random,
    origin: str,
    fetch_ms: int,
    *,
    kind: str,
    bucket_min: int,
) -> list[Record]:
    """Steps or active kcal summed over fixed buckets; empty buckets are not written.

    The phone is left in the locker during workouts and under-counts a little otherwise,
    so phone and watch overlap but disagree, as real multi-origin data does.
    """
    out: list[Record] = []
    for plan in plans:
        for b in range(0, DAY_MINUTES, bucket_min):
            total = 0.0
            for m in range(b, b + bucket_min):
                cad = plan.cadence[m]
                if origin == PHONE:
                    if plan.workout and plan.workout[0] <= m < plan.workout[1]:
                        continue
                    cad = int(cad * 0.9)
                if kind == "steps":
                    total += cad
                else:
                    total += 0.0 if cad == 0 else 0.2 + cad * (0.035 if cad < 140 else 0.068)
            if total < (1 if kind == "steps" else 0.5):
                continue
            start, end = plan.ms(b), plan.ms(b + bucket_min)
            meta = _metadata(rng, origin, end, fetch_ms)
            if kind == "steps":
                count = round(total * rng.uniform(0.97, 1.03))
                out.append(_interval(meta, start, end, count=count))
            else:
                kcal = round(total * rng.uniform(0.95, 1.05), 2)
                out.append(_interval(meta, start, end, energyInKilocalories=kcal))
    return _finish(out, fetch_ms)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


_Build = Callable[[random.Random], list[Record]]


@dataclass(frozen=True, slots=True)
class _GoodFile:
    """One good export: where it goes, its random stream's label and how to build it."""

    record_type: str
    name: str  # file name without ``.avro``
    label: str  # the ``_rng`` label: changing it changes the file's bytes
    build: _Build
    codec: str = "null"


def _cgm_day(plan: _DayPlan, index: int) -> _Build:
    """Day 1 has a nocturnal low, day 3 a sensor signal loss in the afternoon."""
    gap = (840, 900) if index == 2 else None
    return lambda rng: _cgm_records(
        plan, rng, plan.ms(DAY_MINUTES + 60), hypo=index == 0, gap=gap
    )


def _heart_rate_day(plan: _DayPlan) -> _Build:
    return lambda rng: _heart_rate_records(plan, rng, plan.ms(DAY_MINUTES + 60))


def _daily_files(days: list[_DayPlan]) -> list[_GoodFile]:
    """CGM and watch heart rate come one file per day, each fetched at 01:00 the next day."""
    cgm = [
        _GoodFile("BloodGlucoseRecord", f"cgm_day{i + 1}", f"cgm{i}", _cgm_day(plan, i),
                  codec="deflate" if i == 1 else "null")
        for i, plan in enumerate(days)
    ]
    heart_rate = [
        _GoodFile("HeartRateRecord", f"hr_watch_day{i + 1}", f"hr{i}", _heart_rate_day(plan))
        for i, plan in enumerate(days)
    ]
    return cgm + heart_rate


def _batch_files(plans: list[_DayPlan], fetch: int) -> list[_GoodFile]:
    """The exports that span all days and share the one fetch the morning after."""
    days = plans[:N_DAYS]
    return [
        _GoodFile("BloodGlucoseRecord", "fingerstick", "fs",
                  lambda r: _fingerstick_records(days, r, fetch)),
        _GoodFile("HeartRateVariabilityRmssdRecord", "hrv_watch", "hrv-watch",
                  lambda r: _hrv_records(days, r, WATCH, fetch, night_only=False)),
        _GoodFile("HeartRateVariabilityRmssdRecord", "hrv_ring", "hrv-ring",
                  lambda r: _hrv_records(days, r, RING, fetch, night_only=True)),
        _GoodFile("SleepSessionRecord", "sleep_watch", "sleep-watch",
                  lambda r: _sleep_records(plans, r, WATCH, fetch, nights=N_DAYS)),
        _GoodFile("SleepSessionRecord", "sleep_ring_night1", "sleep-ring",
                  lambda r: _sleep_records(plans, r, RING, fetch, nights=1)),
        _GoodFile("StepsRecord", "steps_phone", "steps-phone",
                  lambda r: _bucket_records(days, r, PHONE, fetch, kind="steps", bucket_min=15)),
        _GoodFile("StepsRecord", "steps_watch", "steps-watch",
                  lambda r: _bucket_records(days, r, WATCH, fetch, kind="steps", bucket_min=10)),
        _GoodFile("ActiveCaloriesBurnedRecord", "calories_watch", "kcal-watch",
                  lambda r: _bucket_records(days, r, WATCH, fetch, kind="kcal", bucket_min=15)),
        _GoodFile("ActiveCaloriesBurnedRecord", "calories_phone_day1", "kcal-phone",
                  lambda r: _bucket_records(days[:1], r, PHONE, fetch, kind="kcal",
                                            bucket_min=30)),
    ]


def _write_good(out_dir: Path, seed: int, good: _GoodFile) -> Path:
    """Records and sync marker come from the file's own stream, in that order."""
    rng = _rng(seed, good.label)
    path = out_dir / good.record_type / f"{good.name}.avro"
    return _write(path, good.record_type, good.build(rng), rng, codec=good.codec)


def generate_samples(
    out_dir: Path, seed: int = 7, *, day: date | None = None, bad: bool = True,
    app: bool = True,
) -> list[Path]:
    """Write a few days of good exports for all six types (and bad variants) under out_dir.

    Layout: ``{out_dir}/{RecordType}/{name}.avro``; with ``app``, the realistic app corpus
    (``app_corpus.py``: September 2025, days exported while still going) beside them as
    ``app_*.avro``; and, with ``bad``,
    ``{out_dir}/bad/{ClaimedRecordType}/{name}.avro`` plus ``bad/manifest.json`` saying
    what is wrong with each. Returns every path written, sorted.
    """
    out_dir = Path(out_dir)
    first = day or DEFAULT_DAY
    plans = _plan_days(seed, first, N_DAYS + 1)  # the extra day holds the last wake-up
    fetch = plans[N_DAYS].ms(9 * 60)  # the app exported the morning after the last night
    goods = _daily_files(plans[:N_DAYS]) + _batch_files(plans, fetch)
    written = [_write_good(out_dir, seed, good) for good in goods]
    if app:
        written.extend(write_corpus(out_dir, seed, app_writer_schema))
    if bad:
        written.extend(_generate_bad(out_dir / "bad", seed, plans[0], fetch))
    return sorted(written)


# --------------------------------------------------------------------------------------
# deliberately broken files
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _BadFiles:
    """Writes the broken files and keeps the manifest that says what is wrong with each."""

    bad_dir: Path
    seed: int
    fetch: int
    manifest: dict[str, dict[str, str]] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    def put(self, rt: str, name: str, problem: str, expect: str, path: Path) -> None:
        self.manifest[f"{rt}/{name}"] = {"record_type": rt, "problem": problem, "expect": expect}
        self.written.append(path)

    def avro(
        self, rt: str, name: str, problem: str, records: list[Record],
        *, schema: dict[str, Any] | None = None,
    ) -> None:
        """Only a foreign writer schema makes a file undecodable; bad values still decode."""
        rng = _rng(self.seed, f"bad-{rt}-{name}")
        path = _write(self.bad_dir / rt / name, rt, _finish(records, self.fetch), rng,
                      schema=schema)
        self.put(rt, name, problem, "validation" if schema is None else "decode_error", path)

    def finish(self) -> list[Path]:
        """Write the manifest last, so it lists every file that exists."""
        mpath = self.bad_dir / BAD_MANIFEST
        mpath.write_text(json.dumps(dict(sorted(self.manifest.items())), indent=2) + "\n")
        self.written.append(mpath)
        return self.written


# Each builder below draws from the one "bad-values" stream, in _BAD_VALUE_FILES order.
_BadBuild = Callable[[random.Random, _DayPlan, int], list[Record]]


def _cgm_instant(meta: Record, t_ms: int, level: float, zone: str | None = ZONE) -> Record:
    return _instant(
        meta,
        t_ms,
        zone,
        levelInMilligramsPerDeciliter=level,
        specimenSource="INTERSTITIAL_FLUID",
        mealType="UNKNOWN",
        relationToMeal="GENERAL",
    )


def _bad_glucose_levels(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Impossible values between plausible ones."""
    t0 = plan.ms(600)
    levels = [110.0, 900.0, 112.0, -5.0, 0.0, 115.0, math.nan, 1200.0, math.inf, 118.0, 2.0]
    return [
        _cgm_instant(_metadata(rng, CGM, t0 + i * 300_000, fetch), t0 + i * 300_000, v)
        for i, v in enumerate(levels)
    ]


def _bad_glucose_timestamps(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Epoch 0, the future, a duplicate id, a negative time and an impossible offset."""
    t0 = plan.ms(600)
    stamps = [0, fetch + 3 * 86_400_000, t0, t0, -1_000]
    records = [
        _cgm_instant(_metadata(rng, CGM, max(t, 0), fetch), t, 105.0,
                     "+99:00" if i == 4 else ZONE)
        for i, t in enumerate(stamps)
    ]
    records[3]["metadata"]["id"] = records[2]["metadata"]["id"]
    return records


def _bad_heart_rate(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Impossible bpm, a sample outside its record, an inverted interval."""
    hr_start = plan.ms(600)
    return [
        _interval(
            _metadata(rng, WATCH, hr_start + 600_000, fetch),
            hr_start,
            hr_start + 600_000,
            samples=[
                {"timeEpochMillis": hr_start + k * 60_000, "beatsPerMinute": bpm}
                for k, bpm in enumerate([72, 0, 74, 400, -1, 75, 76, 77, 78, 79])
            ],
        ),
        _interval(
            _metadata(rng, WATCH, hr_start + 1_200_000, fetch),
            hr_start + 600_000,
            hr_start + 1_200_000,
            samples=[{"timeEpochMillis": hr_start + 9_000_000, "beatsPerMinute": 80}],
        ),
        _interval(
            _metadata(rng, WATCH, hr_start, fetch),
            hr_start + 1_800_000,
            hr_start + 1_200_000,
            samples=[{"timeEpochMillis": hr_start + 1_500_000, "beatsPerMinute": 70}],
        ),
    ]


def _bad_sleep(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Overlapping stages, a stage past the session end, an inverted session."""
    s0 = plan.ms(plan.bed_min)
    h = 3_600_000
    stages = [
        {"startTimeEpochMillis": s0, "endTimeEpochMillis": s0 + h, "stage": "LIGHT"},
        {"startTimeEpochMillis": s0 + h // 2, "endTimeEpochMillis": s0 + 2 * h, "stage": "DEEP"},
        {"startTimeEpochMillis": s0 + 2 * h, "endTimeEpochMillis": s0 + 3 * h, "stage": "REM"},
        {
            "startTimeEpochMillis": s0 + 2 * h + 600_000,
            "endTimeEpochMillis": s0 + 9 * h,
            "stage": "LIGHT",
        },
    ]
    return [
        _interval(_metadata(rng, WATCH, s0 + 8 * h, fetch), s0, s0 + 8 * h,
                  title=None, notes=None, durationMillis=8 * h, stages=stages),
        _interval(_metadata(rng, WATCH, s0, fetch), s0 + 9 * h, s0 + 8 * h,
                  title=None, notes=None, durationMillis=-h, stages=[]),
    ]


def _ten_minutes(t0: int, k: int) -> tuple[int, int]:
    """The ``k``-th ten-minute bucket from ``t0``: (start, end)."""
    return t0 + k * 600_000, t0 + (k + 1) * 600_000


def _bad_steps(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Negative, absurd, and an inverted interval."""
    t0 = plan.ms(600)
    steps = [
        _interval(_metadata(rng, PHONE, _ten_minutes(t0, k)[1], fetch), *_ten_minutes(t0, k),
                  count=c)
        for k, c in enumerate([640, -50, 1_000_000, 710])
    ]
    start, end = _ten_minutes(t0, 9)
    steps.append(_interval(_metadata(rng, PHONE, t0, fetch), end, start, count=100))
    return steps


def _bad_calories(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    """Negative, absurd and NaN energy."""
    t0 = plan.ms(600)
    return [
        _interval(_metadata(rng, WATCH, _ten_minutes(t0, k)[1], fetch), *_ten_minutes(t0, k),
                  energyInKilocalories=e)
        for k, e in enumerate([35.5, -12.0, 50_000.0, math.nan])
    ]


def _no_records(rng: random.Random, plan: _DayPlan, fetch: int) -> list[Record]:
    return []


# (claimed record type, file name, problem, builder): files that decode but must not pass.
_BAD_VALUE_FILES: tuple[tuple[str, str, str, _BadBuild], ...] = (
    ("BloodGlucoseRecord", "out_of_range.avro", "out_of_range_values", _bad_glucose_levels),
    ("BloodGlucoseRecord", "bad_timestamps.avro", "bad_timestamps_and_duplicate_id",
     _bad_glucose_timestamps),
    ("HeartRateRecord", "out_of_range.avro", "out_of_range_and_inverted_interval",
     _bad_heart_rate),
    ("SleepSessionRecord", "overlapping_stages.avro", "overlapping_sleep_stages", _bad_sleep),
    ("StepsRecord", "out_of_range.avro", "out_of_range_values", _bad_steps),
    ("ActiveCaloriesBurnedRecord", "out_of_range.avro", "out_of_range_values", _bad_calories),
    ("ActiveCaloriesBurnedRecord", "no_records.avro", "no_records", _no_records),
)


def _write_truncated(out: _BadFiles, plan: _DayPlan) -> list[Record]:
    """A good CGM file cut at 60 %; returns its records for the schema-mismatch file."""
    good_rng = _rng(out.seed, "bad-truncated-src")
    cgm = _cgm_records(plan, good_rng, out.fetch, hypo=False, gap=None)
    tmp = out.bad_dir / "BloodGlucoseRecord" / "truncated.avro"
    _write(tmp, "BloodGlucoseRecord", cgm, good_rng)
    data = tmp.read_bytes()
    tmp.write_bytes(data[: int(len(data) * 0.6)])
    out.put("BloodGlucoseRecord", "truncated.avro", "truncated_file", "decode_error", tmp)
    return cgm


def _write_wrong_record_type(out: _BadFiles, plan: _DayPlan) -> None:
    """A valid steps export filed as glucose: the writer schema names the wrong type."""
    steps_ok = _bucket_records(
        [plan], _rng(out.seed, "bad-wrong"), PHONE, out.fetch, kind="steps", bucket_min=60
    )
    path = _write(
        out.bad_dir / "BloodGlucoseRecord" / "wrong_record_type.avro",
        "StepsRecord",
        steps_ok,
        _rng(out.seed, "bad-wrong-sync"),
    )
    out.put("BloodGlucoseRecord", "wrong_record_type.avro", "writer_is_StepsRecord",
            "decode_error", path)


def _write_incompatible_schema(out: _BadFiles, cgm: list[Record]) -> None:
    """A glucose writer schema our reader cannot resolve (string level, field dropped)."""
    incompatible = json.loads(
        json.dumps(
            {k: v for k, v in app_writer_schema("BloodGlucoseRecord").items()
             if not k.startswith("__")}
        )
    )
    for fld in incompatible["fields"]:
        if fld["name"] == "levelInMilligramsPerDeciliter":
            fld["type"] = "string"
    incompatible["fields"] = [f for f in incompatible["fields"] if f["name"] != "specimenSource"]
    mismatched = [
        {k: v for k, v in r.items() if k != "specimenSource"}
        | {"levelInMilligramsPerDeciliter": str(r["levelInMilligramsPerDeciliter"])}
        for r in cgm[:12]
    ]
    out.avro("BloodGlucoseRecord", "incompatible_schema.avro", "writer_schema_not_resolvable",
             mismatched, schema=incompatible)


def _write_raw_bytes(out: _BadFiles) -> None:
    """Files that are not Avro at all, or stop after the magic."""
    raw_rng = _rng(out.seed, "bad-bytes")
    targets = [
        ("HeartRateVariabilityRmssdRecord", "random_bytes.avro", "random_bytes",
         raw_rng.randbytes(4096)),
        ("SleepSessionRecord", "corrupt_header.avro", "corrupt_header",
         b"Obj\x01" + raw_rng.randbytes(2048)),
        ("StepsRecord", "empty.avro", "zero_bytes", b""),
    ]
    for rt, name, problem, payload in targets:
        p = out.bad_dir / rt / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)
        out.put(rt, name, problem, "decode_error", p)


def _generate_bad(bad_dir: Path, seed: int, plan: _DayPlan, fetch: int) -> list[Path]:
    """Broken inputs: bad values (decode fine, fail validation) and undecodable files."""
    out = _BadFiles(bad_dir, seed, fetch)
    rng = _rng(seed, "bad-values")
    for rt, name, problem, build in _BAD_VALUE_FILES:
        out.avro(rt, name, problem, build(rng, plan, fetch))
    cgm = _write_truncated(out, plan)
    _write_wrong_record_type(out, plan)
    _write_incompatible_schema(out, cgm)
    _write_raw_bytes(out)
    return out.finish()


def iter_bad_files(directory: Path) -> list[tuple[str, str, str, Path]]:
    """(claimed record type, problem, expected outcome, path) from ``bad/manifest.json``.

    ``directory`` is the sample root (the parent of ``bad/``). Expected outcome is
    ``decode_error`` (the file cannot be decoded as the claimed type) or ``validation``
    (it decodes, but the values must be rejected or flagged).
    """
    bad_dir = Path(directory) / "bad"
    manifest: dict[str, dict[str, str]] = json.loads((bad_dir / BAD_MANIFEST).read_text())
    return [
        (entry["record_type"], entry["problem"], entry["expect"], bad_dir / rel)
        for rel, entry in manifest.items()
    ]


# --------------------------------------------------------------------------------------
# large files for load and memory tests
# --------------------------------------------------------------------------------------


# Every large-file builder: (n_records, rng, first midnight, fetch, samples per record).
_LargeBuild = Callable[[int, random.Random, int, int, int], Iterator[Record]]


def _large_glucose(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    """A reading every 5 minutes, a random walk pulled back towards 110 mg/dL."""
    glucose = 110.0
    for i in range(n_records):
        t = t0 + i * 300_000
        glucose += 0.1 * (110.0 - glucose) + rng.gauss(0, 4)
        level = float(round(min(400.0, max(40.0, glucose))))
        yield _instant(
            _metadata(rng, CGM, t, fetch),
            t,
            levelInMilligramsPerDeciliter=level,
            specimenSource="INTERSTITIAL_FLUID",
            mealType="UNKNOWN",
            relationToMeal="GENERAL",
            appRecordFetchTimeEpochMillis=fetch,
        )


def _large_heart_rate(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    """Back-to-back records of one sample a second: the sample count is what grows."""
    for i in range(n_records):
        start = t0 + i * samples_per_record * 1_000
        samples = [
            {"timeEpochMillis": start + k * 1_000, "beatsPerMinute": rng.randint(55, 150)}
            for k in range(samples_per_record)
        ]
        end = start + samples_per_record * 1_000
        yield _interval(
            _metadata(rng, WATCH, end, fetch),
            start,
            end,
            samples=samples,
            appRecordFetchTimeEpochMillis=fetch,
        )


def _large_hrv(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    for i in range(n_records):
        t = t0 + i * 300_000
        yield _instant(
            _metadata(rng, WATCH, t, fetch),
            t,
            heartRateVariabilityRmssd=round(40 * math.exp(rng.gauss(0, 0.25)), 1),
            appRecordFetchTimeEpochMillis=fetch,
        )


def _large_sleep(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    """One night per record, from 23:00, with a full set of stages."""
    for i in range(n_records):
        start = t0 + i * 86_400_000 + 23 * 3_600_000
        end = start + rng.randint(6 * 60, 9 * 60) * MINUTE_MS
        yield _interval(
            _metadata(rng, WATCH, end, fetch),
            start,
            end,
            title=None,
            notes=None,
            durationMillis=end - start,
            stages=_sleep_stages(rng, start, end),
            appRecordFetchTimeEpochMillis=fetch,
        )


def _large_buckets(
    n_records: int, rng: random.Random, t0: int, fetch: int, draw: Callable[[], Record]
) -> Iterator[Record]:
    """Ten-minute phone buckets; ``draw`` gives each bucket's value field."""
    for i in range(n_records):
        start = t0 + i * 600_000
        end = start + 600_000
        fields = draw()  # before the metadata: the stream's order fixes the file's bytes
        yield _interval(
            _metadata(rng, PHONE, end, fetch),
            start,
            end,
            **fields,
            appRecordFetchTimeEpochMillis=fetch,
        )


def _large_steps(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    return _large_buckets(n_records, rng, t0, fetch, lambda: {"count": rng.randint(0, 1500)})


def _large_calories(
    n_records: int, rng: random.Random, t0: int, fetch: int, samples_per_record: int
) -> Iterator[Record]:
    return _large_buckets(
        n_records, rng, t0, fetch,
        lambda: {"energyInKilocalories": round(rng.uniform(0, 90), 2)},
    )


_LARGE_BUILDERS: dict[str, _LargeBuild] = {
    "BloodGlucoseRecord": _large_glucose,
    "HeartRateRecord": _large_heart_rate,
    "HeartRateVariabilityRmssdRecord": _large_hrv,
    "SleepSessionRecord": _large_sleep,
    "StepsRecord": _large_steps,
    "ActiveCaloriesBurnedRecord": _large_calories,
}


def _large_records(
    record_type: str, n_records: int, rng: random.Random, samples_per_record: int
) -> Iterator[Record]:
    """Yield records one at a time so a million-record file never sits in memory."""
    t0 = _midnight_ms(DEFAULT_DAY)
    fetch = t0 + 10 * 365 * 86_400_000  # after any generated time
    build = _LARGE_BUILDERS[record_type]
    yield from build(n_records, rng, t0, fetch, samples_per_record)


def generate_large(
    path: Path,
    record_type: str,
    n_records: int,
    seed: int = 7,
    *,
    samples_per_record: int = 1000,
    codec: str = "null",
) -> int:
    """Stream ``n_records`` records of one type into a single Avro file; return the count.

    Records come from a generator, so memory stays flat however large ``n_records`` is.
    For ``HeartRateRecord`` each record carries ``samples_per_record`` samples, so a
    million samples is ``n_records=1000`` with the default (one record is held in memory
    at a time, hence a single 1M-sample record would need ``samples_per_record=10**6``).
    """
    if record_type not in SUPPORTED_RECORD_TYPES:
        raise KeyError(f"unsupported record type: {record_type!r}")
    rng = _rng(seed, f"large-{record_type}")
    sync_rng = _rng(seed, f"large-sync-{record_type}")
    _write(
        Path(path),
        record_type,
        _large_records(record_type, n_records, rng, samples_per_record),
        sync_rng,
        codec=codec,
        validate=False,
    )
    return n_records
