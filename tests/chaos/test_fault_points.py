"""Fault class 1: the worker SIGKILLs itself at each fault point; a new one takes over.

The points are installed from outside the package: tests/chaos/faulty_worker.py."""

from __future__ import annotations

import signal
import time

import pytest

from .harness import Chaos, scale

pytestmark = pytest.mark.chaos

POINTS = ["after_download", "after_decode", "after_write", "after_done", "before_ack"]


@pytest.mark.parametrize("point", POINTS)
async def test_sigkill_at_fault_point(chaos: Chaos, point: str) -> None:
    chaos.setup()
    bodies = chaos.bodies(chaos.upload_samples(), scale(24, 240))
    victim = bodies[len(bodies) // 3]["idempotency_key"]
    first = chaos.fleet.start("w", fault_point=f"{point}@{victim}")
    assert await chaos.fleet.wait_consuming(first)
    chaos.mark_start()
    await chaos.publish(bodies)
    assert await first.wait_exit(60) == -signal.SIGKILL, "the fault point fired"
    chaos.faults += 1
    t0 = time.monotonic()
    await chaos.fleet.up("w")
    chaos.figures["restart_to_consuming_s"] = round(time.monotonic() - t0, 2)
    settled_before = {e.get("message_id") for e in chaos.fleet.events("message_settled")}
    chaos.figures["settled_before_kill"] = len(settled_before)
    await chaos.finish()
