"""Fault class 5: the broker restarted, the connection cut, and a silent blackhole."""

from __future__ import annotations

import asyncio
import time

import pytest

from faultproxy import FaultProxy

from .harness import Chaos, scale
from .services import amqp_up, rabbitmq_guard, rabbitmq_start, rabbitmq_stop

pytestmark = pytest.mark.chaos


async def _processed(chaos: Chaos, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(int(chaos.fleet.health(w).get("processed") or 0)
              for w in chaos.fleet.workers.values()) < at_least:
        assert time.monotonic() < deadline, "workers are not processing"
        await asyncio.sleep(0.1)


async def _consumers(chaos: Chaos, want: int, timeout: float) -> float:
    """Seconds until the work queue has ``want`` consumers again."""
    start = time.monotonic()
    while True:
        try:
            ch = await chaos.ledger._channel()
            q = await ch.declare_queue(chaos.settings.queue, passive=True)
            got = q.declaration_result.consumer_count
            await ch.close()
            if got >= want:
                return time.monotonic() - start
        except Exception:
            await chaos.ledger.close()
        assert time.monotonic() - start < timeout, "consumers did not come back"
        await asyncio.sleep(0.1)


@pytest.mark.disruptive
async def test_rabbitmq_restart_mid_run(chaos: Chaos) -> None:
    s = chaos.setup(ETL_AMQP_HEARTBEAT_S="5")
    n = scale(400, 3000)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    await chaos.fleet.up("a")
    await chaos.fleet.up("b")
    chaos.mark_start()
    await chaos.publish(bodies)
    await _processed(chaos, n // 5)
    with rabbitmq_guard():
        t0 = time.monotonic()
        stopped = time.time()
        await chaos.ledger.close()
        rabbitmq_stop()
        chaos.faults += 1
        await asyncio.sleep(2.0)
        rabbitmq_start()
        down_s = time.monotonic() - t0
    t_up = time.monotonic()
    while not await amqp_up(s.amqp_url.get_secret_value()):
        assert time.monotonic() - t_up < 120
        await asyncio.sleep(0.2)
    broker_back_s = time.monotonic() - t_up
    resume_s = await _consumers(chaos, 2, 90)
    chaos.figures.update({"broker_down_s": round(down_s, 2),
                          "broker_accepting_after_start_s": round(broker_back_s, 2),
                          "consumers_back_after_broker_up_s": round(resume_s, 2),
                          "consuming_again_after_stop_s": chaos.fleet.reconnect_s(stopped)})
    await chaos.finish(drain_timeout=180)


async def test_connection_cut_by_proxy(chaos: Chaos) -> None:
    chaos.setup(ETL_AMQP_HEARTBEAT_S="5")
    proxy = FaultProxy("127.0.0.1", 5672)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        n = scale(300, 2000)
        bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
        await chaos.fleet.up("a", ETL_AMQP_URL=url)
        await chaos.fleet.up("b", ETL_AMQP_URL=url)
        chaos.mark_start()
        await chaos.publish(bodies)
        recover = []
        for i in range(3):
            await _processed(chaos, (i + 1) * n // 5)
            cut = time.time()
            proxy.reset_all()
            chaos.faults += 1
            await _consumers(chaos, 2, 60)
            await asyncio.sleep(1.0)
            recover.append(chaos.fleet.reconnect_s(cut))
        chaos.figures["consuming_again_after_cut_s"] = recover
        await chaos.finish()
    finally:
        proxy.close()


async def test_silent_blackhole_detected_by_heartbeats(chaos: Chaos) -> None:
    chaos.setup(ETL_AMQP_HEARTBEAT_S="2")
    proxy = FaultProxy("127.0.0.1", 5672)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        n = scale(200, 1500)
        bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
        workers = [await chaos.fleet.up(name, ETL_AMQP_URL=url) for name in ("a", "b")]
        chaos.mark_start()
        await chaos.publish(bodies)
        await _processed(chaos, n // 4)
        proxy.blackhole = True
        chaos.faults += 1
        t0 = time.monotonic()
        detected: dict[str, float] = {}
        while len(detected) < len(workers):
            for name, w in zip(("a", "b"), workers, strict=True):
                h = chaos.fleet.health(w)
                if name not in detected and h.get("components", {}).get("rabbitmq") == "down":
                    detected[name] = round(time.monotonic() - t0, 2)
            assert time.monotonic() - t0 < 60, "a silent partition went unnoticed"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        healed = time.time()
        proxy.blackhole = False
        partition_s = time.monotonic() - t0
        await _consumers(chaos, 2, 90)
        chaos.figures.update({"heartbeat_s": 2, "detected_after_s": detected,
                              "partition_s": round(partition_s, 2),
                              "consuming_again_after_heal_s": chaos.fleet.reconnect_s(healed)})
        await chaos.finish()
    finally:
        proxy.close()
