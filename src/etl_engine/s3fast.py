"""A lean S3 client for the two calls on the hot path: GetObject and conditional PutObject.

Why: botocore spends about 1.2 ms of CPU on every call (event hooks, endpoint rules, the
user-agent string, parameter validation, response parsing) — per message that is more
than decoding a typical file (``docs/performance.md``). These two calls need none of it:
each is one SigV4-signed HTTP/1.1 request, sent with ``http.client`` over a small pool of
keep-alive connections (sized like the boto3 client's), for ~0.5 ms of CPU including the
socket work.

Only the happy path and the two expected answers are handled here: 200, 404 ``NoSuchKey``
(GET) and 412/409 (conditional PUT: the object exists). Any other answer raises
``Fallback`` and the caller repeats the call through boto3, so redirects, throttling,
server errors, access errors and servers without conditional writes keep botocore's
semantics. A refused, reset or timed-out connection is tried again twice (as botocore's
standard retry mode would), then raised as ``Unavailable``.

Used only where the set-up is plain: path-style addressing, signed requests with static or
refreshable credentials, no HTTP proxy. ``from_client`` returns None otherwise (boto3
does it all).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SAFE = "-_.~/"  # RFC 3986 unreserved + the path separator: S3 encodes the key once
_MAX_ERROR_BODY = 64 * 1024
_ATTEMPTS = 3
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class Fallback(Exception):
    """The fast path does not handle this answer: repeat the call through boto3."""


class Missing(Exception):
    """GET answered 404 NoSuchKey."""


class TooLarge(Exception):
    """The object is larger than the caller's limit."""


class Incomplete(Exception):
    """The connection ended before the whole body arrived (a network fault)."""


class Unavailable(Exception):
    """The server could not be reached or stopped answering (after retries)."""


class _Connections:
    """Idle keep-alive connections to one host (LIFO), at most ``size`` kept."""

    def __init__(self, scheme: str, host: str, port: int, size: int,
                 connect_timeout: float, read_timeout: float, ca_certs: str | None) -> None:
        self._scheme, self._host, self._port = scheme, host, port
        self._size = size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._context = (ssl.create_default_context(cafile=ca_certs)
                         if scheme == "https" else None)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (it may have gone stale)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        conn: http.client.HTTPConnection
        if self._context is not None:
            conn = http.client.HTTPSConnection(self._host, self._port,
                                               timeout=self._connect_timeout,
                                               context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port,
                                              timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def put(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Keep ``conn`` for the next request if the response allows it."""
        if resp.will_close or not resp.isclosed():
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class FastS3:
    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        *,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        ca_certs: str | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(endpoint_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("endpoint must be an http(s) URL")
        default_port = 443 if url.scheme == "https" else 80
        port = url.port or default_port
        self.host = url.hostname if port == default_port else f"{url.hostname}:{port}"
        self.base_path = url.path.rstrip("/")
        self.region = region
        self._credentials = credentials
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._conns = _Connections(url.scheme, url.hostname, port, pool_size,
                                   connect_timeout, read_timeout, ca_certs)

    @classmethod
    def from_client(cls, client: Any) -> FastS3 | None:
        """Mirror a boto3 S3 client's endpoint, region, credentials and pool; None if the
        client's set-up is anything the fast path does not reproduce exactly."""
        try:
            meta = client.meta
            config = meta.config
            if (config.s3 or {}).get("addressing_style") != "path":
                return None
            credentials = client._request_signer._credentials
            if credentials is None or meta.config.signature_version not in (None, "s3v4"):
                return None
            endpoint = meta.endpoint_url
            if _proxied(endpoint):
                return None
            verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
            verify = getattr(verify, "_verify", True)
            if verify is False:
                return None
            from botocore.httpsession import get_cert_path

            return cls(
                endpoint, meta.region_name or "us-east-1", credentials,
                pool_size=int(config.max_pool_connections or 10),
                connect_timeout=float(config.connect_timeout),
                read_timeout=float(config.read_timeout),
                ca_certs=get_cert_path(verify),
            )
        except Exception:  # any surprise: boto3 handles everything
            return None

    # --- calls ----------------------------------------------------------------------------
    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes; ``Missing``, ``TooLarge``, ``Incomplete``, ``Unavailable``
        or ``Fallback`` otherwise."""
        path = self._path(bucket, key)
        conn, resp = self._send("GET", path, None, EMPTY_SHA256, {})
        try:
            if resp.status == 200:
                length = resp.getheader("content-length")
                if length is not None and int(length) > max_bytes:
                    raise TooLarge()
                try:
                    body = resp.read() if length is not None else resp.read(max_bytes + 1)
                except (http.client.IncompleteRead, OSError) as exc:
                    raise Incomplete() from exc
                if len(body) > max_bytes:
                    raise TooLarge()
                if length is not None and len(body) != int(length):
                    raise Incomplete()
                return body
            data = resp.read(_MAX_ERROR_BODY)
            if resp.status == 404 and b"<Code>NoSuchKey</Code>" in data:
                raise Missing()
            raise Fallback()
        finally:
            self._conns.put(conn, resp)

    def put_if_absent(self, bucket: str, key: str, body: bytes, *, content_type: str,
                      metadata: dict[str, str]) -> bool:
        """Create ``key`` unless it exists (``If-None-Match: *``); False if it exists."""
        extra = {"content-type": content_type, "if-none-match": "*"}
        for name, value in metadata.items():
            if not (name.isascii() and value.isascii()):
                raise Fallback()  # boto3 knows how to encode it
            extra[f"x-amz-meta-{name.lower()}"] = value
        path = self._path(bucket, key)
        conn, resp = self._send("PUT", path, body, hashlib.sha256(body).hexdigest(), extra)
        try:
            # the status line is what counts; a broken body only means no reuse
            with contextlib.suppress(http.client.IncompleteRead, OSError):
                resp.read(_MAX_ERROR_BODY)
            if resp.status == 200:
                return True
            if resp.status in (409, 412):
                return False
            raise Fallback()  # incl. 501 NotImplemented: boto3's path has the fallback
        finally:
            self._conns.put(conn, resp)

    def close(self) -> None:
        self._conns.close()

    def _send(self, method: str, path: str, body: bytes | None, payload_sha256: str,
              extra: dict[str, str]
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request, up to three times on a network failure before the status
        line arrives (GET and a conditional PUT are both safe to repeat)."""
        for attempt in range(_ATTEMPTS):
            headers = self._sign(method, path, payload_sha256, extra)
            conn: http.client.HTTPConnection | None = None
            reused = False
            try:
                conn, reused = self._conns.get()
                conn.request(method, path, body=body, headers=headers)
                return conn, conn.getresponse()
            except _NETWORK_ERRORS as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 0:
                    continue  # an idle keep-alive connection the server had closed
                if attempt + 1 >= _ATTEMPTS:
                    raise Unavailable(type(exc).__name__) from exc
                time.sleep(0.05 * (attempt + 1))
        raise Unavailable("retries exhausted")  # pragma: no cover - loop always returns

    # --- SigV4 ----------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> str:
        return urllib.parse.quote(f"{self.base_path}/{bucket}/{key}", safe=_SAFE)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cache_key = (secret, day, self.region)
        key = self._keys.get(cache_key)
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 8:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _sign(self, method: str, path: str, payload_sha256: str,
              extra: dict[str, str], now: time.struct_time | None = None) -> dict[str, str]:
        creds = self._credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now or time.gmtime())
        day = amz_date[:8]
        headers = {"host": self.host, "x-amz-date": amz_date,
                   "x-amz-content-sha256": payload_sha256, **extra}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join((
            method, path, "",
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            signed, payload_sha256,
        ))
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}")
        return headers


def _proxied(endpoint: str) -> bool:
    """Whether the environment routes ``endpoint`` through an HTTP proxy."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return False
    url = urllib.parse.urlsplit(endpoint)
    if urllib.request.proxy_bypass(url.hostname or ""):
        return False
    return url.scheme in proxies


class AsyncFastS3:
    """The same two calls on the event loop (asyncio streams): no thread hand-off per call.

    Shares the signing, paths and limits of a ``FastS3``; its own keep-alive connections.
    Same answers and exceptions as ``FastS3`` (``Fallback``: repeat through boto3).
    """

    def __init__(self, fast: FastS3) -> None:
        self._fast = fast
        conns = fast._conns
        self._host, self._port = conns._host, conns._port
        self._ssl = conns._context
        self._connect_timeout = conns._connect_timeout
        self._read_timeout = conns._read_timeout
        self._size = conns._size
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        path = self._fast._path(bucket, key)
        conn, status, headers = await self._send("GET", path, None, EMPTY_SHA256, {})
        reusable = False
        try:
            if status == 200:
                length = headers.get("content-length")
                if length is not None and int(length) > max_bytes:
                    raise TooLarge()
                try:
                    body = await self._body(conn[0], headers, max_bytes + 1)
                except (asyncio.IncompleteReadError, OSError, TimeoutError,
                        ValueError) as exc:
                    raise Incomplete() from exc
                if len(body) > max_bytes:
                    raise TooLarge()
                reusable = True
                return body
            data = await self._body(conn[0], headers, _MAX_ERROR_BODY)
            reusable = True
            if status == 404 and b"<Code>NoSuchKey</Code>" in data:
                raise Missing()
            raise Fallback()
        finally:
            self._release(conn, headers, reusable)

    async def put_if_absent(self, bucket: str, key: str, body: bytes, *, content_type: str,
                            metadata: dict[str, str]) -> bool:
        extra = {"content-type": content_type, "if-none-match": "*"}
        for name, value in metadata.items():
            if not (name.isascii() and value.isascii()):
                raise Fallback()
            extra[f"x-amz-meta-{name.lower()}"] = value
        path = self._fast._path(bucket, key)
        conn, status, headers = await self._send("PUT", path, body,
                                                 hashlib.sha256(body).hexdigest(), extra)
        reusable = False
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, OSError, TimeoutError,
                                     ValueError):
                await self._body(conn[0], headers, _MAX_ERROR_BODY)
                reusable = True
            if status == 200:
                return True
            if status in (409, 412):
                return False
            raise Fallback()
        finally:
            self._release(conn, headers, reusable)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    # --- HTTP/1.1 on asyncio streams --------------------------------------------------------
    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(self._connect_timeout):
            return await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None)

    async def _send(
        self, method: str, path: str, body: bytes | None, payload_sha256: str,
        extra: dict[str, str],
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], int, dict[str, str]]:
        """One request, up to three times on a network failure before the status line."""
        for attempt in range(_ATTEMPTS):
            headers = self._fast._sign(method, path, payload_sha256, extra)
            if body is not None:
                headers["content-length"] = str(len(body))
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode()
            reused = bool(self._idle)
            conn = None
            try:
                conn = self._idle.pop() if reused else await self._connect()
                reader, writer = conn
                writer.write(request + body if body is not None else request)
                async with asyncio.timeout(self._read_timeout):
                    status, resp_headers = await self._head(reader)
                return conn, status, resp_headers
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn[1].close()
                if reused and attempt == 0:
                    continue  # an idle keep-alive connection the server had closed
                if attempt + 1 >= _ATTEMPTS:
                    raise Unavailable(type(exc).__name__) from exc
                await asyncio.sleep(0.05 * (attempt + 1))
        raise Unavailable("retries exhausted")  # pragma: no cover - loop always returns

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        version, code = lines[0].split(" ", 2)[:2]
        if not version.startswith("HTTP/1."):
            raise ValueError("not an HTTP/1.x response")
        headers: dict[str, str] = {"_version": version}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(code), headers

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str],
                    limit: int) -> bytes:
        """The body, up to ``limit`` bytes (a longer one: only its first ``limit`` bytes,
        and the connection is not reused)."""
        async with asyncio.timeout(self._read_timeout):
            length = headers.get("content-length")
            if length is not None:
                n = int(length)
                if n > limit:
                    headers["_partial"] = "1"
                    return await reader.readexactly(limit)
                return await reader.readexactly(n)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                parts: list[bytes] = []
                size = 0
                while True:
                    chunk = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if chunk == 0:
                        await reader.readuntil(b"\r\n")  # no trailers from S3
                        return b"".join(parts)
                    if size + chunk > limit:
                        headers["_partial"] = "1"
                        parts.append(await reader.readexactly(limit - size))
                        return b"".join(parts)
                    parts.append(await reader.readexactly(chunk))
                    await reader.readexactly(2)
                    size += chunk
            headers["_partial"] = "1"  # read to EOF: the connection cannot be reused
            return await reader.read(limit)

    def _release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 headers: dict[str, str], reusable: bool) -> None:
        keep = (reusable and "_partial" not in headers
                and headers.get("connection", "").lower() != "close"
                and headers.get("_version") == "HTTP/1.1"
                and len(self._idle) < self._size)
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
