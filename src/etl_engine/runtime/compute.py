"""The CPU stages — decode, validate, transform — and where they run.

The smallest files (records up to ``on_loop_max_bytes``, 64 KiB: a daily export) run on
the event loop itself: a few ms of work, cheaper than handing it to a thread and back
(~5 % of a message's CPU, measured side by side). Small files (up to ``inline_max_bytes``)
run on a thread of the worker: no
pickling to another process, no second interpreter in memory. Files whose records
decompress to more than ``inline_max_bytes`` go to a small process pool, started on first
use: there a hostile or huge file that exhausts memory or crashes the decoder takes down
a disposable child with a memory limit, not the worker, and its seconds of CPU do not
hold the worker's GIL. ``ETL_DECODE_PROCESSES=0`` runs everything on the thread;
``ETL_DECODE_INLINE_MAX_BYTES=0`` sends everything to the children.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import SimpleQueue

from etl_engine.domain import avro, validation
from etl_engine.domain.model import DomainConfig, Lineage, Record, TrainingOutput
from etl_engine.domain.record_types import reader_schema
from etl_engine.domain.transform import column_sink, transform
from etl_engine.errors import PermanentError
from etl_engine.observability import telemetry


@dataclass(frozen=True, slots=True)
class Limits:
    max_records: int
    max_decompressed_bytes: int


@dataclass(slots=True)
class CpuResult:
    """What the CPU stages hand back to the worker (small: no records)."""

    records: int
    report: dict
    output: TrainingOutput | None
    quarantine_reason: str | None
    timings: dict[str, float] = field(default_factory=dict)
    # Wall-clock (start, end) ns per stage: the parent turns them into trace spans.
    stage_ns: dict[str, tuple[int, int]] = field(default_factory=dict)


def run_cpu_stages(
    data: bytes,
    lineage: Lineage,
    limits: Limits,
    config: DomainConfig,
    processed_at: datetime,
) -> CpuResult:
    """decode -> validate -> transform, pure apart from the clock used for timings.

    Records stream from the decoder through validation one at a time, and the long series
    (CGM, heart rate) go straight into column stores, so memory stays flat with file size.
    The decoder's share of the interleaved decode+validate pass is timed per record.
    """
    t0, w0 = time.perf_counter(), time.time_ns()
    stream = avro.decode_stream(
        data,
        lineage.record_type,
        reader_schema(lineage.record_type),
        max_records=limits.max_records,
        max_decompressed_bytes=limits.max_decompressed_bytes,
    )
    decode_s = [time.perf_counter() - t0]
    stream.records = _timed(stream.records, decode_s)
    now_ms = int(processed_at.timestamp() * 1000)
    report = validation.validate(stream, now_ms=now_ms, config=config,
                                 sink=column_sink(lineage.record_type),
                                 upload_ms=_epoch_ms(lineage.upload_timestamp_utc))
    t2, w2 = time.perf_counter(), time.time_ns()
    w1 = w0 + int(decode_s[0] * 1e9)  # stage spans: decode first, then the rest
    timings = {"decode": decode_s[0], "validate": t2 - t0 - decode_s[0]}
    stage_ns = {"decode": (w0, w1), "validate": (w1, w2)}
    count = report.total_records
    del stream
    if not report.passed:
        return CpuResult(count, report.to_dict(), None, report.quarantine_reason, timings,
                         stage_ns)
    output = transform(report, lineage, config=config, processed_at=processed_at)
    timings["transform"] = time.perf_counter() - t2
    stage_ns["transform"] = (w2, time.time_ns())
    return CpuResult(count, report.to_dict(), output, None, timings, stage_ns)


def _epoch_ms(iso: str | None) -> int | None:
    """The message's upload time in epoch ms (naive means UTC); None if absent or odd."""
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _timed(records: Iterator[Record], acc: list[float]) -> Iterator[Record]:
    """``records``, adding the time spent producing them to ``acc[0]``."""
    clock = time.perf_counter
    step = records.__next__
    while True:
        t = clock()
        try:
            rec = step()
        except StopIteration:
            acc[0] += clock() - t
            return
        acc[0] += clock() - t
        yield rec


def fits_inline(data: bytes, limits: Limits, inline_max_bytes: int,
                max_records: int | None = None, max_blocks: int | None = None) -> bool:
    """True when the file's records decompress to at most ``inline_max_bytes`` (and, if
    given, number at most ``max_records`` in at most ``max_blocks`` blocks).

    Reads block headers only (deflate and unsized zstandard blocks are inflated, and stop
    at the cap; snappy and sized zstandard blocks say their size), so a bomb is sent to a
    child after a bounded amount of work. A file the pre-scan refuses for any other reason
    "fits": the stages refuse it again, with that reason, inline.
    """
    cap = limits.max_records if max_records is None else min(max_records, limits.max_records)
    try:
        avro.scan_container(data, max_records=cap, max_decompressed_bytes=inline_max_bytes,
                            max_blocks=max_blocks)
    except PermanentError as exc:
        if exc.reason == "too_many_records":
            return cap == limits.max_records  # refused for good, or only too many here
        if exc.reason == "too_many_blocks":
            return max_blocks is None  # refused for good, or only too many here
        return exc.reason != "decompression_limit_exceeded"
    return True


# The event loop's routing check reads at most this many blocks (a daily export has 1-5):
# a file with more goes to the thread, where its own limits apply.
LOOP_MAX_BLOCKS = 64


def fits_loop(data: bytes, limits: Limits, on_loop_max_bytes: int) -> bool:
    """Small enough for the event loop: at most ``on_loop_max_bytes`` of records in at most
    ``LOOP_MAX_BLOCKS`` blocks, the file at most twice that (header included), and at least
    8 bytes a record on average (ours take more), so the work follows the bytes even for a
    hostile file of many empty records or blocks: this check itself stays a few µs to ms.
    """
    if len(data) > 2 * on_loop_max_bytes:
        return False
    return fits_inline(data, limits, on_loop_max_bytes, max_records=on_loop_max_bytes // 8,
                       max_blocks=LOOP_MAX_BLOCKS)


def _run_inline(
    data: bytes, lineage: Lineage, limits: Limits, config: DomainConfig,
    processed_at: datetime, inline_max_bytes: int,
) -> CpuResult | None:
    """The stages on this thread, or None when the file is too big for it."""
    if inline_max_bytes > 0 and not fits_inline(data, limits, inline_max_bytes):
        return None
    return run_cpu_stages(data, lineage, limits, config, processed_at)


def _preload() -> None:
    """Parse every reader schema once, ahead of the first message of each type."""
    from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES

    for record_type in SUPPORTED_RECORD_TYPES:
        reader_schema(record_type)


def _child_init(memory_limit_bytes: int, started: SimpleQueue[int]) -> None:
    """In each child, before its first file: limits, signals, and its pid to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):  # platform without RLIMIT_AS
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    started.put(os.getpid())


@contextlib.contextmanager
def _file_limits(on_timeout: Callable[[], None] | None = None) -> Iterator[None]:
    """The file ran out of time or memory: that is the file's failure (quarantine), not
    the worker's. ``on_timeout`` first replaces what the abandoned work still holds."""
    try:
        yield
    except TimeoutError:
        if on_timeout is not None:
            on_timeout()
        raise PermanentError("processing_timeout", stage="decode") from None
    except MemoryError:
        raise PermanentError("resource_limit_exceeded", stage="decode") from None


class _Children:
    """A process pool, and the pids its children report from the pool's initializer (the
    executor's own table of processes is private): a restart kills them, and a submit
    that would start one is made off the event loop."""

    def __init__(self, workers: int, memory_limit_bytes: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["etl_engine.runtime.compute"])
        self.workers = workers
        self._started: SimpleQueue[int] = ctx.SimpleQueue()
        self._pids: set[int] = set()
        self.executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_child_init,
            initargs=(memory_limit_bytes, self._started),
        )

    def _reported(self) -> set[int]:
        while not self._started.empty():
            self._pids.add(self._started.get())
        return self._pids

    def all_started(self) -> bool:
        """Every child is up: a submit will not start one."""
        return len(self._reported()) >= self.workers

    def pids(self) -> list[int]:
        """The children that are still running."""
        reported = self._reported()
        return sorted(p.pid for p in multiprocessing.active_children()
                      if p.pid is not None and p.pid in reported)

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Without waiting: for a pool whose children were killed or are being replaced."""
        self.executor.shutdown(wait=False, cancel_futures=True)


async def _submit(pool: _Children, fn: Callable[..., CpuResult], *args: object) -> CpuResult:
    """``fn(*args)`` in ``pool``. A submit that starts a child (the first one, or after a
    restart) waits for the forkserver to import our modules and fork: 0.5 s or more, so it
    is made from a helper thread, never on the event loop."""
    if pool.all_started():
        return await asyncio.wrap_future(pool.executor.submit(fn, *args))
    fut = await asyncio.to_thread(pool.executor.submit, fn, *args)
    return await asyncio.wrap_future(fut)


class ComputePool:
    """Runs ``run_cpu_stages`` on a thread or in child processes, with a time limit.

    ``processes=0``: always the thread. Otherwise files up to ``inline_max_bytes``
    (decompressed) take the thread and bigger ones a child; ``inline_max_bytes=0`` sends
    every file to a child (the children are then started by ``warm``). Before either,
    files up to ``on_loop_max_bytes`` run on the caller's event loop (0: never).
    """

    def __init__(self, processes: int, memory_limit_mb: int, timeout_s: float,
                 inline_max_bytes: int = 0, on_loop_max_bytes: int = 0) -> None:
        self._workers = processes
        # With children, nothing runs in process beyond the inline cap: inline_max_bytes=0
        # keeps its meaning (every file in a child, full isolation).
        self._on_loop_max = (on_loop_max_bytes if processes == 0
                             else min(on_loop_max_bytes, inline_max_bytes))
        self._memory_limit = memory_limit_mb * 1024 * 1024
        self._timeout = timeout_s
        # -1: no size check (no children to send big files to).
        self._inline_max = -1 if processes == 0 else inline_max_bytes
        self._thread: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu")
            if processes == 0 or inline_max_bytes > 0 else None)
        self._pool: _Children | None = None  # started on first use

    def _new(self, workers: int | None = None) -> _Children:
        return _Children(workers or self._workers, self._memory_limit)

    def _children(self) -> _Children:
        if self._pool is None:
            self._pool = self._new()
        return self._pool

    async def warm(self) -> None:
        """Parse the schemas where files will be decoded, and start children that will be
        used for every file, so the first message does not pay for their start-up."""
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(self._thread, _preload)
        if self._thread is None:
            executor = self._children().executor
            await asyncio.gather(*(loop.run_in_executor(executor, _preload)
                                   for _ in range(self._workers)))

    async def run(
        self, data: bytes, lineage: Lineage, limits: Limits, config: DomainConfig,
        processed_at: datetime,
    ) -> CpuResult:
        args = (data, lineage, limits, config, processed_at)
        if self._on_loop_max > 0 and fits_loop(data, limits, self._on_loop_max):
            # The pre-scan bounds this to a few ms: the loop stalls less than a thread
            # hand-off costs. A file the pre-scan refuses is refused here, cheaply.
            with _file_limits():
                result = run_cpu_stages(*args)
        else:
            inline = await self._on_thread(*args) if self._thread is not None else None
            result = inline if inline is not None else await self._in_child(*args)
        telemetry.record_stages(result.stage_ns)  # children of the caller's current span
        return result

    async def _on_thread(
        self, data: bytes, lineage: Lineage, limits: Limits, config: DomainConfig,
        processed_at: datetime,
    ) -> CpuResult | None:
        """The stages on the worker's CPU thread, or None when the file is too big for it."""
        thread = self._thread
        assert thread is not None
        fut = asyncio.get_running_loop().run_in_executor(
            thread, _run_inline, data, lineage, limits, config, processed_at, self._inline_max)
        with _file_limits(on_timeout=functools.partial(self._replace_thread, thread)):
            return await asyncio.wait_for(fut, self._timeout)

    def _replace_thread(self, thread: ThreadPoolExecutor) -> None:
        """A thread cannot be stopped: leave it to finish and use a fresh one."""
        if self._thread is thread:
            thread.shutdown(wait=False, cancel_futures=True)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu")

    async def _in_child(
        self, data: bytes, lineage: Lineage, limits: Limits, config: DomainConfig,
        processed_at: datetime,
    ) -> CpuResult:
        pool = self._children()
        pooled = _submit(pool, run_cpu_stages, data, lineage, limits, config, processed_at)
        with _file_limits(on_timeout=functools.partial(self._restart, pool)):
            try:
                return await asyncio.wait_for(pooled, self._timeout)
            except (BrokenProcessPool, asyncio.CancelledError) as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and (
                        task is None or task.cancelling()):
                    raise  # this task is cancelled (not its work item by a pool restart)
                self._restart(pool)
                # This file or a neighbour crashed the child (or a restart dropped our
                # queued work): run it again alone, so a crash there is this file's own.
                return await self._run_alone(data, lineage, limits, config, processed_at)

    async def _run_alone(
        self, data: bytes, lineage: Lineage, limits: Limits, config: DomainConfig,
        processed_at: datetime,
    ) -> CpuResult:
        """One file in a single-use pool: a crash there is the file's, so quarantine."""
        alone = self._new(1)
        fut = _submit(alone, run_cpu_stages, data, lineage, limits, config, processed_at)
        try:
            with _file_limits():
                try:
                    return await asyncio.wait_for(fut, self._timeout)
                except BrokenProcessPool:
                    raise PermanentError("decoder_crashed", stage="decode") from None
        finally:
            alone.kill()
            alone.shutdown()

    def _restart(self, broken: _Children) -> None:
        if broken is not self._pool:
            return  # someone already replaced it
        broken.kill()
        broken.shutdown()
        self._pool = self._new()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.executor.shutdown(wait=True, cancel_futures=True)
