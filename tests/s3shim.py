"""The chaos suite's S3 shim: an HTTP/1.1 reverse proxy in front of the test's S3 server
that misbehaves the way object stores do, at the level of S3 requests (``faultproxy.py``
cuts bytes; ``s3_conditional_shim.py`` is the unit tests' simpler, thread-per-request
variant). This one keeps connections alive on both sides, so a soak of tens of thousands
of requests does not run the machine out of ephemeral ports.

Faults, each off by default:

- ``conflict_on_open_put``: a conditional PUT (``If-None-Match``) to a key while another
  PUT to the same key is still open is answered ``409 ConditionalRequestConflict`` (what
  AWS answers a competing conditional write). ``hold_put_s`` keeps every PUT open that
  long before it is passed on, so two writers of one key overlap.
- ``reset_put_prefix`` + ``resets_per_key``: a PUT to a key under the prefix (e.g.
  ``training/``) has its client connection reset halfway through the body, that many
  times per key; nothing of it reaches the server.
- ``ignore_if_none_match``: ``If-None-Match`` is dropped before forwarding, so a
  conditional PUT overwrites and answers 200 (older MinIO, some S3-compatibles).
- ``error_rate``: that fraction of requests (seeded) is answered ``503 SlowDown`` or
  ``500 InternalError`` without reaching the server; ``fail_gets``: every object GET is.

``counts`` tallies requests and faults (``requests``, ``conditional_puts``,
``conflicts``, ``resets``, ``errors``). Runs its own event loop in a thread, like
``FaultProxy``, so synchronous and async tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te",
        "upgrade", "content-length"}
_REASONS = {409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable"}
Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    close: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    @property
    def key(self) -> str:
        """The object key of a path-style request (``/bucket/key``), "" for a bucket call."""
        _, _, key = unquote(urlsplit(self.target).path).lstrip("/").partition("/")
        return key


class ShimClosed(Exception):
    """The client went away, or the shim cut it on purpose."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    """The start line and headers of one HTTP/1.1 message."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise ShimClosed from exc
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked request body, decoded (trailers dropped)."""
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def _length(headers: list[tuple[str, str]]) -> int | None:
    return next((int(v) for k, v in headers if k.lower() == "content-length"), None)


def _chunked(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)


def _wants_close(start_line: str, headers: list[tuple[str, str]]) -> bool:
    conn = next((v.lower() for k, v in headers if k.lower() == "connection"), "")
    return "close" in conn or start_line.endswith("HTTP/1.0")


def s3_error(status: int, code: str, message: str, *, head: bool = False) -> bytes:
    """An S3 error answer, worded as AWS words it (no body for a HEAD)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    top = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
           f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return top if head else top + body


class S3Shim:
    def __init__(self, target_host: str, target_port: int, *, seed: int = 15) -> None:
        self.target = (target_host, target_port)
        self.conflict_on_open_put = False
        self.hold_put_s = 0.0
        self.reset_put_prefix: str | None = None
        self.resets_per_key = 1
        self.ignore_if_none_match = False
        self.error_rate = 0.0
        self.fail_gets = False
        self.counts: Counter[str] = Counter()
        self._resets_done: Counter[str] = Counter()
        self._open_puts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @classmethod
    def before(cls, endpoint_url: str) -> S3Shim:
        """A shim in front of the S3 server at ``endpoint_url`` (``http://host:port``)."""
        parts = urlsplit(endpoint_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)

    # --- one client connection -------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: Upstream | None = None
        try:
            while True:
                req = await self._request(reader, writer)
                upstream, keep = await self._serve(req, writer, upstream)
                if not keep or req.close:
                    break
        except (ShimClosed, ConnectionError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError, IndexError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            if upstream is not None:
                upstream[1].transport.abort()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> Request:
        """One request with its body (after a ``100 Continue`` when asked for), unless it
        is a PUT to cut: then half its body is read and the client's connection reset."""
        start, headers = await _read_head(reader)
        method, target, version = [*start.split(" ", 2), "", ""][:3]
        req = Request(method, target, headers, close=_wants_close(version, headers))
        self.counts["requests"] += 1
        length = _length(headers)
        if (req.header("expect") or "").lower() == "100-continue" and (
                length or _chunked(headers)):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if self._cut_due(req):
            await reader.readexactly((length or 0) // 2)
            self.counts["resets"] += 1
            raise ShimClosed("reset halfway through the body")
        if _chunked(headers):
            req.body = await _read_chunked(reader)
        elif length:
            req.body = await reader.readexactly(length)
        return req

    def _cut_due(self, req: Request) -> bool:
        prefix = self.reset_put_prefix
        if req.method != "PUT" or prefix is None or not req.key.startswith(prefix):
            return False
        if self._resets_done[req.key] >= self.resets_per_key:
            return False
        self._resets_done[req.key] += 1
        return True

    async def _serve(self, req: Request, writer: asyncio.StreamWriter,
                     upstream: Upstream | None) -> tuple[Upstream | None, bool]:
        """Answer one request: a fault, or the server's answer. Returns the upstream
        connection to reuse and whether the client's connection stays open."""
        fault = self._fault(req)
        if fault is not None:
            writer.write(fault)
            await writer.drain()
            return upstream, True
        key = req.key if req.method == "PUT" else ""
        if key:
            self._open_puts[key] += 1
        try:
            if key and self.hold_put_s:
                await asyncio.sleep(self.hold_put_s)
            if upstream is None or upstream[1].is_closing():
                upstream = await asyncio.open_connection(*self.target)
            keep = await self._forward(req, upstream, writer)
        finally:
            if key:
                self._open_puts[key] -= 1
        return (upstream if keep else None), keep

    def _fault(self, req: Request) -> bytes | None:
        """The canned answer for this request, if a fault applies to it."""
        head = req.method == "HEAD"
        conditional = req.method == "PUT" and req.header("if-none-match") is not None
        self.counts["conditional_puts"] += conditional
        if conditional and self.conflict_on_open_put and self._open_puts[req.key] > 0:
            self.counts["conflicts"] += 1
            return s3_error(409, "ConditionalRequestConflict",
                            "A conflicting conditional operation is in progress", head=head)
        failing = self.fail_gets and req.method == "GET" and bool(req.key)
        if failing or (self.error_rate and self._rng.random() < self.error_rate):
            self.counts["errors"] += 1
            if self._rng.random() < 0.5:
                return s3_error(503, "SlowDown", "Please reduce your request rate.", head=head)
            return s3_error(500, "InternalError", "We encountered an internal error.",
                            head=head)
        return None

    async def _forward(self, req: Request, upstream: Upstream,
                       writer: asyncio.StreamWriter) -> bool:
        """Send the request on and relay the answer; False when a side closes after it."""
        up_reader, up_writer = upstream
        drop = _HOP | ({"if-none-match"} if self.ignore_if_none_match else set())
        lines = [f"{req.method} {req.target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in req.headers if k.lower() not in drop]
        if req.body or req.method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(req.body)}")
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + req.body)
        await up_writer.drain()
        start, headers = await _read_head(up_reader)
        writer.write((start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
                      + "\r\n").encode("latin-1"))
        status = int(start.split(" ", 2)[1])
        until_close = await _relay_body(req.method, status, headers, up_reader, writer)
        await writer.drain()
        return not (until_close or _wants_close("", headers))

    # --- control ---------------------------------------------------------------------------
    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _relay_body(method: str, status: int, headers: list[tuple[str, str]],
                      src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
    """Copy an answer's body as it is framed; True when it ran to the connection's close."""
    if method == "HEAD" or status in (204, 304) or status < 200:
        return False
    if _chunked(headers):
        while True:
            line = await src.readuntil(b"\r\n")
            dst.write(line)
            if int(line.split(b";")[0].strip(), 16) == 0:
                while (trailer := await src.readuntil(b"\r\n")) != b"\r\n":
                    dst.write(trailer)
                dst.write(b"\r\n")
                return False
            dst.write(await src.readexactly(int(line.split(b";")[0].strip(), 16) + 2))
    length = _length(headers)
    if length is not None:
        while length:
            data = await src.read(min(length, 65536))
            if not data:
                raise ShimClosed("upstream closed mid-body")
            dst.write(data)
            length -= len(data)
        return False
    while data := await src.read(65536):
        dst.write(data)
    return True
