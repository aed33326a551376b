"""Fault class 3: SIGTERM mid-batch drains, acks what finished, exits 0; nothing redone."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from .harness import Chaos, scale

pytestmark = pytest.mark.chaos
FINAL = {"processed", "duplicate", "quarantined", "dead_letter"}


async def test_sigterm_mid_batch(chaos: Chaos) -> None:
    chaos.setup(ETL_CONCURRENCY="4", ETL_SHUTDOWN_GRACE_S="20")
    bodies = chaos.bodies(chaos.upload_samples(), scale(200, 1500))
    first = await chaos.fleet.up("w")
    chaos.mark_start()
    await chaos.publish(bodies)
    deadline = time.monotonic() + 30
    while int(chaos.fleet.health(first).get("processed") or 0) < len(bodies) // 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    t_term = time.monotonic()
    in_flight = chaos.fleet.kill("w", signal.SIGTERM)
    chaos.faults += 1
    assert await first.wait_exit(40) == 0, "a drained worker exits 0"
    drain_exit_s = round(time.monotonic() - t_term, 2)
    done_first = {e["message_id"] for e in chaos.fleet.events("message_settled", worker=first)
                  if e.get("outcome") in FINAL}
    # Acked exactly what finished: everything else is back in the queue, nothing more.
    ready = await chaos.ledger.ready_count()
    assert ready == len(bodies) - len(done_first), (ready, len(done_first))
    second = await chaos.fleet.up("w")
    chaos.figures.update({"in_flight_at_sigterm": in_flight, "sigterm_to_exit_s": drain_exit_s,
                          "done_before_sigterm_exit": len(done_first),
                          "returned_to_queue": ready})
    await chaos.finish()
    redone = [e for e in chaos.fleet.events("message_settled", worker=second)
              if e.get("message_id") in done_first]
    assert redone == [], "nothing finished before the drain was delivered again"
