"""Decoding without schema resolution when the writer schema reads like ours: same records."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import fastavro
import pytest

from etl_engine.domain.avro import decode, decode_stream, needs_resolution, scan_container
from etl_engine.domain.record_types import reader_schema
from etl_engine.errors import PermanentError
from etl_engine.ops.sample_files import iter_sample_files

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {"max_records": 100_000, "max_decompressed_bytes": 64 * 1024 * 1024}


def _plain(schema: dict) -> dict:
    """A parsed schema back to plain JSON (what a writer puts in the header)."""
    return json.loads(json.dumps({k: v for k, v in schema.items() if not k.startswith("__")}))


def _container(schema: dict, records: list[dict]) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records)
    return buf.getvalue()


def _resolved(data: bytes, record_type: str) -> list[dict]:
    return list(fastavro.reader(io.BytesIO(data), reader_schema=reader_schema(record_type)))


@pytest.mark.parametrize(("record_type", "path"), iter_sample_files(ROOT / "samples"),
                         ids=lambda v: getattr(v, "name", v))
def test_samples_decode_exactly_as_with_resolution(record_type: str, path: Path) -> None:
    data = path.read_bytes()
    scan = scan_container(data, **LIMITS)
    assert not needs_resolution(scan.writer, scan.raw_schema, reader_schema(record_type))
    out = decode(data, record_type, reader_schema(record_type), **LIMITS)
    assert out.records == _resolved(data, record_type)


def _steps_records(schema: dict, extra: dict | None = None) -> list[dict]:
    rec = {
        "metadata": {"id": "a", "dataOriginPackageName": "com.example",
                     "lastModifiedTimeEpochMillis": 1, "clientRecordId": None,
                     "clientRecordVersion": 0, "device": None},
        "startTimeEpochMillis": 1_762_000_000_000, "endTimeEpochMillis": 1_762_000_600_000,
        "startZoneOffsetId": "-05:00", "endZoneOffsetId": None, "count": 42,
        "appRecordFetchTimeEpochMillis": 1_762_100_000_000,
    }
    return [{**rec, **(extra or {})}]


def test_docs_only_difference_skips_resolution() -> None:
    schema = _plain(reader_schema("StepsRecord"))
    schema["doc"] = "written by a newer app"
    for f in schema["fields"]:
        f["doc"] = "documented"
    data = _container(schema, _steps_records(schema))
    scan = scan_container(data, **LIMITS)
    assert not needs_resolution(scan.writer, scan.raw_schema, reader_schema("StepsRecord"))
    assert decode(data, "StepsRecord", reader_schema("StepsRecord"),
                  **LIMITS).records == _resolved(data, "StepsRecord")


def test_extra_writer_field_is_resolved_away() -> None:
    schema = _plain(reader_schema("StepsRecord"))
    schema["fields"].append({"name": "newField", "type": "string", "default": ""})
    data = _container(schema, _steps_records(schema, {"newField": "x"}))
    scan = scan_container(data, **LIMITS)
    assert needs_resolution(scan.writer, scan.raw_schema, reader_schema("StepsRecord"))
    (rec,) = decode(data, "StepsRecord", reader_schema("StepsRecord"), **LIMITS).records
    assert "newField" not in rec and rec["count"] == 42


def test_reordered_union_is_resolved() -> None:
    schema = _plain(reader_schema("StepsRecord"))
    for f in schema["fields"]:
        if f["name"] == "endZoneOffsetId":
            f["type"] = list(reversed(f["type"]))
            f.pop("default", None)
    data = _container(schema, _steps_records(schema))
    scan = scan_container(data, **LIMITS)
    assert needs_resolution(scan.writer, scan.raw_schema, reader_schema("StepsRecord"))
    (rec,) = decode(data, "StepsRecord", reader_schema("StepsRecord"), **LIMITS).records
    assert rec["endZoneOffsetId"] is None and rec["startZoneOffsetId"] == "-05:00"


def test_incompatible_writer_is_still_a_schema_mismatch() -> None:
    schema = _plain(reader_schema("StepsRecord"))
    for f in schema["fields"]:
        if f["name"] == "count":
            f["type"] = "string"
    records = _steps_records(schema, {"count": "many"})
    data = _container(schema, records)
    with pytest.raises(PermanentError) as info:
        decode(data, "StepsRecord", reader_schema("StepsRecord"), **LIMITS)
    assert info.value.reason == "schema_mismatch"


def test_stream_reports_count_and_fails_lazily_on_a_corrupt_block() -> None:
    schema = _plain(reader_schema("StepsRecord"))
    data = bytearray(_container(schema, _steps_records(schema) * 50))
    stream = decode_stream(bytes(data), "StepsRecord", reader_schema("StepsRecord"), **LIMITS)
    assert stream.record_count == 50
    assert len(list(stream.records)) == 50
    # corrupt a string length inside the block: the pre-scan passes, decoding fails
    other = copy.copy(data)
    i = other.index(b"com.example")
    other[i - 1] = 0x7F
    with pytest.raises(PermanentError) as info:
        list(decode_stream(bytes(other), "StepsRecord", reader_schema("StepsRecord"),
                           **LIMITS).records)
    assert info.value.reason in {"corrupt_avro", "invalid_utf8"}
