"""Broker topology, declared idempotently by the worker, the publisher and the tools.

    health_data_exchange (topic) --health.processing.#--> health_data_processing (quorum)
        quorum x-delivery-limit  --> {exchange}.dlx --> health_data_processing.dlq
    {queue}.retry.q.{N}ms (quorum, TTL N) --dead-letters back at least once--> work queue

The worker publishes its retry and dead-letter copies to ``{exchange}.dlx`` (direct), where
each retry queue is bound under its own name and the DLQ under its name: publishing
through the default exchange would need write access to ``amq.default``, which reaches
every queue of the vhost (deployment/rabbitmq/permissions.sh).

Why the retry tiers are quorum queues: the worker acks the original once a retry copy is
confirmed, so the copy is the only one left. A classic queue's TTL dead-lettering is
at-most-once: a copy that expires while the work queue cannot take it (no leader, a
restart) is dropped. A quorum queue with ``x-dead-letter-strategy: at-least-once`` keeps
the expired copy until the work queue confirms it (RabbitMQ 3.10+; it needs
``x-overflow: reject-publish``).

Older releases declared classic ``{queue}.retry.{N}ms`` queues. Redeclaring one of them
with quorum arguments fails (PRECONDITION_FAILED), hence the new names; the old ones keep
returning what they hold after their TTL and are then idle. ``legacy_retry_queues`` finds
them so the worker can say so; delete them once empty (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from etl_engine.settings import Settings

BINDING_KEY = "health.processing.#"
ATTEMPT_HEADER = "x-etl-attempt"
LEASE_WAIT_HEADER = "x-etl-lease-waits"
REASON_HEADER = "x-etl-reason"
STAGE_HEADER = "x-etl-stage"
# Deliveries that ended unsettled (crash, lost connection) over all republished copies.
FAILED_DELIVERIES_HEADER = "x-etl-failed-deliveries"
# The operator tools' copies: ``dlq replay`` counts its replays, ``quarantine release``
# marks the re-published message. Such a copy is not a fresh upload (the freshness SLO
# leaves it out: it keeps the upload's original timestamp).
REPLAYED_HEADER = "x-etl-replayed"
RELEASED_HEADER = "x-etl-released"
# Our counters in headers stay far below this; a bigger value is hostile (and would not
# encode again as an AMQP long when the copy is republished).
HEADER_INT_MAX = 2**31 - 1
# How long the tools and publishers wait for the broker's handshake (tests shorten it).
CONNECT_TIMEOUT_S = 10.0


class BrokerUnreachable(ConnectionError):
    """The broker did not answer a connection: nothing listens, the name does not resolve,
    or (aio-pika's bare ``TimeoutError``) something listens but never speaks AMQP.
    ``ops.failures`` says it as RabbitMQ unreachable, check ETL_AMQP_URL (exit 69)."""


async def connect(url: str, *, timeout: float | None = None,
                  **kwargs: Any) -> AbstractConnection:
    """``aio_pika.connect`` for the tools and publishers: a socket error or a handshake
    that never comes (a bare ``TimeoutError`` caused by a ``CancelledError``, which names
    no client library) raised as ``BrokerUnreachable``. AMQP refusals (login, virtual
    host) keep their own exceptions: they say more."""
    wait = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        return await aio_pika.connect(url, timeout=wait, **kwargs)
    except aiormq.exceptions.AMQPError:  # (its connection errors are OSErrors too)
        raise
    except TimeoutError:
        raise BrokerUnreachable(f"no answer within {wait:g} s") from None
    except OSError as exc:
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc.strerror or exc}") from exc


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


def retry_queue_arguments(settings: Settings, delay_ms: int) -> dict[str, Any]:
    """A delay tier: nobody consumes it; each copy expires after ``delay_ms`` and is
    dead-lettered to the work queue (default exchange), kept until the work queue has it."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.queue,
        "x-dead-letter-strategy": "at-least-once",
        # at-least-once dead-lettering is only honoured with reject-publish overflow.
        "x-overflow": "reject-publish",
    }


def legacy_retry_queue_names(settings: Settings) -> list[str]:
    """The classic delay queues of releases before the quorum tiers."""
    return [f"{settings.queue}.retry.{delay}ms" for delay in settings.retry_delays]


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
            settings.retry_queue_name(tier), durable=True,
            arguments=retry_queue_arguments(settings, delay),
        )
        await q.bind(dlx, routing_key=q.name)
        retry.append(q)
    return Topology(exchange=exchange, dlx=dlx, work=work, dlq=dlq, retry=retry)


async def legacy_retry_queues(connection: AbstractConnection, settings: Settings
                              ) -> list[tuple[str, int]]:
    """(name, ready messages) of each classic retry queue of an older release still there.

    A passive declare of a missing queue closes its channel, so each name gets its own."""
    found = []
    for name in legacy_retry_queue_names(settings):
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            found.append((name, queue.declaration_result.message_count or 0))
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
    return found


def header_int(headers: dict[str, Any], name: str, default: int = 0) -> tuple[int, bool]:
    """(value, well-formed) of a counter header. Headers come from publishers: a missing
    one is ``default``; junk (text, a float, NaN, infinity, out of range) is ``default``
    and not well-formed, for the caller to count, never to raise before settling."""
    value = headers.get(name)
    if value is None:
        return default, True
    if isinstance(value, bool) or not isinstance(value, int):
        return default, False
    if not 0 <= value <= HEADER_INT_MAX:
        return default, False
    return value, True


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
