"""Decode an Avro container file with our reader schema, safely.

fastavro does the decoding (it is the fast part). Before it runs, a cheap pre-scan walks
the container structure — header, writer schema, every block's record count, size and
sync marker — and enforces limits, so a hostile file (decompression bomb, a block that
claims 2^31 records, a truncated block, a schema 10,000 levels deep) is refused with a
reason code instead of eating the worker's memory. The decoder's work is then bounded by
the decompressed size: a writer schema with an array whose items encode in zero bytes
(``null``, or a record of nulls) would let five bytes claim 2^62 items, and is refused.
Every codec's blocks are counted decompressed (deflate inflated in bounded chunks, snappy
by the length its block starts with, zstandard by its frame headers or a bounded streaming
inflate), and the scan's own work follows the bytes: a file of 18-byte empty blocks is
refused after ``EMPTY_BLOCK_ALLOWANCE`` of them (``empty_blocks``), and the number of blocks
is capped by the file's size (``too_many_blocks``).

Speed: schema *resolution* (``fastavro.reader(..., reader_schema=...)``) matches the writer
schema against ours again for every record and every nested value, which costs 2-4x the
plain decode. Our reader schemas list the fields of the Health Sync app's own writer
schemas (``tools/etl_devtools/app_writer_schemas``) in the app's order with the app's names, so
the app's files have the same Parsing Canonical Form as ours: resolution cannot change a
single value, and they are read without it. Any other writer schema (an older or newer app,
another exporter) is first checked against ours as a whole (``schema_check``: a changed
type is refused as ``schema_mismatch`` naming the field, even in a file with no records)
and then resolved. Parsed writer schemas and the comparison are cached by the raw bytes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from etl_engine.domain.model import DecodedFile, Record
from etl_engine.domain.schema_check import first_mismatch
from etl_engine.errors import PermanentError

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
MAX_SCHEMA_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 32
SUPPORTED_CODECS = {"null", "deflate"}
if importlib.util.find_spec("cramjam") is not None:  # fastavro's optional codecs
    SUPPORTED_CODECS |= {"snappy", "zstandard"}
try:  # what fastavro decodes zstandard with (the stdlib's from Python 3.14)
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from backports import zstd as _zstd  # type: ignore[no-redef]
    except ImportError:
        _zstd = None
        SUPPORTED_CODECS.discard("zstandard")
# Writers flush a block when it is full, never an empty one (fastavro, the Java library):
# a few are tolerated, but not a file of them (each costs a loop turn to scan, no record).
EMPTY_BLOCK_ALLOWANCE = 16
# At most BLOCK_ALLOWANCE + (file bytes) / MIN_AVG_BLOCK_BYTES blocks (and zstandard frames):
# a block of one record of ours takes 100+ bytes; 19-byte blocks only make the scan slow.
BLOCK_ALLOWANCE = 64
MIN_AVG_BLOCK_BYTES = 64
_CHUNK = 1 << 20  # bounded inflate step (deflate, zstandard without a content size)


def _fail(reason: str, detail: str = "") -> PermanentError:
    return PermanentError(reason, detail, stage="decode")


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def long(self) -> int:
        shift = 0
        acc = 0
        buf = self.buf
        while True:
            if self.pos >= len(buf):
                raise _fail("truncated_file")
            b = buf[self.pos]
            self.pos += 1
            acc |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise _fail("corrupt_avro", "varint")
        return (acc >> 1) ^ -(acc & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise _fail("truncated_file")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _read_header(cur: _Cursor) -> tuple[dict[str, bytes], bytes]:
    if cur.take(4) != MAGIC:
        raise _fail("not_avro")
    meta: dict[str, bytes] = {}
    while True:
        count = cur.long()
        if count == 0:
            break
        if count < 0:
            count = -count
            cur.long()  # block size in bytes, unused
        if count > 1024:
            raise _fail("corrupt_avro", "header")
        for _ in range(count):
            klen = cur.long()
            if klen > 1024:
                raise _fail("corrupt_avro", "header")
            k = cur.take(klen).decode("utf-8", "replace")
            vlen = cur.long()
            if vlen > MAX_SCHEMA_BYTES:
                raise _fail("schema_too_large")
            meta[k] = cur.take(vlen)
    return meta, cur.take(SYNC_SIZE)


def _depth(node: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(node, dict):
        return max((_depth(v, level + 1) for v in node.values()), default=level)
    if isinstance(node, list):
        return max((_depth(v, level + 1) for v in node), default=level)
    return level


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string",
                         "enum", "fixed"})


def _recursive(node: Any, namespace: str = "", enclosing: frozenset[str] = frozenset()) -> bool:
    """True when a record type refers to itself or to a record it is nested in."""
    if isinstance(node, str):
        full = node if "." in node or not namespace else f"{namespace}.{node}"
        return full in enclosing
    if isinstance(node, list):
        return any(_recursive(n, namespace, enclosing) for n in node)
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind in ("record", "error"):
        name = str(node.get("name", ""))
        ns = str(node.get("namespace") or namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        inner = full.rsplit(".", 1)[0] if "." in full else ""
        return any(isinstance(f, dict) and _recursive(f.get("type"), inner, enclosing | {full})
                   for f in node.get("fields") or [])
    if kind == "array":
        return _recursive(node.get("items"), namespace, enclosing)
    if kind == "map":
        return _recursive(node.get("values"), namespace, enclosing)
    if isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in _PRIMITIVES):
        return _recursive(kind, namespace, enclosing)
    return False


_FIXED_SIZE = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8,
               "bytes": 1, "string": 1, "enum": 1}


def _zero_size_items(node: Any) -> bool:
    """True when some array's items can encode in zero bytes (see the module docstring)."""
    try:
        _MinSize().of(node, "")
    except _ZeroSize:
        return True
    return False


class _ZeroSize(Exception):
    pass


class _MinSize:
    """The smallest encoding (bytes) of a schema node; raises ``_ZeroSize`` at an array
    whose items can take none. Named types are remembered as they are defined."""

    __slots__ = ("sizes",)

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}  # named types seen so far -> their smallest encoding

    def of(self, n: Any, ns: str) -> int:
        if isinstance(n, str):
            full = n if "." in n or not ns else f"{ns}.{n}"
            return _FIXED_SIZE.get(n, self.sizes.get(full, self.sizes.get(n, 1)))
        if isinstance(n, list):
            for branch in n:
                self.of(branch, ns)
            return 1  # the branch index
        if not isinstance(n, dict):
            return 1
        return self._complex(n, ns)

    def _complex(self, n: dict[str, Any], ns: str) -> int:
        """A schema object: record, array, map, fixed, enum or a wrapped type."""
        kind = n.get("type")
        if kind in ("record", "error", "fixed", "enum"):
            return self._named(n, kind, ns)
        if kind == "array":
            if self.of(n.get("items"), ns) == 0:
                raise _ZeroSize
            return 1
        if kind == "map":
            self.of(n.get("values"), ns)
            return 1
        return self.of(kind, ns) if isinstance(kind, dict | list) else _FIXED_SIZE.get(
            str(kind), self.sizes.get(str(kind), 1))

    def _named(self, n: dict[str, Any], kind: str, ns: str) -> int:
        """A named type: its size, remembered under its full name."""
        name = str(n.get("name", ""))
        full = name if "." in name or not n.get("namespace", ns) else (
            f"{n.get('namespace', ns)}.{name}")
        if kind in ("record", "error"):
            inner = full.rsplit(".", 1)[0] if "." in full else ""
            size = sum(self.of(f.get("type"), inner) for f in n.get("fields") or []
                       if isinstance(f, dict))
        elif kind == "fixed":
            size = int(n.get("size") or 0)
        else:  # enum
            size = 1
        self.sizes[full] = size
        return size


def max_blocks_for(size: int) -> int:
    """The most blocks (zstandard frames included) a file of ``size`` bytes may hold."""
    return BLOCK_ALLOWANCE + size // MIN_AVG_BLOCK_BYTES


def _inflate_size(data: bytes | memoryview, cap: int) -> int:
    """Decompressed size of a raw-deflate block, refusing to go past ``cap``."""
    d = zlib.decompressobj(-15)
    total = 0
    chunk = data
    try:
        while chunk:
            out = d.decompress(chunk, _CHUNK)
            total += len(out)
            if total > cap:
                raise _fail("decompression_limit_exceeded")
            chunk = d.unconsumed_tail
        total += len(d.flush())
    except zlib.error:
        raise _fail("corrupt_block", "deflate") from None
    return total


def _snappy_size(block: memoryview) -> int:
    """Avro's snappy block is raw snappy plus a CRC32; raw snappy starts with the length it
    decompresses to (a varint), which the decoder allocates and insists on: that is the size.
    """
    acc = shift = 0
    for i in range(min(5, len(block) - 4)):
        b = block[i]
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return acc
        shift += 7
    raise _fail("corrupt_block", "snappy")


def _zstd_stream_size(frame: memoryview, cap: int) -> int:
    """Decompressed size of one zstandard frame, inflated in bounded steps up to ``cap``."""
    d = _zstd.ZstdDecompressor()
    out = d.decompress(frame, _CHUNK)
    total = len(out)
    while total <= cap and not d.eof:
        if d.needs_input:
            raise _fail("corrupt_block", "zstandard")
        total += len(d.decompress(b"", _CHUNK))
    if total > cap:
        raise _fail("decompression_limit_exceeded")
    return total


def _zstd_size(block: memoryview, cap: int, max_frames: int) -> tuple[int, int]:
    """(decompressed bytes, frames) of a zstandard block, refusing to go past ``cap``.

    A frame header carries the content size when the writer knew it (libzstd fails a frame
    that decodes to any other size, so it is binding); a frame without one is inflated in
    bounded steps. The frames are walked by libzstd; ``max_frames`` bounds our loop.
    """
    total = frames = pos = 0
    try:
        while pos < len(block):
            frames += 1
            if frames > max_frames:
                raise _fail("too_many_blocks", "zstandard frames")
            frame = block[pos:]
            size = _zstd.get_frame_size(frame)
            claimed = _zstd.get_frame_info(frame).decompressed_size
            total += (claimed if claimed is not None
                      else _zstd_stream_size(frame[:size], cap - total))
            if total > cap:
                raise _fail("decompression_limit_exceeded")
            pos += size
    except _zstd.ZstdError:
        raise _fail("corrupt_block", "zstandard") from None
    return total, max(frames, 1)


def _block_size(codec: str, block: memoryview, cap: int, max_frames: int) -> tuple[int, int]:
    """(decompressed bytes, blocks it counts as) of one block's data (see the docstring)."""
    if codec == "deflate":
        return _inflate_size(block, cap), 1
    if codec == "snappy":
        return _snappy_size(block), 1
    if codec == "zstandard":
        return _zstd_size(block, cap, max_frames)
    return len(block), 1


@dataclass(frozen=True, slots=True)
class Scan:
    """What the pre-scan learned: the writer schema (raw and parsed), codec, record count."""

    writer: Any
    raw_schema: bytes
    codec: str
    records: int


# Writer schemas by their raw JSON bytes: one file's schema is every file's schema.
_WRITERS: dict[bytes, Any] = {}
_CACHE_MAX = 64


def _writer_schema(raw_schema: bytes) -> Any:
    writer = _WRITERS.get(raw_schema)
    if writer is not None:
        return writer
    try:
        writer = json.loads(raw_schema)
    except (ValueError, RecursionError):
        raise _fail("invalid_writer_schema") from None
    if _depth(writer) > MAX_SCHEMA_DEPTH:
        raise _fail("writer_schema_too_deep")
    if _recursive(writer):
        # fastavro recurses once per level of nested data, and a self-referencing record
        # nests as deep as the file is long: 200k levels overflow the C stack (segfault).
        raise _fail("recursive_writer_schema")
    if _zero_size_items(writer):
        raise _fail("writer_schema_zero_size_items")
    if len(_WRITERS) >= _CACHE_MAX:
        _WRITERS.clear()
    _WRITERS[raw_schema] = writer
    return writer


def prescan(data: bytes, *, max_records: int, max_decompressed_bytes: int) -> tuple[dict, str]:
    """Check structure and limits; return (writer schema, codec)."""
    scan = scan_container(data, max_records=max_records,
                          max_decompressed_bytes=max_decompressed_bytes)
    return scan.writer, scan.codec


def scan_container(data: bytes, *, max_records: int, max_decompressed_bytes: int,
                   max_blocks: int | None = None) -> Scan:
    """Check structure and limits (see the module docstring) without decoding records.

    ``max_blocks`` lowers the file's own block cap (``max_blocks_for``): a caller that
    must stay cheap (the event loop's routing check) bounds its work with it.
    """
    if not data:
        raise _fail("empty_file")
    cur = _Cursor(data)
    meta, sync = _read_header(cur)
    codec = meta.get("avro.codec", b"null").decode("utf-8", "replace") or "null"
    if codec not in SUPPORTED_CODECS:
        raise _fail("unsupported_codec")
    raw_schema = meta.get("avro.schema")
    if raw_schema is None:
        raise _fail("corrupt_avro", "no schema")
    writer = _writer_schema(raw_schema)
    cap = max_blocks_for(len(data))
    if max_blocks is not None:
        cap = min(cap, max_blocks)
    records = _scan_blocks(data, cur, sync, codec, max_records=max_records,
                           max_decompressed_bytes=max_decompressed_bytes, max_blocks=cap)
    return Scan(writer, raw_schema, codec, records)


def _scan_blocks(data: bytes, cur: _Cursor, sync: bytes, codec: str, *, max_records: int,
                 max_decompressed_bytes: int, max_blocks: int) -> int:
    """Walk every block after the header: counts, sizes, sync markers, limits; return the
    number of records. One loop turn per block, and the blocks are capped."""
    records = decompressed = blocks = empty = 0
    end = len(data)
    view = memoryview(data)
    while cur.pos < end:
        count = cur.long()
        size = cur.long()
        if count < 0 or size < 0:
            raise _fail("corrupt_block")
        records += count
        if records > max_records:
            raise _fail("too_many_records")
        start = cur.pos
        stop = start + size
        if stop + SYNC_SIZE > end:
            raise _fail("truncated_file")
        if data[stop : stop + SYNC_SIZE] != sync:
            raise _fail("bad_sync_marker")
        cur.pos = stop + SYNC_SIZE
        if count == 0:
            empty += 1
            if empty > EMPTY_BLOCK_ALLOWANCE:
                raise _fail("empty_blocks")
        if codec == "null":
            decompressed += size
            blocks += 1
        else:
            got, counted = _block_size(codec, view[start:stop],
                                       max_decompressed_bytes - decompressed,
                                       max_blocks - blocks)
            decompressed += got
            blocks += counted
        if blocks > max_blocks:
            raise _fail("too_many_blocks")
        if decompressed > max_decompressed_bytes:
            raise _fail("decompression_limit_exceeded")
    return records


def _writer_name(schema: Any) -> str:
    if isinstance(schema, dict):
        name = str(schema.get("name", ""))
        ns = schema.get("namespace")
        return name if "." in name or not ns else f"{ns}.{name}"
    return ""


# (raw writer schema, id of the reader schema) -> (reader schema, resolution needed?, first
# mismatching field or None). The reader schema object is kept in the value so a recycled
# id() can never match a different schema.
_RESOLVE: dict[tuple[bytes, int], tuple[Any, bool, str | None]] = {}


def _compare(writer: Any, raw_schema: bytes, reader_schema: dict) -> tuple[bool, str | None]:
    """(resolution needed?, first mismatching field) for a writer schema, cached."""
    key = (raw_schema, id(reader_schema))
    hit = _RESOLVE.get(key)
    if hit is not None and hit[0] is reader_schema:
        return hit[1], hit[2]
    try:
        same = to_parsing_canonical_form(writer) == to_parsing_canonical_form(reader_schema)
    except Exception:  # an odd writer schema: the field check below decides (and reports)
        same = False
    bad = None if same else first_mismatch(writer, reader_schema)
    if len(_RESOLVE) >= _CACHE_MAX:
        _RESOLVE.clear()
    _RESOLVE[key] = (reader_schema, not same, bad)
    return not same, bad


def needs_resolution(writer: Any, raw_schema: bytes, reader_schema: dict) -> bool:
    """False when the writer schema reads exactly like ``reader_schema``.

    Same Parsing Canonical Form means the same names, types, field order, symbols and sizes;
    what it leaves out (docs, aliases, defaults, logical types) only matters when the two
    differ, or is applied from the writer schema either way (logical types).
    """
    return _compare(writer, raw_schema, reader_schema)[0]


def _reader_names(reader_schema: dict) -> set[str]:
    names = [str(reader_schema.get("name", "")), *(reader_schema.get("aliases") or [])]
    return {str(n).rsplit(".", 1)[-1] for n in names}


@dataclass(slots=True)
class DecodeStream:
    """A checked container whose records are decoded lazily, one at a time.

    Iterating ``records`` raises ``PermanentError`` (stage ``decode``) for a corrupt block,
    like ``decode`` does; memory stays at one block however many records the file holds.
    """

    record_type: str
    codec: str
    writer_schema_name: str
    size_bytes: int
    record_count: int  # from the pre-scan's block headers
    records: Iterator[Record]


def decode_stream(
    data: bytes,
    record_type: str,
    reader_schema: dict,
    *,
    max_records: int,
    max_decompressed_bytes: int,
) -> DecodeStream:
    """Pre-scan ``data`` (limits, structure), then decode its records lazily."""
    scan = scan_container(
        data, max_records=max_records, max_decompressed_bytes=max_decompressed_bytes
    )
    writer_name = _writer_name(scan.writer)
    if writer_name.rsplit(".", 1)[-1] not in _reader_names(reader_schema):
        raise _fail("schema_mismatch", "writer record name differs from record_type")
    resolve, bad_field = _compare(scan.writer, scan.raw_schema, reader_schema)
    if bad_field is not None:
        raise _fail("schema_mismatch", f"field {bad_field}")
    return DecodeStream(
        record_type=record_type,
        codec=scan.codec,
        writer_schema_name=writer_name,
        size_bytes=len(data),
        record_count=scan.records,
        records=_records(data, reader_schema if resolve else None),
    )


def _records(data: bytes, reader_schema: dict | None) -> Iterator[Record]:
    try:
        reader = fastavro.reader(io.BytesIO(data), reader_schema=reader_schema)
        yield from cast(Iterator[Record], reader)
    except SchemaResolutionError:
        raise _fail("schema_mismatch") from None
    except UnicodeDecodeError:
        raise _fail("invalid_utf8") from None
    except (MemoryError, GeneratorExit):
        raise
    except Exception as exc:  # fastavro raises a zoo of types on hostile input
        raise _fail("corrupt_avro", type(exc).__name__) from None


def decode(
    data: bytes,
    record_type: str,
    reader_schema: dict,
    *,
    max_records: int,
    max_decompressed_bytes: int,
) -> DecodedFile:
    """Bytes of an Avro container to records resolved against our reader schema."""
    stream = decode_stream(data, record_type, reader_schema, max_records=max_records,
                           max_decompressed_bytes=max_decompressed_bytes)
    return DecodedFile(
        record_type=record_type,
        records=list(stream.records),
        codec=stream.codec,
        writer_schema_name=stream.writer_schema_name,
        size_bytes=len(data),
    )
