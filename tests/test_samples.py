"""The sample generator must be deterministic, decodable and realistic enough to test on."""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import tracemalloc
from datetime import date
from pathlib import Path

import fastavro
import pytest

from etl_devtools.samples import (
    generate_large,
    generate_samples,
    iter_bad_files,
)
from etl_engine.domain import record_types as rt
from etl_engine.domain.model import Record
from etl_engine.ops.sample_files import iter_sample_files

REPO_SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _decode(record_type: str, path: Path) -> tuple[list[Record], dict]:
    with path.open("rb") as fo:
        reader = fastavro.reader(fo, reader_schema=rt.reader_schema(record_type))
        return list(reader), reader.writer_schema


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    generate_samples(out, 7)
    return out


def test_all_six_types_present_and_decode(generated: Path) -> None:
    files = iter_sample_files(generated)
    assert {t for t, _ in files} == set(rt.SUPPORTED_RECORD_TYPES)
    assert 12 <= len(files) <= 24
    codecs = set()
    for record_type, path in files:
        assert path.parent.name == record_type
        records, writer = _decode(record_type, path)
        assert writer["name"] == rt.full_name(record_type)
        assert records, path
        for rec in records:
            assert (
                rec["appRecordFetchTimeEpochMillis"]
                >= rec["metadata"]["lastModifiedTimeEpochMillis"]
            )
        with path.open("rb") as fo:
            codecs.add(fastavro.reader(fo).codec)
    assert codecs == {"null", "deflate"}


def test_returns_every_written_path(tmp_path: Path) -> None:
    paths = generate_samples(tmp_path, 3, bad=False)
    assert paths == sorted(paths)
    assert set(paths) == {p for p in tmp_path.rglob("*") if p.is_file()}
    assert not (tmp_path / "bad").exists()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate_samples(tmp_path / "a", 11)
    generate_samples(tmp_path / "b", 11)
    generate_samples(tmp_path / "c", 12)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["StepsRecord/steps_watch.avro"] != c["StepsRecord/steps_watch.avro"]


def test_day_parameter_moves_the_data(tmp_path: Path) -> None:
    generate_samples(tmp_path, 7, day=date(2027, 3, 10), bad=False)
    records, _ = _decode("StepsRecord", tmp_path / "StepsRecord" / "steps_phone.avro")
    first = min(r["startTimeEpochMillis"] for r in records)
    assert first >= 1_804_654_800_000  # 2027-03-10T00:00-05:00


def test_cgm_day_is_realistic(generated: Path) -> None:
    records, _ = _decode("BloodGlucoseRecord", generated / "BloodGlucoseRecord" / "cgm_day1.avro")
    assert len(records) == 288
    times = [r["timeEpochMillis"] for r in records]
    assert all(b - a == 300_000 for a, b in itertools.pairwise(times))
    levels = [r["levelInMilligramsPerDeciliter"] for r in records]
    assert {r["specimenSource"] for r in records} == {"INTERSTITIAL_FLUID"}
    assert {r["zoneOffsetId"] for r in records} == {"-05:00"}
    below = [i for i, v in enumerate(levels) if v < 70]
    assert 3 <= len(below) <= 12  # one short hypo episode
    assert below[-1] - below[0] < 40  # ... within the night / close together or post-run
    assert max(levels) > 140  # meals raise glucose
    assert 90 < sum(levels) / len(levels) < 140
    gap_day, _ = _decode("BloodGlucoseRecord", generated / "BloodGlucoseRecord" / "cgm_day3.avro")
    assert len(gap_day) < 288  # a sensor signal loss


def test_sleep_is_realistic_and_two_origins_overlap(generated: Path) -> None:
    watch, _ = _decode("SleepSessionRecord", generated / "SleepSessionRecord" / "sleep_watch.avro")
    ring, _ = _decode(
        "SleepSessionRecord", generated / "SleepSessionRecord" / "sleep_ring_night1.avro"
    )
    assert {r["metadata"]["dataOriginPackageName"] for r in ring} == {"com.ouraring.oura"}
    night = max(watch, key=lambda r: r["endTimeEpochMillis"] - r["startTimeEpochMillis"])
    assert ring[0]["startTimeEpochMillis"] < watch[0]["endTimeEpochMillis"]
    assert watch[0]["startTimeEpochMillis"] < ring[0]["endTimeEpochMillis"]
    for session in watch + ring:
        stages = session["stages"]
        assert stages[0]["startTimeEpochMillis"] == session["startTimeEpochMillis"]
        assert stages[-1]["endTimeEpochMillis"] == session["endTimeEpochMillis"]
        for a, b in itertools.pairwise(stages):
            assert a["endTimeEpochMillis"] == b["startTimeEpochMillis"]
            assert a["startTimeEpochMillis"] < a["endTimeEpochMillis"]
    minutes: collections.Counter[str] = collections.Counter()
    for s in night["stages"]:
        minutes[s["stage"]] += (s["endTimeEpochMillis"] - s["startTimeEpochMillis"]) / 60_000
    total = sum(minutes.values())
    assert 6 * 60 < total < 9.5 * 60
    assert {"LIGHT", "DEEP", "REM", "AWAKE"} <= set(minutes)
    assert 0.1 < minutes["DEEP"] / total < 0.3
    assert 0.15 < minutes["REM"] / total < 0.3


def test_steps_two_origins_overlap(generated: Path) -> None:
    phone, _ = _decode("StepsRecord", generated / "StepsRecord" / "steps_phone.avro")
    watch, _ = _decode("StepsRecord", generated / "StepsRecord" / "steps_watch.avro")
    assert {r["metadata"]["dataOriginPackageName"] for r in phone} == {
        "com.google.android.apps.fitness"
    }
    assert {r["metadata"]["dataOriginPackageName"] for r in watch} == {
        "com.samsung.android.app.health"
    }
    days = {r["startTimeEpochMillis"] // 86_400_000 for r in phone + watch}
    assert len(days) >= 3
    assert all(r["count"] > 0 for r in phone + watch)
    overlap = any(
        p["startTimeEpochMillis"] < w["endTimeEpochMillis"]
        and w["startTimeEpochMillis"] < p["endTimeEpochMillis"]
        for p in phone[:50]
        for w in watch
    )
    assert overlap


def test_heart_rate_samples_inside_their_record(generated: Path) -> None:
    records, _ = _decode("HeartRateRecord", generated / "HeartRateRecord" / "hr_watch_day1.avro")
    sizes = [len(r["samples"]) for r in records]
    assert min(sizes) >= 1 and max(sizes) > 10
    for r in records:
        for s in r["samples"]:
            assert r["startTimeEpochMillis"] <= s["timeEpochMillis"] < r["endTimeEpochMillis"]
            assert 35 <= s["beatsPerMinute"] <= 200


def test_bad_files_fail_as_the_manifest_says(generated: Path) -> None:
    bad = iter_bad_files(generated)
    problems = {problem for _, problem, _, _ in bad}
    assert {"truncated_file", "random_bytes", "zero_bytes", "overlapping_sleep_stages"} <= problems
    assert {"writer_is_StepsRecord", "writer_schema_not_resolvable"} <= problems
    for record_type, problem, expect, path in bad:
        assert path.is_file(), path
        if expect == "decode_error":
            with pytest.raises(Exception):  # noqa: B017 - any decode failure is acceptable
                _decode(record_type, path)
        else:
            _records, _ = _decode(record_type, path)
            assert expect == "validation", problem
    glucose, _ = _decode(
        "BloodGlucoseRecord", generated / "bad/BloodGlucoseRecord/out_of_range.avro"
    )
    levels = [r["levelInMilligramsPerDeciliter"] for r in glucose]
    assert 900.0 in levels and any(math.isnan(v) for v in levels)
    assert (generated / "bad/StepsRecord/empty.avro").stat().st_size == 0


def test_committed_samples_decode_and_match_the_generator(tmp_path: Path) -> None:
    files = iter_sample_files(REPO_SAMPLES)
    if not files:
        pytest.skip("samples/ not generated in this checkout")
    for record_type, path in files:
        records, _ = _decode(record_type, path)
        assert records
    generate_samples(tmp_path, 7)
    assert _digest(tmp_path) == _digest(REPO_SAMPLES)


def test_large_glucose_streams_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "large.avro"
    tracemalloc.start()
    try:
        n = generate_large(path, "BloodGlucoseRecord", 100_000, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_000
    assert peak < 5 * 1024 * 1024  # materialised, 100k records would need ~100 MB
    with path.open("rb") as fo:
        assert (
            sum(
                1 for _ in fastavro.reader(fo, reader_schema=rt.reader_schema("BloodGlucoseRecord"))
            )
            == 100_000
        )


def test_large_heart_rate_splits_samples(tmp_path: Path) -> None:
    path = tmp_path / "hr.avro"
    assert generate_large(path, "HeartRateRecord", 20, seed=1, samples_per_record=500) == 20
    records, _ = _decode("HeartRateRecord", path)
    assert [len(r["samples"]) for r in records] == [500] * 20
    assert records[0]["endTimeEpochMillis"] <= records[1]["startTimeEpochMillis"]


@pytest.mark.parametrize("record_type", rt.SUPPORTED_RECORD_TYPES)
def test_large_every_type_is_deterministic(tmp_path: Path, record_type: str) -> None:
    a, b = tmp_path / "a.avro", tmp_path / "b.avro"
    generate_large(a, record_type, 50, seed=5, samples_per_record=10, codec="deflate")
    generate_large(b, record_type, 50, seed=5, samples_per_record=10, codec="deflate")
    assert a.read_bytes() == b.read_bytes()
    records, _ = _decode(record_type, a)
    assert len(records) == 50


def test_large_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        generate_large(tmp_path / "x.avro", "WeightRecord", 1)
