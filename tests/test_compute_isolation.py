"""A decoder child that crashes takes only the file that crashed it.

The child process runs the files of several in-flight messages one after another; when it
dies, every queued file fails with it. Each is run again alone in a single-use child: the
culprit crashes again and is quarantined (``decoder_crashed``), the others succeed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest

from etl_engine import compute
from etl_engine.compute import ComputePool, CpuResult, Limits
from etl_engine.errors import PermanentError
from etl_engine.stages import DomainConfig, Lineage


def fake_stages(data: bytes, *_: object) -> CpuResult:
    """Stands in for run_cpu_stages in the child: b"crash" kills it, like a segfault."""
    if data == b"crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if data == b"slow":
        import time

        time.sleep(0.5)
    return CpuResult(len(data), {}, None, None)


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
