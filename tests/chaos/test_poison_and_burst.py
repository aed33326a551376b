"""Fault classes 8 and 9: a message that kills every worker that touches it, and a burst
of 100 copies of one message across three workers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from .harness import Chaos, scale

pytestmark = pytest.mark.chaos


async def test_poison_message_ends_in_dlq_after_delivery_limit(chaos: Chaos) -> None:
    limit, concurrency = 2, 4
    chaos.setup(ETL_DELIVERY_LIMIT=str(limit), ETL_CONCURRENCY=str(concurrency))
    uploads = chaos.upload_samples(max_bytes=8_000)
    good = chaos.bodies(uploads, scale(60, 400))
    (poison,) = chaos.bodies(uploads[:1], 1, prefix=f"poison-{uuid.uuid4().hex[:8]}")
    # after_decode: the worker downloaded and decoded it, then dies (like a decoder
    # segfault in the worker itself), on every delivery.
    chaos.supervise("w", fault_point=f"after_decode@{poison['idempotency_key']}")
    await asyncio.sleep(0.5)
    chaos.mark_start()
    half = len(good) // 2
    await chaos.publish(good[:half])
    await chaos.publish([poison], expect="dead_lettered", reason="delivery_limit")
    await chaos.publish(good[half:])
    chaos.fault_counters.append(lambda: chaos.fleet.kills)
    # Messages unacked in the worker when it dies share the poison's fate for that
    # delivery (the broker counts them too): with a small limit some may be dead-lettered
    # with it. They are counted, never lost.
    verdict = await chaos.finish(drain_timeout=120, exact=False)
    pid = poison["idempotency_key"]
    assert verdict.classes[pid] == "dead_lettered"
    assert verdict.reasons[pid] == "delivery_limit"
    assert chaos.fleet.kills == limit + 1, "dead-lettered on the delivery after the limit"
    collateral = [i for i, c in verdict.classes.items() if i != pid and c != "processed"]
    assert all(verdict.classes[i] == "dead_lettered" and verdict.reasons[i] == "delivery_limit"
               for i in collateral)
    assert len(collateral) <= (limit + 1) * (concurrency - 1)
    assert verdict.counts["processed"] == len(good) - len(collateral), "the others kept flowing"
    chaos.amend(collateral_dead_lettered=len(collateral))


async def test_burst_of_one_hundred_copies(chaos: Chaos) -> None:
    chaos.setup(ETL_CONCURRENCY="8")
    upload = chaos.upload_samples(max_bytes=8_000)[0]
    base = upload.message()
    copies = [{**base, "message_id": str(uuid.uuid4())} for _ in range(100)]
    for name in ("a", "b", "c"):
        await chaos.fleet.up(name)
    chaos.mark_start()
    await chaos.publish(copies)
    verdict = await chaos.finish()
    assert verdict.counts["processed"] == 1
    assert verdict.outcome_counts == {"processed": 1, "duplicate": 99}
