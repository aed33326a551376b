"""A decoder child that crashes takes only the file that crashed it.

The child process runs the files of several in-flight messages one after another; when it
dies, every queued file fails with it. Each is run again alone in a single-use child: the
culprit crashes again and is quarantined (``decoder_crashed``), the others succeed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl_engine.domain.model import DomainConfig, Lineage
from etl_engine.errors import PermanentError
from etl_engine.runtime import compute
from etl_engine.runtime.compute import ComputePool, CpuResult, Limits
from helpers import decode_children, wait_for

Children = Callable[[], list[int]]


@pytest.fixture
def children() -> Children:
    """The decode children this test started, seen from outside (helpers.decode_children),
    less any an earlier test's pool still had running: the package keeps no list of them
    for tests."""
    before = set(decode_children(os.getpid()))
    return lambda: sorted(set(decode_children(os.getpid())) - before)


def fake_stages(data: bytes, *_: object) -> CpuResult:
    """Stands in for run_cpu_stages in the child: b"crash" kills it, like a segfault."""
    if data == b"crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if data == b"slow":
        import time

        time.sleep(0.5)
    return CpuResult(len(data), {}, None, None)


def pid_stages(*_: object) -> CpuResult:
    """Stands in for run_cpu_stages: says which process ran it."""
    return CpuResult(os.getpid(), {}, None, None)


async def test_a_crash_is_pinned_on_its_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute, "run_cpu_stages", fake_stages)
    pool = ComputePool(1, 512, 30)
    lineage = Lineage("b", "raw/k", "m", "c", "StepsRecord", "ik")
    args = (lineage, Limits(10, 1024), DomainConfig(), datetime.now(UTC))
    try:
        results = await asyncio.gather(
            pool.run(b"slow", *args), pool.run(b"crash", *args), pool.run(b"fine", *args),
            return_exceptions=True)
        assert isinstance(results[0], CpuResult) and results[0].records == 4
        assert isinstance(results[1], PermanentError) and results[1].reason == "decoder_crashed"
        assert isinstance(results[2], CpuResult) and results[2].records == 4
        again = await pool.run(b"fine", *args)  # the shared child was replaced
        assert again.records == 4
    finally:
        pool.close()


async def test_a_restart_leaves_only_the_children_of_the_current_pool(
    monkeypatch: pytest.MonkeyPatch, children: Children,
) -> None:
    """Children start on first use; a crash replaces the pool (the file runs again in a
    single-use child, killed once it is done) and the next file starts a new child: no
    child of an earlier pool is left running."""
    monkeypatch.setattr(compute, "run_cpu_stages", pid_stages)
    pool = ComputePool(1, 512, 30)
    args = (Lineage("b", "raw/k", "m", "c", "StepsRecord", "ik"), Limits(10, 1024),
            DomainConfig(), datetime.now(UTC))
    try:
        assert children() == []
        first = (await pool.run(b"x", *args)).records
        assert first != os.getpid()
        assert children() == [first]
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: children() == [], 10, "the killed child to go")
        alone = (await pool.run(b"x", *args)).records
        assert alone not in (first, os.getpid())
        # the broken pool was replaced, its successor idle; the single-use child killed
        await wait_for(lambda: children() == [], 10, "the single-use child to go")
        third = (await pool.run(b"x", *args)).records
        assert third not in (first, alone)
        assert children() == [third]
    finally:
        pool.close()


async def test_small_files_run_in_the_worker_big_ones_in_a_child(
    tmp_path: Path, children: Children,
) -> None:
    """ETL_DECODE_INLINE_MAX_BYTES: a daily export stays in process; a file that
    decompresses past the cap (here a deflate file 30x smaller on disk) goes to a child."""
    from etl_devtools.samples import generate_large

    small, big = tmp_path / "small.avro", tmp_path / "big.avro"
    generate_large(small, "BloodGlucoseRecord", 300)
    generate_large(big, "BloodGlucoseRecord", 6_000, codec="deflate")
    limits = Limits(2_000_000, 512 << 20)
    assert compute.fits_inline(small.read_bytes(), limits, 256 << 10)
    assert not compute.fits_inline(big.read_bytes(), limits, 256 << 10)
    assert len(big.read_bytes()) < 256 << 10  # the compressed size alone would fit

    now = datetime.now(UTC)
    lineage = Lineage("b", "raw/k", "m", "c", "BloodGlucoseRecord", "ik")
    pool = ComputePool(1, 1024, 60, inline_max_bytes=256 << 10)
    try:
        await pool.warm()
        assert children() == []  # children start on first use
        got = await pool.run(small.read_bytes(), lineage, limits, DomainConfig(), now)
        assert children() == []
        assert got.output is not None and got.records == 300
        got = await pool.run(big.read_bytes(), lineage, limits, DomainConfig(), now)
        assert len(children()) == 1
        assert got.output is not None and got.records == 6_000
    finally:
        pool.close()
    # the same file gives the same result on either path
    inline = compute.run_cpu_stages(big.read_bytes(), lineage, limits, DomainConfig(), now)
    assert inline.output == got.output and inline.report == got.report


async def test_a_file_refused_by_the_prescan_is_refused_inline_with_its_reason(
    children: Children,
) -> None:
    pool = ComputePool(1, 512, 30, inline_max_bytes=1 << 20)
    lineage = Lineage("b", "raw/k", "m", "c", "StepsRecord", "ik")
    try:
        with pytest.raises(PermanentError) as info:
            await pool.run(b"not an avro file", lineage, Limits(10, 1024), DomainConfig(),
                           datetime.now(UTC))
        assert info.value.reason == "not_avro"
        assert children() == []
    finally:
        pool.close()


async def test_a_daily_export_runs_on_the_event_loop_bigger_files_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: Children,
) -> None:
    """ETL_DECODE_ON_LOOP_MAX_BYTES: no thread hand-off for the smallest files."""
    import threading

    from etl_devtools.samples import generate_large

    small, bigger = tmp_path / "small.avro", tmp_path / "bigger.avro"
    generate_large(small, "BloodGlucoseRecord", 200)
    generate_large(bigger, "BloodGlucoseRecord", 3_000)
    assert len(small.read_bytes()) < 64 << 10 < len(bigger.read_bytes()) < 1 << 20
    ran_on: list[int] = []
    real = compute.run_cpu_stages

    def spy(*args: object) -> CpuResult:
        ran_on.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(compute, "run_cpu_stages", spy)
    limits = Limits(2_000_000, 512 << 20)
    lineage = Lineage("b", "raw/k", "m", "c", "BloodGlucoseRecord", "ik")
    now = datetime.now(UTC)
    pool = ComputePool(1, 512, 30, inline_max_bytes=1 << 20, on_loop_max_bytes=64 << 10)
    try:
        on_loop = await pool.run(small.read_bytes(), lineage, limits, DomainConfig(), now)
        on_thread = await pool.run(bigger.read_bytes(), lineage, limits, DomainConfig(), now)
    finally:
        pool.close()
    assert ran_on[0] == threading.get_ident() != ran_on[1]
    assert children() == []
    assert on_loop.records == 200 and on_thread.records == 3_000
    assert on_loop.output is not None and on_thread.output is not None
    # the same file gives the same result on the thread
    off = ComputePool(1, 512, 30, inline_max_bytes=1 << 20, on_loop_max_bytes=0)
    try:
        again = await off.run(small.read_bytes(), lineage, limits, DomainConfig(), now)
    finally:
        off.close()
    assert ran_on[2] != ran_on[0]
    assert again.output == on_loop.output and again.report == on_loop.report
    # ETL_DECODE_INLINE_MAX_BYTES=0 still sends every file to a child
    monkeypatch.setattr(compute, "run_cpu_stages", pid_stages)
    isolated = ComputePool(1, 512, 30, inline_max_bytes=0, on_loop_max_bytes=64 << 10)
    try:
        got = await isolated.run(small.read_bytes(), lineage, limits, DomainConfig(), now)
        assert children() == [got.records]
    finally:
        isolated.close()
    assert got.records != os.getpid()  # ran in the child


def test_many_tiny_records_are_not_small_enough_for_the_loop() -> None:
    """A file of 1-byte records is small in bytes but not in work: at least 8 bytes a
    record on average, or it goes to the thread (where the file's real limits apply)."""
    import io

    import fastavro

    schema = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}
    buf = io.BytesIO()
    fastavro.writer(buf, schema, ({"a": 0} for _ in range(10_000)))
    data = buf.getvalue()
    limits = Limits(2_000_000, 512 << 20)
    assert len(data) < 64 << 10
    assert compute.fits_inline(data, limits, 64 << 10)
    assert not compute.fits_loop(data, limits, 64 << 10)
    assert compute.fits_loop(data, limits, 128 << 10)  # 16k records allowed there
    # a file over the file's own record limit is refused wherever it runs
    assert compute.fits_loop(data, Limits(5_000, 512 << 20), 64 << 10)
