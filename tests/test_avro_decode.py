"""The safe Avro decoder: good files decode; hostile ones are refused with a reason."""

from __future__ import annotations

import io
import json
import os
import zlib

import fastavro
import pytest

from etl_devtools.samples import app_writer_schema
from etl_engine.domain.avro import decode, prescan
from etl_engine.domain.record_types import reader_schema
from etl_engine.errors import PermanentError
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


# --- the scan's own work, and every codec's decompressed size ------------------------------
def _head_and_sync(codec: str = "null") -> tuple[bytes, bytes]:
    data = container(steps(), codec)
    sync = data[-16:]
    return data[: data.index(sync) + 16], sync


def _raw_block(count: int, payload: bytes, sync: bytes) -> bytes:
    return varint(count) + varint(len(payload)) + payload + sync


def test_a_file_of_empty_blocks_is_refused_after_a_few() -> None:
    """A million 18-byte blocks of no record used to cost a second per scan."""
    import time

    from etl_engine.domain.avro import EMPTY_BLOCK_ALLOWANCE

    head, sync = _head_and_sync()
    empty = _raw_block(0, b"", sync)
    bomb = head + empty * 1_000_000
    t0 = time.perf_counter()
    assert reason(bomb) == "empty_blocks"
    assert time.perf_counter() - t0 < 0.1
    # a few empty blocks (some writers flush one at the end) are harmless
    good = container(steps())
    empty = _raw_block(0, b"", good[-16:])
    tolerated = good + empty * EMPTY_BLOCK_ALLOWANCE
    assert len(decode(tolerated, "StepsRecord", reader_schema("StepsRecord"), **LIMITS)
               .records) == 3
    assert reason(tolerated + empty) == "empty_blocks"


def test_the_number_of_blocks_follows_the_file_size() -> None:
    from etl_engine.domain.avro import max_blocks_for

    head, sync = _head_and_sync()
    tiny = head + _raw_block(1, b"\x00", sync) * 200_000  # 19 bytes a block
    assert reason(tiny, max_records=1_000_000) == "too_many_blocks"
    # small blocks of real records are fine: 500-byte blocks, ~4 records each
    data = container(steps(400), block=500)
    assert len(decode(data, "StepsRecord", reader_schema("StepsRecord"), **LIMITS)
               .records) == 400
    assert max_blocks_for(len(data)) > 100


def _snappy_block(raw: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(raw)) + zlib.crc32(raw).to_bytes(4, "big")


def test_snappy_bomb_is_counted_decompressed() -> None:
    head, sync = _head_and_sync("snappy")
    bomb = head + _raw_block(1, _snappy_block(bytes(16 << 20)), sync)
    assert len(bomb) < 1 << 20  # small on disk, 16 MiB decompressed > the 8 MiB limit
    assert reason(bomb) == "decompression_limit_exceeded"
    # a block that only claims 4 GiB (plain LEB128, not zigzag) is refused on the claim:
    # the decoder would allocate that much before finding out it is a lie
    forged = head + _raw_block(1, b"\xff\xff\xff\xff\x0f" + b"\x00" * 8, sync)
    assert reason(forged) == "decompression_limit_exceeded"
    assert reason(head + _raw_block(1, b"\x80\x80", sync)) == "corrupt_block"


def test_zstandard_bomb_is_counted_decompressed_with_or_without_a_content_size() -> None:
    from etl_engine.domain.avro import _zstd

    head, sync = _head_and_sync("zstandard")
    sized = _zstd.compress(bytes(16 << 20))
    assert _zstd.get_frame_info(sized).decompressed_size == 16 << 20
    assert reason(head + _raw_block(1, sized, sync)) == "decompression_limit_exceeded"
    comp = _zstd.ZstdCompressor()  # streaming: no content size in the frame header
    unsized = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    assert _zstd.get_frame_info(unsized).decompressed_size is None
    assert reason(head + _raw_block(1, unsized, sync)) == "decompression_limit_exceeded"
    # a small frame hiding a bomb in a second frame of the same block
    hidden = _zstd.compress(b"x") + unsized
    assert reason(head + _raw_block(1, hidden, sync)) == "decompression_limit_exceeded"
    # a block of 100k empty frames is refused by the block cap, without a loop turn each
    empty_frames = _zstd.compress(b"") * 100_000
    assert reason(head + _raw_block(1, empty_frames, sync)) == "too_many_blocks"
    assert reason(head + _raw_block(1, b"not zstd at all", sync)) == "corrupt_block"


def test_a_block_of_two_zstandard_frames_decodes() -> None:
    from etl_engine.domain.avro import _zstd

    records = io.BytesIO()
    for rec in steps():
        fastavro.schemaless_writer(records, app_writer_schema("StepsRecord"), rec)
    raw = records.getvalue()
    head, sync = _head_and_sync("zstandard")
    split = _zstd.compress(raw[:10]) + _zstd.compress(raw[10:])
    out = decode(head + _raw_block(3, split, sync), "StepsRecord",
                 reader_schema("StepsRecord"), **LIMITS)
    assert [r["count"] for r in out.records] == [100, 101, 102]


def test_the_event_loop_routing_check_is_bounded() -> None:
    """fits_loop reads at most LOOP_MAX_BLOCKS blocks of a file at most twice the cap."""
    import time

    from etl_engine.runtime import compute

    limits = compute.Limits(2_000_000, 512 << 20)
    head, sync = _head_and_sync()
    bomb = head + _raw_block(0, b"", sync) * 1_000_000
    t0 = time.perf_counter()
    assert not compute.fits_loop(bomb, limits, 64 << 10)
    assert time.perf_counter() - t0 < 0.01
    few = head + _raw_block(0, b"", sync) * 16 + _raw_block(1, b"\x00", sync) * 100
    assert len(few) < 64 << 10
    assert not compute.fits_loop(few, limits, 64 << 10)  # 116 blocks: the thread's
    assert compute.fits_inline(few, limits, 64 << 10)
    assert compute.fits_loop(container(steps()), limits, 64 << 10)
