"""The worker's sidecar HTTP server: /live, /ready, /health, /metrics, and the admin API.

A tiny asyncio HTTP/1.1 server on the worker's own event loop: if the loop stalls, /live
stops answering in time, which is exactly what a liveness probe should see. It reads
``WorkerState``; it never calls RabbitMQ, Redis or S3 itself (checks are cached by the
worker), and it reveals no personal data.

Hardened for a hostile neighbour on its network: it binds 127.0.0.1 unless told otherwise
(containers set ``ETL_SIDECAR_HOST=0.0.0.0``), holds at most ``max_connections`` at a time
(a new one evicts the oldest: idle sockets cannot lock the probes out), gives a request
head ``IO_TIMEOUT_S`` to arrive and a response as long to be read, and the admin token is
compared in constant time.

Admin routes (``POST`` actions, ``GET`` reads with a query string) exist only while an admin
token is set: without one they answer 404 like any unknown path; with a missing or wrong
bearer token 401. The token can be replaced at run time (``set_admin_token``: a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from etl_engine import __version__
from etl_engine.observability.metrics import EVENT_LOOP_LAG, REGISTRY
from etl_engine.settings import ConfigError

LIVENESS_THRESHOLD_S = 10.0
HEARTBEAT_INTERVAL_S = 0.5
IO_TIMEOUT_S = 5.0  # to send a request head, and to read the response
_MAX_REQUEST = 16 * 1024

Response = tuple[int, str, bytes]
AdminHandler = Callable[[], Awaitable[Response]]  # POST /admin/...: an action
ReadHandler = Callable[[Mapping[str, str]], Awaitable[Response]]  # GET /admin/...?query
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 422: "Unprocessable Content",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Sidecar:
    def __init__(self, state: object, *, host: str, port: int, admin_token: str = "",
                 admin_routes: dict[str, AdminHandler] | None = None,
                 admin_reads: dict[str, ReadHandler] | None = None,
                 max_connections: int = 64, io_timeout_s: float = IO_TIMEOUT_S) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._admin_token = admin_token
        self._admin = dict(admin_routes or {})
        self._reads = dict(admin_reads or {})
        self._server: asyncio.AbstractServer | None = None
        self._max_connections = max(1, max_connections)
        self._io_timeout = io_timeout_s
        # Open connections, oldest first (dicts keep insertion order) -> their handler task.
        self._open: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self.evicted = 0

    async def start(self) -> int:
        """Listen; the port bound. A port in use (another worker on this host), one that
        needs privileges or a host that is not this machine's is the configuration's
        fault: ``ConfigError`` naming the settings (the worker exits 78, one line)."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=_MAX_REQUEST)
        except OSError as exc:
            raise ConfigError(
                f"the sidecar cannot listen on {self.host}:{self.port} "
                f"({os.strerror(exc.errno) if exc.errno else exc}): check ETL_SIDECAR_PORT "
                "(--sidecar-port; 0 takes any free port) and ETL_SIDECAR_HOST") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def set_admin_token(self, token: str) -> None:
        """Rotate the admin token (empty: the admin routes are gone) from the next request."""
        self._admin_token = token

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()  # idle keep-alives must not hold the shutdown
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _admit(self, writer: asyncio.StreamWriter) -> None:
        """Make room for a new connection by closing the oldest ones over the cap: a probe
        sends its request at once and is done in ms, so it is never the oldest for long."""
        while len(self._open) >= self._max_connections:
            oldest, task = next(iter(self._open.items()))
            del self._open[oldest]
            self.evicted += 1
            oldest.transport.abort()
            if task is not None:
                task.cancel()
        self._open[writer] = asyncio.current_task()

    # --- routes ------------------------------------------------------------------------
    def live(self) -> Response:
        age = time.monotonic() - self.state.heartbeat  # type: ignore[attr-defined]
        if age > LIVENESS_THRESHOLD_S:
            return 503, "application/json", orjson.dumps({"live": False, "heartbeat_age_s":
                                                         round(age, 1)})
        return 200, "application/json", orjson.dumps({"live": True})

    def ready(self) -> Response:
        st = self.state
        failing = [name for name, ok in st.components().items() if not ok]  # type: ignore[attr-defined]
        if st.draining:  # type: ignore[attr-defined]
            failing = ["draining", *failing]
        body = {"ready": not failing, "failing": failing}
        return (200 if not failing else 503), "application/json", orjson.dumps(body)

    def health(self) -> Response:
        st = self.state
        components = st.components()  # type: ignore[attr-defined]
        healthy = all(components.values()) and not st.draining  # type: ignore[attr-defined]
        body = {
            "service": "etl-narrative-engine",
            "version": __version__,
            "status": "ok" if healthy else "degraded",
            "worker_id": st.worker_id,  # type: ignore[attr-defined]
            "uptime_s": round(time.time() - st.started_at, 1),  # type: ignore[attr-defined]
            "components": {k: ("up" if v else "down") for k, v in components.items()},
            "draining": st.draining,  # type: ignore[attr-defined]
            "in_flight": st.in_flight,  # type: ignore[attr-defined]
            "processed": st.processed,  # type: ignore[attr-defined]
            "last_error_class": st.last_error_class,  # type: ignore[attr-defined]
            "config_version": getattr(st, "config_version", 1),
        }
        return (200 if healthy else 503), "application/json", orjson.dumps(body)

    def metrics(self) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)

    # --- HTTP ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit(writer)
        try:
            await self._exchange(reader, writer)
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        """One request, one response, each within the I/O timeout."""
        method = "GET"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._io_timeout)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            status, ctype, body = await self._route(method, target, headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        reason = _REASONS.get(status, "OK")
        try:
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await asyncio.wait_for(writer.drain(), self._io_timeout)
        except TimeoutError:
            writer.transport.abort()  # a client that does not read its response
        except ConnectionError:
            pass

    async def _route(self, method: str, target: str, headers: dict[str, str]) -> Response:
        path, _, query = target.partition("?")
        gets = {"/live": self.live, "/ready": self.ready, "/health": self.health,
                "/metrics": self.metrics}
        if path in gets:
            if method not in ("GET", "HEAD"):
                return 405, "text/plain", b"method not allowed\n"
            return gets[path]()
        token = self._admin_token
        if not token or (path not in self._admin and path not in self._reads):
            return 404, "text/plain", b"not found\n"
        if method != ("POST" if path in self._admin else "GET"):
            return 405, "text/plain", b"method not allowed\n"
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return 401, "text/plain", b"unauthorized\n"
        if path in self._admin:
            return await self._admin[path]()
        return await self._reads[path](dict(parse_qsl(query[:2048])))


async def beat(state: Any, interval: float = HEARTBEAT_INTERVAL_S) -> None:
    """Keep /live's heartbeat fresh, and measure the event loop's lag: how late this timer
    wakes past its interval. A loop blocked by CPU work delays probes, AMQP heartbeats and
    acks alike; the histogram shows it before the liveness threshold does."""
    clock = time.monotonic
    while True:
        state.heartbeat = clock()
        due = state.heartbeat + interval
        await asyncio.sleep(interval)
        EVENT_LOOP_LAG.observe(max(0.0, clock() - due))
