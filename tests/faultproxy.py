"""A small TCP fault proxy for tests: sits between a client and a real service.

Modes: pass-through, added latency, blackhole (accept and forward nothing), reset (cut
every connection now), refuse (close new connections at once), close after N bytes.
Runs its own event loop in a thread so synchronous and async tests can both use it.

- ``blackhole`` is a silent partition: a connection that saw it stays dead (data dropped,
  and a close from the server is *not* passed on), so only the client's own timeouts or
  heartbeats can notice. Connections opened after it is lifted work normally.
- ``close_after_bytes`` cuts a connection once that many bytes went to the client
  (server -> client, e.g. mid-download); ``cuts_left`` bounds how many times (None: always).
- ``stop()`` / ``start()`` kill and restart the listener on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass


@dataclass
class _Link:
    """One proxied connection: both ends, bytes sent down, blackholed mid-stream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    sent_down: int = 0
    dead: bool = False


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency_s = 0.0
        self.latency_upstream = True  # False: delay only what goes to the client
        self.blackhole = False
        self.refuse = False
        self.close_after_bytes: int | None = None
        self.cuts_left: int | None = None
        self.cuts = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        if self.blackhole:  # a blackholed connection never comes back
            await self._hold(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update({writer, up_writer})
        link = _Link(writer, up_writer)
        await asyncio.gather(self._pump(link, reader, up_writer, False),
                             self._pump(link, up_reader, writer, True))
        self._writers.difference_update({writer, up_writer})

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Like a partition: the client connects, nothing ever answers."""
        self._writers.add(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass
        writer.transport.abort()
        self._writers.discard(writer)

    async def _pump(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    downstream: bool) -> None:
        try:
            while data := await src.read(65536):
                if self.blackhole:
                    link.dead = True
                if link.dead:
                    continue
                if self.latency_s and (downstream or self.latency_upstream):
                    await asyncio.sleep(self.latency_s)
                if downstream:
                    self._cut_if_due(link, dst, data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if link.dead and downstream:
                link.upstream.transport.abort()  # the server hung up: the client never hears
            else:
                for w in (link.client, link.upstream):
                    w.transport.abort()

    def _cut_if_due(self, link: _Link, dst: asyncio.StreamWriter, data: bytes) -> None:
        """Cut the downstream after ``close_after_bytes`` (while cuts are left)."""
        limit = self.close_after_bytes
        if limit is None or self.cuts_left == 0:
            return
        if link.sent_down + len(data) >= limit:
            dst.write(data[: max(limit - link.sent_down, 0)])
            self.cuts += 1
            if self.cuts_left is not None:
                self.cuts_left -= 1
            raise ConnectionResetError
        link.sent_down += len(data)

    def reset_all(self) -> None:
        """Cut every open connection (like a broker restart seen from the client)."""

        async def cut() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(cut())

    def stop(self) -> None:
        """Kill the proxy: stop listening and cut every connection (port stays reserved)."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(stop())

    def start(self) -> None:
        """Listen again on the same port after ``stop()``."""
        self._call(self._start())

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
