"""A message that keeps killing workers ends in the DLQ, even across republished copies.

The quorum queue's x-delivery-limit counts the unsettled deliveries of one broker message.
A lease wait or a retry republishes a fresh copy (count 0), so the worker carries the
total in ``x-etl-failed-deliveries`` and dead-letters past ``ETL_DELIVERY_LIMIT`` itself.
"""

from __future__ import annotations

import orjson

from etl_engine.adapters.topology import FAILED_DELIVERIES_HEADER
from etl_engine.runtime.pipeline import Delivery, Pipeline
from etl_engine.runtime.worker import _failed_deliveries
from helpers import sample_files, upload


def test_failed_deliveries_add_the_carried_count_and_the_brokers() -> None:
    assert _failed_deliveries({}) == 0
    assert _failed_deliveries({"x-delivery-count": 2}) == 2
    assert _failed_deliveries({FAILED_DELIVERIES_HEADER: 3, "x-delivery-count": 1}) == 4
    assert _failed_deliveries({FAILED_DELIVERIES_HEADER: "junk", "x-delivery-count": -1}) == 0


async def test_past_the_limit_a_leased_message_is_dead_lettered_not_retried(
    pipeline: Pipeline, settings  # type: ignore[no-untyped-def]
) -> None:
    u = upload(settings, *sample_files()[0])
    # The worker that crashed still holds the lease: before, this was lease_busy (a fresh
    # copy, broker count reset) forever.
    claim = await pipeline.dedup.claim(u.idempotency_key, "dead-worker", 60_000)
    assert claim.state == "acquired"
    body = orjson.dumps(u.message())
    limit = settings.delivery_limit
    at_limit = await pipeline.run(Delivery(body=body, failed_deliveries=limit))
    assert at_limit.kind == "lease_busy"
    past = await pipeline.run(Delivery(body=body, failed_deliveries=limit + 1))
    assert (past.kind, past.reason) == ("dead_letter", "delivery_limit")


async def test_past_the_limit_finished_work_is_still_a_duplicate(
    pipeline: Pipeline, settings  # type: ignore[no-untyped-def]
) -> None:
    u = upload(settings, *sample_files()[0])
    body = orjson.dumps(u.message())
    assert (await pipeline.run(Delivery(body=body))).kind == "processed"
    again = await pipeline.run(Delivery(body=body, failed_deliveries=99))
    assert again.kind == "duplicate"
