"""The safe Avro decoder: good files decode; hostile ones are refused with a reason."""

from __future__ import annotations

import io
import json
import os
import zlib

import fastavro
import pytest

from etl_engine.avro import decode, prescan
from etl_engine.errors import PermanentError
from etl_engine.record_types import reader_schema
from etl_engine.samples import app_writer_schema
from helpers import avro_bytes, varint

LIMITS = {"max_records": 100_000, "max_decompressed_bytes": 8 * 1024 * 1024}


def steps(n: int = 3) -> list[dict]:
    return [
        {
            "metadata": {"id": f"id-{i}", "dataOriginPackageName": "com.example",
                         "lastModifiedTimeEpochMillis": 1_700_000_000_000,
                         "clientRecordId": None, "clientRecordVersion": 0, "device": None},
            "startTimeEpochMillis": 1_762_000_000_000 + i * 3_600_000,
            "endTimeEpochMillis": 1_762_000_000_000 + i * 3_600_000 + 600_000,
            "startZoneOffsetId": "-05:00", "endZoneOffsetId": "-05:00",
            "count": 100 + i,
            "appRecordFetchTimeEpochMillis": 1_762_100_000_000,
        }
        for i in range(n)
    ]


def container(records: list[dict], codec: str = "null", schema: dict | None = None,
              block: int = 16000) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, schema or app_writer_schema("StepsRecord"), records, codec=codec,
                    sync_interval=block)
    return buf.getvalue()


def reason(data: bytes, record_type: str = "StepsRecord", **limits: int) -> str:
    with pytest.raises(PermanentError) as info:
        decode(data, record_type, reader_schema(record_type), **{**LIMITS, **limits})
    return info.value.reason


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy", "zstandard"])
def test_good_file_decodes_with_each_codec(codec: str) -> None:
    out = decode(container(steps(), codec), "StepsRecord", reader_schema("StepsRecord"),
                 **LIMITS)
    assert [r["count"] for r in out.records] == [100, 101, 102]
    assert out.codec == codec


def test_empty_random_and_truncated_files() -> None:
    assert reason(b"") == "empty_file"
    assert reason(os.urandom(2000)) == "not_avro"
    data = container(steps(200), block=500)
    sync = data[-16:]
    # A cut right after a sync marker is a shorter *valid* file: the message's size and
    # hash catch that case (see the integrity tests), not the decoder.
    boundaries = {i + 16 for i in range(len(data)) if data.startswith(sync, i)}
    for cut in range(5, len(data) - 1, 7):
        if cut in boundaries:
            continue
        assert reason(data[:cut]) in {"truncated_file", "corrupt_avro", "bad_sync_marker",
                                      "corrupt_block"}


def test_wrong_sync_marker() -> None:
    data = bytearray(container(steps()))
    data[-1] ^= 0xFF
    assert reason(bytes(data)) == "bad_sync_marker"


def test_unknown_codec() -> None:
    data = container(steps())
    data = data.replace(b"\x08null", b"\x08lzma", 1)
    assert reason(data) == "unsupported_codec"


def test_decompression_bomb_is_refused_without_inflating_it() -> None:
    data = container(steps(), "deflate")
    bomb_payload = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = bomb_payload.compress(b"\0" * (64 * 1024 * 1024)) + bomb_payload.flush()
    header_end = data.index(data[-16:]) + 16  # first occurrence of sync ends the header
    sync = data[-16:]

    bomb = data[:header_end] + varint(1) + varint(len(raw)) + raw + sync
    assert reason(bomb) == "decompression_limit_exceeded"


def test_block_claiming_two_billion_records() -> None:
    data = container(steps())
    sync = data[-16:]
    header_end = data.index(sync) + 16
    forged = data[:header_end] + b"\xfe\xff\xff\xff\x0f" + b"\x02\x00" + sync
    assert reason(forged) == "too_many_records"


def test_deep_writer_schema_is_refused() -> None:
    node: dict = {"type": "record", "name": "AvroStepsRecord", "fields": []}
    for i in range(60):
        node = {"type": "record", "name": f"N{i}", "fields": [{"name": "x", "type": node}]}
    meta = json.dumps(node).encode()
    # The header by hand: a map with one entry (avro.schema), then a sync marker.
    data = bytearray(b"Obj\x01")
    data += varint(1) + avro_bytes(b"avro.schema") + avro_bytes(meta) + varint(0) + b"S" * 16
    assert reason(bytes(data)) == "writer_schema_too_deep"


@pytest.mark.parametrize("items", [
    "null",
    {"type": "record", "name": "Nothing", "fields": [{"name": "z", "type": "null"}]},
    {"type": "fixed", "name": "Empty", "size": 0},
])
def test_array_of_zero_byte_items_is_refused_before_decoding(items: object) -> None:
    """Five bytes could claim 2^62 items that take no bytes: an endless decode (measured:
    10^8 null items in a 4.7 kB file took 2.3 s of fastavro), whatever the file size."""
    schema = app_writer_schema("StepsRecord")
    forged_schema = {**schema, "fields": [*schema["fields"],
                                          {"name": "pad", "type": {"type": "array",
                                                                   "items": items}}]}
    good = io.BytesIO()
    fastavro.schemaless_writer(good, fastavro.parse_schema(schema), steps(1)[0])
    body = good.getvalue() + varint(2**62) + varint(0)
    sync = b"\x5a" * 16
    data = (b"Obj\x01" + varint(1) + avro_bytes(b"avro.schema")
            + avro_bytes(json.dumps(forged_schema).encode()) + varint(0) + sync
            + varint(1) + varint(len(body)) + body + sync)
    assert reason(data) == "writer_schema_zero_size_items"
    # an array of real items in the same place is only extra data, resolved away
    fine = {**schema, "fields": [*schema["fields"], {"name": "pad", "type": {
        "type": "array", "items": ["null", "long"]}}]}
    rec = {**steps(1)[0], "pad": [None, 5]}
    decoded = decode(container([rec], schema=fine), "StepsRecord",
                     reader_schema("StepsRecord"), **LIMITS)
    assert decoded.records[0]["count"] == 100 and "pad" not in decoded.records[0]


def test_writer_schema_of_another_type_is_a_schema_mismatch() -> None:
    data = container(steps())
    assert reason(data, "BloodGlucoseRecord") == "schema_mismatch"


def test_record_limit() -> None:
    assert reason(container(steps(50)), max_records=10) == "too_many_records"


def test_invalid_utf8_string() -> None:
    data = container(steps(1))
    bad = data.replace(b"com.example", b"com.ex\xff\xfeple", 1)
    assert reason(bad) in {"invalid_utf8", "corrupt_avro"}


def test_prescan_reports_codec_and_schema() -> None:
    schema, codec = prescan(container(steps(), "deflate"), **LIMITS)
    assert codec == "deflate"
    assert schema["name"].endswith("AvroStepsRecord")
