"""Streamed decode -> validate -> column stores gives the same result as the list path."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from etl_devtools.samples import app_writer_schema, iter_bad_files
from etl_engine.domain import validation
from etl_engine.domain.avro import decode
from etl_engine.domain.model import DecodedFile, DomainConfig, Lineage
from etl_engine.domain.record_types import reader_schema
from etl_engine.domain.transform import column_sink, transform
from etl_engine.ops.sample_files import iter_sample_files
from etl_engine.runtime.compute import Limits, run_cpu_stages

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(2_000_000, 512 * 1024 * 1024)
NOW = datetime(2026, 11, 20, tzinfo=UTC)
CFG = DomainConfig()


def _list_path(data: bytes, record_type: str) -> tuple[dict, dict | None]:
    """The pre-streaming path: decode to a list, validate into a list, transform."""
    decoded = decode(data, record_type, reader_schema(record_type),
                     max_records=LIMITS.max_records,
                     max_decompressed_bytes=LIMITS.max_decompressed_bytes)
    report = validation.validate(decoded, now_ms=int(NOW.timestamp() * 1000), config=CFG)
    if not report.passed:
        return report.to_dict(), None
    lin = Lineage("b", "raw/x.avro", "m", "c", record_type, "ik-1")
    return report.to_dict(), transform(report, lin, config=CFG, processed_at=NOW).record


def _lineage(record_type: str) -> Lineage:
    return Lineage("b", "raw/x.avro", "m", "c", record_type, "ik-1")


@pytest.mark.parametrize(("record_type", "path"), iter_sample_files(ROOT / "samples"),
                         ids=lambda v: getattr(v, "name", v))
def test_streamed_result_equals_list_result(record_type: str, path: Path) -> None:
    data = path.read_bytes()
    streamed = run_cpu_stages(data, _lineage(record_type), LIMITS, CFG, NOW)
    report, record = _list_path(data, record_type)
    assert streamed.report == report
    assert streamed.output is not None and streamed.output.record == record
    assert streamed.records == report["total_records"]
    assert {"decode", "validate", "transform"} <= set(streamed.timings)


@pytest.mark.parametrize(("record_type", "problem", "path"),
                         [(rt, problem, p) for rt, problem, expect, p
                          in iter_bad_files(ROOT / "samples") if expect == "validation"])
def test_streamed_validation_failures_equal_list_ones(record_type: str, problem: str,
                                                     path: Path) -> None:
    data = path.read_bytes()
    streamed = run_cpu_stages(data, _lineage(record_type), LIMITS, CFG, NOW)
    report, record = _list_path(data, record_type)
    assert streamed.report == report, problem
    assert (streamed.output.record if streamed.output else None) == record


def _glucose_records(n: int) -> list[dict]:
    rt = "BloodGlucoseRecord"
    path = next(p for t, p in iter_sample_files(ROOT / "samples") if t == rt)
    base = list(fastavro.reader(io.BytesIO(path.read_bytes())))
    return [dict(base[i % len(base)], metadata={**base[i % len(base)]["metadata"],
                                                "id": f"id-{i % (n - 3)}"})
            for i in range(n)]


def test_digested_ids_find_the_same_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    records = _glucose_records(60)  # ids repeat: the last three are duplicates
    plain = validation.validate(DecodedFile("BloodGlucoseRecord", records, "null", "", 0),
                                now_ms=int(NOW.timestamp() * 1000), config=CFG)
    monkeypatch.setattr(validation, "DIGEST_IDS_ABOVE", 10)
    sink = column_sink("BloodGlucoseRecord")
    digested = validation.validate(DecodedFile("BloodGlucoseRecord", records, "null", "", 0),
                                   now_ms=int(NOW.timestamp() * 1000), config=CFG, sink=sink)
    assert plain.issue_counts["duplicate_record_id"] == 3
    assert digested.to_dict() == plain.to_dict()
    assert sink is not None and len(sink) == digested.kept == len(plain.valid_records)
    assert digested.valid_records == []


def test_empty_stream_is_an_empty_file() -> None:
    buf = io.BytesIO()
    fastavro.writer(buf, app_writer_schema("HeartRateRecord"), [])
    out = run_cpu_stages(buf.getvalue(), _lineage("HeartRateRecord"), LIMITS, CFG, NOW)
    assert out.quarantine_reason == "empty_file" and out.records == 0


@pytest.mark.parametrize("path", [p for t, p in iter_sample_files(ROOT / "samples")
                                  if t == "HeartRateRecord"], ids=lambda p: p.name)
def test_heart_rate_counted_order_equals_sorting(path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_engine.domain.records import heart_rate

    records = list(fastavro.reader(io.BytesIO(path.read_bytes())))
    counted = heart_rate.compute_statistics(records, CFG)
    monkeypatch.setattr(heart_rate, "_FEW_DISTINCT", 0)  # force the plain sort
    assert heart_rate.compute_statistics(records, CFG) == counted
    values = [3.0, 1.0, 2.0, 2.0, 5.0]
    order = heart_rate._CountedOrder(values, Counter(values))
    assert [order[i] for i in range(len(order))] == [1.0, 2.0, 2.0, 3.0, 5.0]
    assert order[-1] == 5.0
    with pytest.raises(IndexError):
        order[5]


def _reference_daily_totals(records: list[dict], key: str, priority: tuple[str, ...]) -> tuple:
    """The record-dict algorithm the interval store replaced (session 2's daily_totals)."""
    from etl_engine.domain.stats.common import DAY_MS, offset_ms
    from etl_engine.domain.stats.origins import additive_total, choose_origin, union_length

    groups: dict[int, dict[str, list[dict]]] = {}
    for rec in records:
        idx = (rec["startTimeEpochMillis"] + offset_ms(rec["startZoneOffsetId"])) // DAY_MS
        groups.setdefault(idx, {}).setdefault(rec["metadata"]["dataOriginPackageName"],
                                              []).append(rec)
    totals, chosen, per_origin, multi = {}, {}, {}, 0
    for idx in sorted(groups):
        cov = {}
        for name, recs in sorted(groups[idx].items()):
            spans = [(r["startTimeEpochMillis"], r["endTimeEpochMillis"]) for r in recs]
            cov[name] = float(union_length(spans))
            per_origin.setdefault(name, {})[idx] = additive_total(
                (s, e, float(r[key]), str(r["metadata"]["id"]))
                for (s, e), r in zip(spans, recs, strict=True))
        chosen[idx] = choose_origin(cov, priority)
        totals[idx] = per_origin[chosen[idx]][idx]
        multi += len(groups[idx]) > 1
    return totals, chosen, per_origin, multi


@pytest.mark.parametrize("seed", range(40))
def test_interval_store_daily_totals_equal_the_record_algorithm(seed: int) -> None:
    """Steps / calories kept as columns (~130 bytes a record, not ~1.5 kB of dicts) give the
    totals of the record-by-record rules: overlaps within an origin once, zero-length and
    repeated intervals, several origins and zones, any input order."""
    import random

    from etl_engine.domain.stats.columns import Intervals
    from etl_engine.domain.stats.common import day_from_index
    from etl_engine.domain.stats.origins import interval_daily_totals

    rng = random.Random(seed)
    origins = ["a.phone", "b.watch", "c.ring"][: rng.choice((1, 2, 3))]
    zones = ["+00:00", "-05:00", "+09:30", None, "+14:00", "-12:00"]
    key = rng.choice(("count", "energyInKilocalories"))
    prefixes = ("id", "Id", "\u00efd", "\u65e5\u672c", "\U0001f600")  # ids sort as UTF-8
    records: list[dict] = []
    for i in range(rng.choice((1, 3, 40, 400))):
        s = 1_790_000_000_000 + rng.randint(0, 3 * 86_400_000)
        if records and rng.random() < 0.15:
            s, e = records[-1]["startTimeEpochMillis"], records[-1]["endTimeEpochMillis"]
        else:
            e = s if rng.random() < 0.1 else s + rng.randint(1, 4 * 3_600_000)
        records.append({
            "metadata": {"id": f"{rng.choice(prefixes)}-{rng.getrandbits(8):02x}-{i}",
                         "dataOriginPackageName": rng.choice(origins)},
            "startTimeEpochMillis": s, "endTimeEpochMillis": e,
            "startZoneOffsetId": rng.choice(zones),
            key: rng.randint(0, 3000) if key == "count" else rng.uniform(0, 300),
        })
    rng.shuffle(records)
    priority = tuple(rng.sample(origins, rng.choice((0, 1))))
    got = interval_daily_totals(Intervals.from_records(records, key), priority)
    totals, chosen, per_origin, multi = _reference_daily_totals(records, key, priority)
    day = day_from_index
    assert got.totals == {day(i): v for i, v in totals.items()}
    assert got.chosen == {day(i): v for i, v in chosen.items()}
    assert got.per_origin == {n: {day(i): v for i, v in d.items()} for n, d in per_origin.items()}
    assert got.multi_origin_days == multi


def test_steps_and_calories_stream_into_interval_columns() -> None:
    from etl_engine.domain.stats.columns import Intervals

    for record_type in ("StepsRecord", "ActiveCaloriesBurnedRecord"):
        assert isinstance(column_sink(record_type), Intervals)
