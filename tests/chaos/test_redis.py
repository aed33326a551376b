"""Fault class 6: the dedup store killed and restarted, and flushed, mid-run.

Redis only saves work: the conditional write keeps results exactly-once without it, so
losing its state may cost repeated work (counted as ``duplicate`` outcomes), never a
second result.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from .harness import Chaos, scale
from .services import redis_guard, redis_start, redis_stop

pytestmark = pytest.mark.chaos


async def _processed(chaos: Chaos, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(int(chaos.fleet.health(w).get("processed") or 0)
              for w in chaos.fleet.workers.values()) < at_least:
        assert time.monotonic() < deadline, "workers are not processing"
        await asyncio.sleep(0.1)


@pytest.mark.disruptive
async def test_redis_killed_and_restarted_mid_run(chaos: Chaos) -> None:
    chaos.setup()
    n = scale(300, 2500)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    await chaos.fleet.up("a")
    await chaos.fleet.up("b")
    chaos.mark_start()
    await chaos.publish(bodies)
    await _processed(chaos, n // 5)
    with redis_guard():
        t0 = time.monotonic()
        redis_stop()
        chaos.faults += 1
        await asyncio.sleep(3.0)
        redis_start()
        down_s = time.monotonic() - t0
    # Every outcome recorded before the restart is gone with it: judge by S3 and the broker.
    chaos.figures.update({
        "redis_down_s": round(down_s, 2),
        "dedup_errors_logged": len(chaos.fleet.events("dedup_unavailable")),
    })
    await chaos.finish(outcomes=False)


def _empty_db() -> int:
    """A Redis database nobody uses, so FLUSHDB here disturbs no one (tests share db 15)."""
    for db in range(14, 7, -1):
        if redis.Redis(db=db).dbsize() == 0:
            return db
    pytest.skip("no empty Redis database to flush")


async def test_redis_flushed_mid_run_and_duplicates_replayed(chaos: Chaos) -> None:
    db = _empty_db()
    chaos.setup(ETL_DEDUP_URL=f"redis://127.0.0.1:6379/{db}")
    client = redis.Redis(db=db)
    n = scale(200, 1500)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    await chaos.fleet.up("a")
    await chaos.fleet.up("b")
    chaos.mark_start()
    await chaos.publish(bodies)
    await _processed(chaos, n // 3)
    client.flushdb()  # mid-run: leases and done markers of in-flight work vanish
    chaos.faults += 1
    await chaos.ledger.drain(120, outcomes=False)
    client.flushdb()  # every done marker gone: now publish every input again
    chaos.faults += 1
    again = [{**b, "message_id": str(uuid.uuid4())} for b in bodies]
    await chaos.publish(again)
    verdict = await chaos.finish(outcomes=False)
    settled = chaos.fleet.figures()["settled_by_outcome"]
    assert verdict.counts["processed"] == n
    assert settled.get("duplicate", 0) >= n, "every replay was caught by the conditional write"
    client.close()
