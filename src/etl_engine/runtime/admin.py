"""The sidecar's admin read API: the DLQ and the quarantine, as JSON without personal data.

    GET /admin/dlq/stats               depth, age of the oldest message, counts by reason
    GET /admin/dlq?limit=N             the first N messages (N <= 200), ids masked
    GET /admin/quarantine/stats?hours=H  quarantined uploads of the last H hours (<= 720)
                                       by reason and record type

Token-guarded like ``POST /admin/drain`` (absent without ETL_ADMIN_TOKEN). The reads are
``adapters/operator_reads.py``, the code ``etl-engine dlq`` and ``quarantine`` use: the DLQ
is peeked without taking anything (asynchronously, on a connection of its own, with
ETL_ADMIN_AMQP_URL when set) and the fetched bodies (up to 1,000) are parsed and masked on
a thread of their own once the peek is over; a quarantine scan lists on one of two admin
threads and reads the outcome records on a 4-thread pool of its own (at most two scans at
once). None of it blocks the event loop or takes the message path's S3 threads. Answers are
cached for a few seconds and concurrent requests share one read: a dashboard polling every
worker costs the broker one peek per interval, not one per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import aiormq
import orjson

from etl_engine.adapters import operator_reads as reads
from etl_engine.adapters.storage import Storage
from etl_engine.observability.logs import error_class, get_logger
from etl_engine.settings import Settings

log = get_logger("etl.admin")

Response = tuple[int, str, bytes]
JSON = "application/json"
MAX_LIST = 200
LIST_SIZE = 50
STATS_SCAN = 1000  # DLQ messages looked at for the counts by reason
WINDOW_HOURS = 24
MAX_HOURS = 720  # 30 days
READ_TIMEOUT_S = 30.0
CACHE_S = {"dlq": 10.0, "quarantine": 30.0}
NOT_READABLE = ("the broker refused to let this worker read the DLQ: set ETL_ADMIN_AMQP_URL "
                "to a user that may (deployment/README.md, Admin API); depth only")


def _json(status: int, body: Any) -> Response:
    return status, JSON, orjson.dumps(body)


def _bounded(query: Mapping[str, str], name: str, default: int, top: int) -> int:
    """``?name=`` as an integer in 1..top; ValueError names the parameter."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer from 1 to {top}") from None
    if not 1 <= value <= top:
        raise ValueError(f"{name} must be an integer from 1 to {top}")
    return value


class AdminReads:
    """The GET routes of the admin API (``routes``), each answering from a short cache."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="etl-admin")
        # parsing and masking DLQ bodies: CPU work that must not run on the event loop, nor
        # wait behind a quarantine scan's listing on ``_pool``
        self._parse = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-admin-dlq")
        self._cache: dict[tuple[str, int], tuple[float, Response]] = {}
        self._running: dict[tuple[str, int], asyncio.Future[Response]] = {}

    def routes(self) -> dict[str, Callable[[Mapping[str, str]], Awaitable[Response]]]:
        return {"/admin/dlq/stats": self.dlq_stats, "/admin/dlq": self.dlq_list,
                "/admin/quarantine/stats": self.quarantine_stats}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._parse.shutdown(wait=False, cancel_futures=True)

    # --- routes ------------------------------------------------------------------------
    async def dlq_stats(self, query: Mapping[str, str]) -> Response:
        return await self._cached(("dlq_stats", 0), "dlq", self._dlq_stats)

    async def dlq_list(self, query: Mapping[str, str]) -> Response:
        try:
            limit = _bounded(query, "limit", LIST_SIZE, MAX_LIST)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return await self._cached(("dlq_list", limit), "dlq", lambda: self._dlq_list(limit))

    async def quarantine_stats(self, query: Mapping[str, str]) -> Response:
        try:
            hours = _bounded(query, "hours", WINDOW_HOURS, MAX_HOURS)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return await self._cached(("quarantine", hours), "quarantine",
                                  lambda: self._quarantine(hours))

    # --- reads -------------------------------------------------------------------------
    async def _dlq_stats(self) -> Response:
        async with self._peek() as (queue, depth):
            try:
                messages = await reads.fetch(queue, min(depth, STATS_SCAN))
            except aiormq.exceptions.ChannelAccessRefused:
                return _json(200, {"queue": self.settings.dlq_name, "depth": depth,
                                   "readable": False, "detail": NOT_READABLE})
        rows = await self._describe(messages)  # the peek is over: they are back in the DLQ
        return _json(200, {"queue": self.settings.dlq_name, "readable": True,
                           **reads.dlq_stats(depth, rows)})

    async def _dlq_list(self, limit: int) -> Response:
        async with self._peek() as (queue, depth):
            try:
                messages = await reads.fetch(queue, min(depth, limit))
            except aiormq.exceptions.ChannelAccessRefused:
                return _json(503, {"error": "dlq_not_readable", "detail": NOT_READABLE,
                                   "depth": depth})
        items = [asdict(row) for row in await self._describe(messages)]
        return _json(200, {"queue": self.settings.dlq_name, "depth": depth,
                           "shown": len(items), "items": items})

    async def _describe(self, messages: list[Any]) -> list[reads.DeadLetter]:
        """Each message's row, masked: JSON parsing of up to 1,000 bodies (each up to the
        broker's message size) on the parse thread, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._parse,
                                           lambda: [reads.describe(m) for m in messages])

    @contextlib.asynccontextmanager
    async def _peek(self) -> Any:
        url = self.settings.admin_amqp_url.get_secret_value()
        async with asyncio.timeout(READ_TIMEOUT_S), reads.open_dlq(self.settings, url=url) as (
                _, queue, depth):
            yield queue, depth

    async def _quarantine(self, hours: int) -> Response:
        scan = reads.QuarantineScan(since=time.time() - hours * 3600)
        loop = asyncio.get_running_loop()
        found = await asyncio.wait_for(loop.run_in_executor(
            self._pool, reads.quarantine_stats, self.storage, self.settings, scan),
            READ_TIMEOUT_S)
        return _json(200, {"prefix": self.settings.quarantine_prefix, "window_hours": hours,
                           **found})

    # --- cache -------------------------------------------------------------------------
    async def _cached(self, key: tuple[str, int], kind: str,
                      read: Callable[[], Awaitable[Response]]) -> Response:
        """A fresh cached answer, else the read already running, else a new read; a failed
        read answers 503 with the error class (never its text) and is not cached."""
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S[kind]:
            return hit[1]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._read(key, read))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    async def _read(self, key: tuple[str, int], read: Callable[[], Awaitable[Response]]
                    ) -> Response:
        try:
            answer = await read()
        except Exception as exc:
            log.warning("admin_read_failed", route=key[0], error=error_class(exc))
            return _json(503, {"error": "unavailable", "error_class": type(exc).__name__})
        self._cache[key] = (time.monotonic(), answer)
        return answer
