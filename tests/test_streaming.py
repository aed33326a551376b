"""Streamed decode -> validate -> column stores gives the same result as the list path."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from etl_engine import validation
from etl_engine.avro import decode
from etl_engine.compute import Limits, run_cpu_stages
from etl_engine.processors import column_sink, transform
from etl_engine.record_types import reader_schema, writer_schema
from etl_engine.samples import iter_bad_files, iter_sample_files
from etl_engine.stages import DecodedFile, DomainConfig, Lineage

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
    fastavro.writer(buf, writer_schema("HeartRateRecord"), [])
    out = run_cpu_stages(buf.getvalue(), _lineage("HeartRateRecord"), LIMITS, CFG, NOW)
    assert out.quarantine_reason == "empty_file" and out.records == 0


@pytest.mark.parametrize("path", [p for t, p in iter_sample_files(ROOT / "samples")
                                  if t == "HeartRateRecord"], ids=lambda p: p.name)
def test_heart_rate_counted_order_equals_sorting(path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_engine.processors import heart_rate

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
