"""An HTTP shim in front of the local S3 server that misbehaves as some stores do.

Why: ``faultproxy.FaultProxy`` cuts bytes; these faults need to read the request. Each
attribute is one behaviour, off by default (then every request is passed through as is):

- ``if_none_match``: what a PutObject with ``If-None-Match`` gets: ``"pass"``; ``"ignore"``
  (the header is dropped, so the store overwrites, as older MinIO releases and some
  S3-compatibles do); ``"409"`` (``ConditionalRequestConflict``: a competing conditional
  write in flight); ``"501"`` (``NotImplemented``).
- ``put_conflicts``: the next N PUTs of any kind (a copy, a plain put) get a 409;
  ``copy_conflicts``: the next N CopyObject requests (``x-amz-copy-source``) get a 409.
- ``truncate_get_at``: GET bodies are cut after that many bytes, the Content-Length kept,
  and the connection closed (a body cut short).

``requests`` logs (method, path, conditional) for every request seen. Runs in threads, so
synchronous and async tests can use it; ``url`` is the endpoint to configure.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "upgrade", "content-length"}


def _error_body(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>shim</Message></Error>").encode()


class S3Shim:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.if_none_match = "pass"
        self.put_conflicts = 0
        self.copy_conflicts = 0
        self.truncate_get_at: int | None = None
        self.requests: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                shim._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- one request ----------------------------------------------------------------------
    def _answer(self, req: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = _error_body(code)
        req.send_response(status)
        req.send_header("Content-Type", "application/xml")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _planned(self, method: str, conditional: bool, copy: bool) -> tuple[int, str] | None:
        """A made-up answer for this request, or None to pass it on."""
        with self._lock:
            if method == "PUT" and self.put_conflicts > 0:
                self.put_conflicts -= 1
                return 409, "ConditionalRequestConflict"
            if method == "PUT" and copy and self.copy_conflicts > 0:
                self.copy_conflicts -= 1
                return 409, "ConditionalRequestConflict"
        if method == "PUT" and conditional and self.if_none_match == "409":
            return 409, "ConditionalRequestConflict"
        if method == "PUT" and conditional and self.if_none_match == "501":
            return 501, "NotImplemented"
        return None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        method = req.command
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        conditional = any(k.lower() == "if-none-match" for k in headers)
        self.requests.append((method, req.path, conditional))
        copy = any(k.lower() == "x-amz-copy-source" for k in headers)
        planned = self._planned(method, conditional, copy)
        if planned is not None:
            self._answer(req, *planned)
            return
        if conditional and method == "PUT" and self.if_none_match == "ignore":
            headers = {k: v for k, v in headers.items() if k.lower() != "if-none-match"}
        status, reason, out_headers, data = self._forward(method, req.path, body, headers)
        req.send_response(status, reason)
        for name, value in out_headers:
            if name.lower() not in _HOP_BY_HOP:
                req.send_header(name, value)
        cut = self.truncate_get_at if method == "GET" and status < 300 else None
        if method == "HEAD":
            req.send_header("Content-Length", dict(
                (k.lower(), v) for k, v in out_headers).get("content-length", "0"))
        else:
            req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if method == "HEAD":
            return
        if cut is not None and cut < len(data):
            req.wfile.write(data[:cut])
            req.wfile.flush()
            req.close_connection = True  # the body ends early: the client sees the close
            with contextlib.suppress(OSError):
                req.connection.shutdown(2)
            return
        req.wfile.write(data)

    def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str]
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()
