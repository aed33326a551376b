"""The worker's sidecar HTTP server: /live, /ready, /health, /metrics.

A tiny asyncio HTTP/1.1 server on the worker's own event loop: if the loop stalls, /live
stops answering in time, which is exactly what a liveness probe should see. It reads
``WorkerState``; it never calls RabbitMQ, Redis or S3 itself (checks are cached by the
worker), and it reveals no personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from etl_engine import __version__
from etl_engine.metrics import REGISTRY

LIVENESS_THRESHOLD_S = 10.0
_MAX_REQUEST = 16 * 1024

Response = tuple[int, str, bytes]
AdminHandler = Callable[[], Awaitable[Response]]


class Sidecar:
    def __init__(self, state: object, *, host: str, port: int, admin_token: str = "",
                 admin_routes: dict[str, AdminHandler] | None = None) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._admin_token = admin_token
        self._admin = (admin_routes or {}) if admin_token else {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

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
        }
        return (200 if healthy else 503), "application/json", orjson.dumps(body)

    def metrics(self) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)

    # --- HTTP ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            status, ctype, body = await self._route(method, target.split("?", 1)[0], headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  405: "Method Not Allowed", 503: "Service Unavailable"}.get(status, "OK")
        try:
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str]) -> Response:
        gets = {"/live": self.live, "/ready": self.ready, "/health": self.health,
                "/metrics": self.metrics}
        if path in gets:
            if method not in ("GET", "HEAD"):
                return 405, "text/plain", b"method not allowed\n"
            return gets[path]()
        if path in self._admin:
            if method != "POST":
                return 405, "text/plain", b"method not allowed\n"
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self._admin_token.encode()):
                return 401, "text/plain", b"unauthorized\n"
            return await self._admin[path]()
        return 404, "text/plain", b"not found\n"
