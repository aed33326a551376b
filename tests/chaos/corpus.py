"""The adversarial corpus: hostile messages and hostile files, each with the outcome and the
reason code it must end with. Files are built byte by byte (a tiny Avro container writer)
so every structural corner can be reached."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from etl_devtools.samples import app_writer_schema
from etl_engine.domain.avro import MAGIC, SYNC_SIZE, _Cursor, _read_header
from helpers import avro_bytes, varint

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


# --- a minimal Avro container writer ------------------------------------------------------
def header(schema: Any, *, codec: str | None = "null", sync: bytes = b"\x5a" * 16,
           extra: dict[str, bytes] | None = None) -> bytes:
    raw = schema if isinstance(schema, bytes) else json.dumps(schema).encode()
    meta: dict[str, bytes] = {"avro.schema": raw}
    if codec is not None:
        meta["avro.codec"] = codec.encode()
    meta.update(extra or {})
    items = b"".join(avro_bytes(k.encode()) + avro_bytes(v) for k, v in meta.items())
    return MAGIC + varint(len(meta)) + items + varint(0) + sync


def block(count: int, payload: bytes, sync: bytes = b"\x5a" * 16) -> bytes:
    return varint(count) + varint(len(payload)) + payload + sync


def clean_schema(record_type: str) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in app_writer_schema(record_type).items()
                                  if not k.startswith("__")}))


def sample_records(record_type: str) -> list[dict[str, Any]]:
    # our multi-day simulated exports (the app corpus, app_*.avro, is a day per origin)
    path = next(p for p in sorted((SAMPLES / record_type).glob("*.avro"))
            if not p.name.startswith("app_"))
    with path.open("rb") as f:
        return list(fastavro.reader(f))


def multi_block_file(record_type: str, *, sync_interval: int = 1500) -> bytes:
    """A valid file of the type with many small blocks (null codec)."""
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(clean_schema(record_type)),
                    sample_records(record_type), codec="null", sync_interval=sync_interval)
    return out.getvalue()


def block_layout(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(end of header, [(block start, data start, sync start)]) of a valid file."""
    cur = _Cursor(data)
    _read_header(cur)
    head_end = cur.pos
    blocks = []
    while cur.pos < len(data):
        start = cur.pos
        cur.long()
        size = cur.long()
        data_start = cur.pos
        cur.take(size)
        blocks.append((start, data_start, cur.pos))
        cur.take(SYNC_SIZE)
    return head_end, blocks


def deflate_bomb(gib: int = 2) -> bytes:
    """Raw deflate of ``gib`` GiB of zeros (about 1 MiB per GiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    parts = [comp.compress(zeros) for _ in range(gib << 10)]
    parts.append(comp.flush())
    return b"".join(parts)


# --- the cases -----------------------------------------------------------------------------
@dataclass
class FileCase:
    label: str
    record_type: str
    data: bytes
    expect: str  # quarantined | processed
    reason: tuple[str, ...] | None
    claim: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda m: m)


@dataclass
class MessageCase:
    label: str
    body: Callable[[dict[str, Any]], dict[str, Any] | bytes]  # from a valid message
    reason: str


def message_cases() -> list[MessageCase]:
    def drop(*names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda m: {k: v for k, v in m.items() if k not in names}

    def put(**kw: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda m: {**m, **kw}

    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        MessageCase("invalid_json", lambda m: b"{not json", "invalid_json"),
        MessageCase("empty_body", lambda m: b"", "invalid_json"),
        MessageCase("json_not_utf8", lambda m: b'{"bucket": "\xff\xfe"}', "invalid_json"),
        MessageCase("json_nested_100k", lambda m: deep, "invalid_json"),
        MessageCase("json_array", lambda m: b"[1, 2, 3]", "not_an_object"),
        MessageCase("wrong_type_size", put(file_size_bytes="large"), "invalid_field"),
        MessageCase("wrong_type_bucket", put(bucket=123), "invalid_field"),
        MessageCase("wrong_type_record_type", put(record_type=["StepsRecord"]),
                    "invalid_field"),
        MessageCase("negative_size", put(file_size_bytes=-1), "invalid_field"),
        MessageCase("hash_not_hex", put(content_hash="z" * 64), "invalid_field"),
        MessageCase("ikey_control_chars", put(idempotency_key="ik\x00\x1b[31m"),
                    "invalid_field"),
        MessageCase("missing_user_id", drop("user_id"), "missing_field"),
        MessageCase("missing_ikey_bucket_key", drop("idempotency_key", "bucket", "key"),
                    "missing_field"),
        MessageCase("body_10mb", lambda m: {**m, "padding": "x" * (10 << 20)},
                    "message_too_large"),
        MessageCase("unknown_record_type", put(record_type="BloodPressureRecord"),
                    "unknown_record_type"),
        MessageCase("bucket_not_allowed", put(bucket="someone-elses-bucket"),
                    "bucket_not_allowed"),
        MessageCase("key_dotdot", put(key="raw/../secrets/x.avro"), "key_traversal"),
        MessageCase("key_pct2e", put(key="raw/%2e%2e/secrets/x.avro"), "key_traversal"),
        MessageCase("key_pct2E_pct2F", put(key="raw/%2E%2E%2Fsecrets"), "key_traversal"),
        MessageCase("key_backslash", put(key="raw/..\\secrets"), "key_traversal"),
        MessageCase("key_leading_slash", put(key="/raw/StepsRecord/x.avro"), "key_absolute"),
        MessageCase("key_double_slash", put(key="raw//StepsRecord/x.avro"),
                    "key_empty_segment"),
        MessageCase("key_nul", put(key="raw/StepsRecord/x\x00.avro"),
                    "key_control_characters"),
        MessageCase("key_newline", put(key="raw/StepsRecord/x\n.avro"),
                    "key_control_characters"),
        MessageCase("key_1100_bytes", put(key="raw/" + "a" * 1100), "key_too_long"),
        MessageCase("key_1025_bytes_utf8", put(key="raw/" + "é" * 511), "key_too_long"),
        MessageCase("key_outside_raw", put(key="training/x.avro"), "key_outside_raw_prefix"),
    ]


def file_cases() -> list[FileCase]:
    rt = "StepsRecord"
    rng = random.Random(7)  # the corpus is the same on every run
    schema = clean_schema(rt)
    name = schema["name"]
    valid = multi_block_file(rt)
    head_end, blocks = block_layout(valid)
    cases: list[FileCase] = []

    def own(label: str, data: bytes, reason: str | tuple[str, ...] | None,
            record_type: str = rt, expect: str = "quarantined") -> None:
        reasons = (reason,) if isinstance(reason, str) else reason
        cases.append(FileCase(label, record_type, data, expect, reasons))

    # truncation at every block boundary: a valid shorter file, caught by size/hash
    original = {"file_size_bytes": len(valid)}
    for i, (start, _, _) in enumerate(blocks[1:], 1):
        cases.append(FileCase(f"cut_at_block_{i}_claims_full_size", rt, valid[:start],
                              "quarantined", ("size_mismatch",),
                              claim=lambda m, o=original: {**m, **o}))
    full_hash = hashlib.sha256(valid).hexdigest()
    cases.append(FileCase("cut_at_block_1_claims_full_hash_only", rt, valid[:blocks[1][0]],
                          "quarantined", ("hash_mismatch",),
                          claim=lambda m: {**m, "file_size_bytes": None,
                                           "content_hash": full_hash, "file_hash": full_hash}))
    own("cut_at_block_1_claims_itself_is_valid", valid[:blocks[1][0]], None,
        expect="processed")
    # truncation mid-block (the message describes the cut file: the decoder must catch it)
    for i, (start, data_start, sync_start) in enumerate(blocks):
        own(f"cut_mid_block_{i}_data", valid[: (data_start + sync_start) // 2],
            "truncated_file")
        own(f"cut_mid_block_{i}_sync", valid[: sync_start + SYNC_SIZE // 2], "truncated_file")
        own(f"cut_mid_block_{i}_count", valid[: start + 1], "truncated_file")
    own("cut_mid_header", valid[: head_end // 2], "truncated_file")
    own("cut_mid_header_sync", valid[: head_end - 5], "truncated_file")
    own("cut_after_magic", valid[:4], "truncated_file")

    # structure
    s1 = blocks[1][2]
    own("wrong_sync_marker", valid[:s1] + bytes(16) + valid[s1 + 16:], "bad_sync_marker")
    own("trailing_garbage", valid + b"\x02\x10garbage", "truncated_file")
    own("unknown_codec_lzma", header(schema, codec="lzma") + block(1, b"\x00"),
        "unsupported_codec")
    own("unknown_codec_bzip2", header(schema, codec="bzip2") + block(1, b"\x00"),
        "unsupported_codec")
    own("no_schema", MAGIC + varint(1) + avro_bytes(b"avro.codec") + avro_bytes(b"null")
        + varint(0) + b"\x5a" * 16, "corrupt_avro")
    own("schema_not_json", header(b"{this is not json"), "invalid_writer_schema")
    own("schema_300kb", header(b" " * 300_000 + json.dumps(schema).encode()),
        "schema_too_large")
    own("header_1e6_entries", MAGIC + varint(1_000_000) + b"\x00" * 64, "corrupt_avro")
    own("varint_overflow", header(schema) + b"\xff" * 12, "corrupt_avro")
    own("negative_block_count", header(schema) + varint(-5) + varint(4) + b"\x00" * 4
        + b"\x5a" * 16, "corrupt_block")
    own("block_2pow31_records", header(schema) + block(2**31, b"\x00" * 32),
        "too_many_records")
    own("block_size_2pow40", header(schema) + varint(1) + varint(2**40) + b"\x00" * 64,
        "truncated_file")
    own("string_len_2pow40", header(schema) + block(1, varint(2**40) + b"x" * 64),
        "corrupt_avro")
    own("deflate_bomb_2gib", header(schema, codec="deflate") + block(1, deflate_bomb(2)),
        "decompression_limit_exceeded")
    own("deflate_garbage", header(schema, codec="deflate") + block(1, rng.randbytes(256)),
        "corrupt_block")

    # writer schemas
    nested: Any = "long"
    for _ in range(100):
        nested = {"type": "array", "items": nested}
    own("schema_nested_100", header({"type": "record", "name": name,
                                     "fields": [{"name": "x", "type": nested}]}),
        "writer_schema_too_deep")
    own("schema_json_nested_100k", header(b"[" * 100_000 + b"]" * 100_000),
        "invalid_writer_schema")
    recursive = {"type": "record", "name": name,
                 "fields": [{"name": "next", "type": ["null", name]}]}
    own("schema_recursive_chain_200k",
        header(recursive) + block(1, varint(1) * 200_000 + varint(0)),
        "recursive_writer_schema")
    padded = {**schema, "fields": [*schema["fields"],
                                   {"name": "pad", "type": {"type": "array", "items": "null"}}]}
    own("array_of_2pow62_nulls", header(padded) + block(1, varint(2**62) + varint(0)),
        "writer_schema_zero_size_items")
    own("schema_other_record_type", valid, "schema_mismatch", record_type="HeartRateRecord")

    # values
    records = sample_records(rt)
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records, codec="null")
    good = out.getvalue()
    ident = records[0]["metadata"]["id"].encode()
    at = good.index(ident)
    own("non_utf8_string", good[:at] + b"\xff\xfe" + good[at + 2:], "invalid_utf8")
    broken = [{**r, "count": -10**9, "startTimeEpochMillis": r["endTimeEpochMillis"] + 1}
              for r in records]
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), broken, codec="null")
    own("all_values_out_of_range", out.getvalue(), "no_valid_records")

    # plain bad files
    own("zero_bytes", b"", "empty_file")
    own("random_bytes", rng.randbytes(64 << 10), "not_avro")
    own("magic_then_random", MAGIC + rng.randbytes(4096), "corrupt_avro")
    return cases


# --- peak memory of a process tree ----------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


class RssMonitor(threading.Thread):
    """Polls VmHWM/VmRSS of a process and its descendants (decode children come and go)."""

    def __init__(self, pid: int, descendants: Callable[[int], list[int]],
                 interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self._descendants = descendants
        self.interval = interval
        self.hwm: dict[int, int] = {}
        self.peak_total_rss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = 0
            for pid in [self.pid, *self._descendants(self.pid)]:
                st = _status(pid)
                if st:
                    self.hwm[pid] = max(self.hwm.get(pid, 0), st.get("VmHWM", 0))
                    total += st.get("VmRSS", 0)
            self.peak_total_rss = max(self.peak_total_rss, total)
            time.sleep(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(5)
        children = [v for p, v in self.hwm.items() if p != self.pid]
        mib = 1 << 20
        return {
            "worker_peak_rss_mib": round(self.hwm.get(self.pid, 0) / mib, 1),
            "child_peak_rss_mib": round(max(children, default=0) / mib, 1),
            "children_seen": len(children),
            "peak_total_rss_mib": round(self.peak_total_rss / mib, 1),
        }
