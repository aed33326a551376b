"""Broker topology, declared idempotently by the worker, the publisher and the tools.

    health_data_exchange (topic) --health.processing.#--> health_data_processing (quorum)
        quorum x-delivery-limit  --> {exchange}.dlx --> health_data_processing.dlq
    {queue}.retry.{N}ms (TTL N, dead-letters back to the work queue via the default exchange)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from etl_engine.settings import Settings

BINDING_KEY = "health.processing.#"
ATTEMPT_HEADER = "x-etl-attempt"
LEASE_WAIT_HEADER = "x-etl-lease-waits"
REASON_HEADER = "x-etl-reason"
STAGE_HEADER = "x-etl-stage"
# Deliveries that ended unsettled (crash, lost connection) over all republished copies.
FAILED_DELIVERIES_HEADER = "x-etl-failed-deliveries"


def work_queue_arguments(settings: Settings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dlx_name,
        "x-dead-letter-routing-key": settings.dlq_name,
        # Without this a quorum queue drops what it dead-letters if the DLQ is unreachable.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(slots=True)
class Topology:
    exchange: AbstractExchange
    dlx: AbstractExchange
    work: AbstractQueue
    dlq: AbstractQueue
    retry: list[AbstractQueue]


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    exchange = await channel.declare_exchange(
        settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        settings.dlx_name, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq = await channel.declare_queue(
        settings.dlq_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dlx, routing_key=settings.dlq_name)
    work = await channel.declare_queue(
        settings.queue, durable=True, arguments=work_queue_arguments(settings)
    )
    await work.bind(exchange, routing_key=BINDING_KEY)
    retry = []
    for tier, delay in enumerate(settings.retry_delays):
        q = await channel.declare_queue(
            settings.retry_queue_name(tier),
            durable=True,
            arguments={
                "x-message-ttl": delay,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": settings.queue,
            },
        )
        retry.append(q)
    return Topology(exchange=exchange, dlx=dlx, work=work, dlq=dlq, retry=retry)


async def delete_all(channel: AbstractChannel, settings: Settings) -> None:
    """Remove everything ``declare`` made (test clean-up)."""
    names = [settings.queue, settings.dlq_name] + [
        settings.retry_queue_name(t) for t in range(len(settings.retry_delays))
    ]
    for name in names:
        await channel.queue_delete(name)
    await channel.exchange_delete(settings.exchange)
    await channel.exchange_delete(settings.dlx_name)


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a delivery with new headers (retry, dead-letter, replay)."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type or "application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        priority=message.priority,
    )
