"""Issue 15, holes 5 and 6: the broker under pressure, judged by the ledger (both scenarios
are disruptive: they touch the shared local RabbitMQ, and always put it back).

- A memory alarm (watermark 1 byte: every connection that publishes is blocked) for 30 s
  (15 s in the CI variant) while one worker gets SIGTERM. The workers start inside the
  alarm and must dead-letter some messages: their copies cannot be confirmed. A settle
  must not hang the drain, nothing may be acked without its copy, and once the alarm
  clears every input has exactly one outcome.
- A broker restart (``stop_app`` / ``start_app``) while the retry tiers hold the inputs'
  retry copies: the copies are the only ones left (the originals are acked), and they
  expire while the broker is down or recovering. They must come back.

The watermark is read first (``rabbitmqctl environment``) and restored exactly.
(``test_confirm_under_memory_alarm.py`` checks the worker's side of the alarm: confirm
timeouts, requeues, the drain.)
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from etl_engine.adapters.publisher import Publisher
from s3shim import S3Shim

from .harness import Chaos, scale
from .ledger import broker_queues
from .services import (
    amqp_up,
    memory_alarm,
    memory_alarm_on,
    rabbitmq_guard,
    rabbitmq_start,
    rabbitmq_stop,
)

pytestmark = [pytest.mark.chaos, pytest.mark.disruptive]
ALARM_S = 30.0  # the 30 s, in the CI variant too


@pytest.fixture
def shim(s3_endpoint: str) -> Iterator[S3Shim]:
    shim = S3Shim.before(s3_endpoint)
    yield shim
    shim.close()


async def _publish_mixed(chaos: Chaos, good: list[dict[str, Any]], every: int = 8) -> None:
    """The good inputs with an invalid-JSON message after every ``every`` of them: the
    worker must dead-letter those (a publish each)."""
    async with Publisher(chaos.settings) as pub:
        for i, body in enumerate(good):
            chaos.ledger.add(body)
            await pub.publish(body)
            if i % every == every - 1:
                mid = f"bad-{uuid.uuid4().hex[:12]}"
                chaos.ledger.add(b"{not json", expect="dead_lettered", reason="invalid_json",
                                 label=f"bad-json-{i}", message_id=mid, input_id=mid)
                await pub.publish(b"{not json", routing="health.processing.stepsrecord.normal",
                                  message_id=mid)


async def test_memory_alarm_while_a_worker_is_terminated(chaos: Chaos) -> None:
    chaos.setup(ETL_SHUTDOWN_GRACE_S="10", ETL_PUBLISH_CONFIRM_TIMEOUT_S="3",
                ETL_CONCURRENCY="4")
    good = chaos.bodies(chaos.upload_samples(max_bytes=8_000), scale(120, 1200))
    chaos.mark_start()
    await _publish_mixed(chaos, good)
    with memory_alarm() as saved:
        # The workers start inside the alarm: the first dead-letter copy each publishes
        # blocks its connection (the broker stops reading it: acks included).
        t_alarm = time.monotonic()
        chaos.faults += 1
        alarm_seen = memory_alarm_on()
        for name in ("a", "b"):
            await chaos.fleet.up(name)
        await asyncio.sleep(5.0)
        in_flight = int(chaos.fleet.health(chaos.fleet.workers["a"]).get("in_flight") or 0)
        t_term = time.monotonic()
        chaos.fleet.kill("a", signal.SIGTERM)
        chaos.faults += 1
        code = await chaos.fleet.workers["a"].wait_exit(60)
        term_exit_s = time.monotonic() - t_term
        await asyncio.sleep(max(0.0, ALARM_S - (time.monotonic() - t_alarm)))
        alarm_s = time.monotonic() - t_alarm
    await chaos.fleet.up("a")
    chaos.figures.update({"alarm_s": round(alarm_s, 1), "alarm_seen": alarm_seen,
                          "watermark_restored": " ".join(saved),
                          "in_flight_at_sigterm": in_flight,
                          "sigterm_to_exit_s": round(term_exit_s, 2),
                          "sigterm_exit_code": code})
    # confirms held up by the alarm: a DLQ copy may land after its timeout (same outcome)
    await chaos.finish(drain_timeout=120, repeated_dead_letters=True)
    assert alarm_seen, "the broker never raised the memory alarm"
    assert code == 0 and term_exit_s < 40, "the drain hung on the blocked broker"


async def _retry_tiers_hold(chaos: Chaos, at_least: int, timeout: float) -> int:
    names = [chaos.settings.retry_queue_name(t) for t in range(len(chaos.settings.retry_delays))]
    deadline = time.monotonic() + timeout
    while True:
        queues = await asyncio.to_thread(broker_queues, names) or {}
        held = sum(r for r, _, _ in queues.values())
        if held >= at_least:
            return held
        assert time.monotonic() < deadline, f"retry tiers hold {held}, want {at_least}"
        await asyncio.sleep(0.2)


async def test_broker_restart_while_retry_tiers_hold_messages(chaos: Chaos, shim: S3Shim
                                                             ) -> None:
    # Delays shorter than the restart: the copies expire while the broker is down or
    # recovering, when the work queue may not take them yet (a classic tier drops them).
    s = chaos.setup(ETL_RETRY_DELAYS_MS="4000,4000,4000", ETL_MAX_ATTEMPTS="6",
                    ETL_CONCURRENCY="8", ETL_AMQP_HEARTBEAT_S="5")
    n = scale(40, 400)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    shim.fail_gets = True  # every download a 5xx: each input goes to a retry tier
    await chaos.fleet.up("w", ETL_S3_ENDPOINT_URL=shim.url)
    chaos.mark_start()
    await chaos.publish(bodies)
    held = await _retry_tiers_hold(chaos, n // 2, 60)
    with rabbitmq_guard():
        t0 = time.monotonic()
        await chaos.ledger.close()
        rabbitmq_stop()
        chaos.faults += 1
        shim.fail_gets = False
        await asyncio.sleep(2.0)
        rabbitmq_start()
        down_s = time.monotonic() - t0
    while not await amqp_up(s.amqp_url.get_secret_value()):
        assert time.monotonic() - t0 < 120, "the broker did not come back"
        await asyncio.sleep(0.2)
    chaos.figures.update({"retry_tiers_held_at_stop": held, "broker_down_s": round(down_s, 2),
                          "s3_errors_injected": shim.counts["errors"]})
    verdict = await chaos.finish(drain_timeout=120)
    assert verdict.counts["processed"] == n
