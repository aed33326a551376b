"""The soak (long suite only: marker ``soak``, run by ``scripts/chaos.sh --long`` or
``scripts/chaos.sh --soak``): at least 20,000 inputs through three workers that are
SIGKILLed at random while one S3 request in ten gets a 5xx (the S3 shim). The figures
that count: lost 0, duplicated 0, two-outcome inputs 0.

``ETL_CHAOS_SOAK_INPUTS`` sets the count (default 20,000) for a shorter local try.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator

import pytest

from s3shim import S3Shim

from .harness import Chaos

pytestmark = [pytest.mark.chaos, pytest.mark.soak]
INPUTS = int(os.environ.get("ETL_CHAOS_SOAK_INPUTS", "20000"))
ERROR_RATE = 0.10
WORKERS = ("a", "b", "c")


@pytest.fixture
def shim(s3_endpoint: str) -> Iterator[S3Shim]:
    shim = S3Shim.before(s3_endpoint)
    yield shim
    shim.close()


async def _storm(chaos: Chaos, until: asyncio.Task[None], rng: random.Random,
                 via: dict[str, str]) -> int:
    """SIGKILL a random worker every 2-5 s and start it again (``via``: its S3 endpoint),
    until ``until`` is done and the work queue is nearly empty; returns how many
    deliveries were in flight at the kills."""
    in_flight = 0
    while not until.done() or await chaos.ledger.ready_count() > INPUTS // 50:
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        victim = rng.choice(WORKERS)
        in_flight += chaos.fleet.kill(victim)
        chaos.faults += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        chaos.fleet.start(victim, **via)
    return in_flight


async def test_soak_random_sigkills_and_s3_errors(chaos: Chaos, shim: S3Shim) -> None:
    assert INPUTS >= 1, "ETL_CHAOS_SOAK_INPUTS"
    # Kills return a worker's prefetch to the queue: a higher delivery limit keeps this
    # about kills, not the limit; more attempts absorb the 5xx that outlast obstore's own
    # retries (one S3 call in a thousand, at 10 % per request).
    chaos.setup(ETL_DELIVERY_LIMIT="30", ETL_CONCURRENCY="8", ETL_MAX_ATTEMPTS="8")
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), INPUTS)
    via = {"ETL_S3_ENDPOINT_URL": shim.url}
    shim.error_rate = ERROR_RATE
    for name in WORKERS:
        chaos.fleet.start(name, **via)
    for name in WORKERS:
        assert await chaos.fleet.wait_consuming(chaos.fleet.workers[name], 120)
    chaos.mark_start()
    publish = asyncio.create_task(chaos.publish(bodies))
    in_flight = await _storm(chaos, publish, random.Random(), via)
    await publish
    storm_end = time.monotonic() - chaos.t0
    for name in WORKERS:
        w = chaos.fleet.workers[name]
        if w.proc.poll() is not None:
            w = chaos.fleet.start(name, **via)
        assert await chaos.fleet.wait_consuming(w, 120)
    chaos.fault_counters.append(lambda: shim.counts["errors"])
    chaos.figures.update({"s3_error_rate": ERROR_RATE, "in_flight_at_kills": in_flight,
                          "storm_end_s": round(storm_end, 1)})
    verdict = await chaos.finish(drain_timeout=900)
    chaos.amend(s3_requests=shim.counts["requests"], s3_errors=shim.counts["errors"])
    assert verdict.counts["processed"] == INPUTS
    assert verdict.counts["lost"] == verdict.counts["duplicated"] == verdict.two_outcomes == 0
