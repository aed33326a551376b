"""Fault class 2: three workers SIGKILLed at random intervals while messages flow."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from .harness import LONG, Chaos, scale

pytestmark = pytest.mark.chaos


async def test_random_sigkills_across_three_workers(chaos: Chaos) -> None:
    # A message can ride along in several killed workers' prefetch: a higher delivery
    # limit than the default keeps this scenario about kills, not about the limit.
    chaos.setup(ETL_DELIVERY_LIMIT="20", ETL_CONCURRENCY="8")
    n = scale(1200, 6000)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    names = ["a", "b", "c"]
    for name in names:
        chaos.fleet.start(name)
    for name in names:
        assert await chaos.fleet.wait_consuming(chaos.fleet.workers[name])
    chaos.mark_start()
    publish = asyncio.create_task(chaos.publish(bodies))
    rng = random.Random()
    lost_in_flight = 0
    storm_s = scale(20, 90)
    end = time.monotonic() + storm_s
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice(names)
        lost_in_flight += chaos.fleet.kill(victim)
        chaos.faults += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        chaos.fleet.start(victim)
    await publish
    for name in names:
        assert await chaos.fleet.wait_consuming(chaos.fleet.workers[name])
    chaos.figures.update({
        "storm_s": storm_s, "in_flight_at_kills": lost_in_flight,
        "storm_end_s": round(time.monotonic() - chaos.t0, 1), "long": LONG,
    })
    verdict = await chaos.finish(drain_timeout=scale(180, 600))
    assert verdict.counts["processed"] == n
