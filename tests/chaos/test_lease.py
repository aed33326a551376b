"""Fault class 4: a worker frozen (SIGSTOP) past its lease, then resumed (SIGCONT).

RabbitMQ 3.10's consumer timeout is one broker-wide setting (30 min by default) and cannot
be lowered per queue, so a frozen worker whose connection stays up keeps its deliveries.
What *can* bring a second worker onto the same input while the first is frozen: a second
message for the same upload (a re-publish), or the broker dropping the frozen worker's
connection on missed heartbeats. Both are covered; the late writer must not make a second
result.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
import redis.asyncio as aioredis

from faultproxy import FaultProxy

from .harness import Chaos

pytestmark = pytest.mark.chaos


async def _wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < timeout, f"timed out: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_late_writer_after_lease_expiry_makes_no_second_result(chaos: Chaos) -> None:
    s = chaos.setup(ETL_LEASE_TTL_S="1", ETL_AMQP_HEARTBEAT_S="10", ETL_CONCURRENCY="2")
    port = int(s.s3_endpoint_url.rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", port)
    r = aioredis.Redis.from_url(s.dedup_url)
    try:
        upload = chaos.upload_samples()[0]
        copy1 = {**upload.message(), "message_id": upload.message_id}
        copy2 = {**copy1, "message_id": str(uuid.uuid4())}
        lease = f"{s.dedup_prefix}:lease:{copy1['idempotency_key']}"
        proxy.latency_s = 1.0  # worker A's downloads are slow: it will hold the lease
        # Prefetch 1: the second copy cannot sit in frozen A's buffer, it goes to B.
        a = await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
                                 ETL_CONCURRENCY="1")
        chaos.mark_start()
        await chaos.publish([copy1])

        async def leased() -> bool:
            return bool(await r.exists(lease))

        await _wait(leased, 20, "worker A takes the lease")
        chaos.fleet.kill("a", signal.SIGSTOP)
        chaos.faults += 1
        t_stop = time.monotonic()

        async def expired() -> bool:
            return not await r.exists(lease)

        expiry_s = await _wait(expired, 10, "A's lease expires while it is frozen")
        await chaos.fleet.up("b")
        await chaos.publish([copy2])
        outcomes = chaos.ledger.outcomes

        async def b_done() -> bool:
            await chaos.ledger._all_outcomes()
            return copy2["message_id"] in outcomes

        await _wait(b_done, 30, "worker B processes the second copy")
        assert outcomes[copy2["message_id"]] == "processed"
        frozen_s = time.monotonic() - t_stop
        a.signal(signal.SIGCONT)

        async def a_done() -> bool:
            await chaos.ledger._all_outcomes()
            return copy1["message_id"] in outcomes

        await _wait(a_done, 40, "worker A finishes its copy after SIGCONT")
        late = [e for e in chaos.fleet.events("message_settled", worker=a)
                if e.get("message_id") == copy1["message_id"]]
        chaos.figures.update({"lease_ttl_s": 1, "lease_expired_after_stop_s": round(expiry_s, 2),
                              "frozen_s": round(frozen_s, 2),
                              "late_writer_outcome": [e.get("outcome") for e in late]})
        assert [e.get("outcome") for e in late] == ["duplicate"], "A wrote late and got 412"
        verdict = await chaos.finish()
        assert verdict.outcome_counts == {"processed": 1, "duplicate": 1}
    finally:
        proxy.close()
        await r.aclose()


async def test_frozen_worker_loses_its_delivery_on_missed_heartbeats(chaos: Chaos) -> None:
    s = chaos.setup(ETL_LEASE_TTL_S="1", ETL_AMQP_HEARTBEAT_S="2", ETL_CONCURRENCY="2")
    port = int(s.s3_endpoint_url.rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", port)
    try:
        first = chaos.upload_samples()[0]
        body = {**first.message(), "message_id": first.message_id}
        proxy.latency_s = 1.0
        a = await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
        b = await chaos.fleet.up("b")
        chaos.mark_start()
        b.signal(signal.SIGSTOP)  # so that A is the one that gets the message
        await chaos.publish([body])
        r = aioredis.Redis.from_url(s.dedup_url)
        lease = f"{s.dedup_prefix}:lease:{body['idempotency_key']}"
        try:
            async def leased() -> bool:
                return bool(await r.exists(lease))

            await _wait(leased, 20, "A takes the message")
        finally:
            await r.aclose()
        b.signal(signal.SIGCONT)
        chaos.fleet.kill("a", signal.SIGSTOP)
        chaos.faults += 1
        t_stop = time.monotonic()
        outcomes = chaos.ledger.outcomes

        async def settled() -> bool:
            await chaos.ledger._all_outcomes()
            return body["message_id"] in outcomes

        requeue_s = await _wait(settled, 60, "the broker requeues A's message to B")
        a.signal(signal.SIGCONT)
        assert await chaos.fleet.wait_consuming(a, 60), "A reconnects after SIGCONT"
        by_b = [e.get("outcome") for e in chaos.fleet.events("message_settled", worker=b)]
        chaos.figures.update({"heartbeat_s": 2, "stop_to_settled_by_other_worker_s":
                              round(requeue_s, 2), "settled_by_b": by_b,
                              "frozen_s": round(time.monotonic() - t_stop, 2)})
        assert by_b == ["processed"]
        await chaos.finish()
    finally:
        proxy.close()
