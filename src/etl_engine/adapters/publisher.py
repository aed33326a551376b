"""Announce uploads: optional upload to ``raw/``, then a confirmed, mandatory publish.

``ConfirmGate`` is the one way this code publishes a message it must not lose (the
worker's retry and dead-letter copies, announcements): confirmed, mandatory, a bounded
wait, and every way it can fail as one ``PublishFailed`` with a ``PublishFailure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import orjson
from opentelemetry.trace import SpanKind

from etl_engine.adapters.dedup import open_store
from etl_engine.adapters.storage import Storage
from etl_engine.adapters.topology import connect, declare
from etl_engine.domain.messages import (
    derive_message_id,
    routing_key,
    upload_idempotency_key,
    upload_routing_key,
)
from etl_engine.observability import telemetry
from etl_engine.settings import Settings


@dataclass(frozen=True, slots=True)
class Upload:
    """One file to announce: where it lives and what the message says about it.

    ``message_id`` is not sent (the upload service sends none): it is the id the worker
    derives from the idempotency key, for waiting on the outcome.
    """

    record_type: str
    bucket: str
    key: str
    size: int
    sha256: str
    idempotency_key: str
    message_id: str
    user_id: str = "demo-user"
    priority: str | None = None  # None: no priority field, the upload service's routing

    def message(self, correlation_id: str | None = None) -> dict[str, Any]:
        """The upload service's message for this file (docs: the contract)."""
        body: dict[str, Any] = {
            "bucket": self.bucket,
            "key": self.key,
            "user_id": self.user_id,
            "record_type": self.record_type,
            "upload_timestamp_utc": datetime.now(UTC).isoformat(),
            "correlation_id": correlation_id or self.message_id,
            "file_size_bytes": self.size,
            "file_hash": self.sha256,
            "idempotency_key": self.idempotency_key,
        }
        if self.priority:
            body["priority"] = self.priority
        return body


def raw_key(settings: Settings, record_type: str, user_id: str, when: datetime) -> str:
    """The upload service's layout: ``raw/{Type}/{Y}/{m}/{d}/{user}_{Ymd_HMS_f}.avro``."""
    return (f"{settings.raw_prefix}{record_type}/{when:%Y/%m/%d}/"
            f"{user_id}_{when:%Y%m%d_%H%M%S_%f}.avro")


def describe_upload(
    settings: Settings, record_type: str, key: str, data: bytes, user_id: str,
    bucket: str = "",
) -> Upload:
    """What the upload service would announce for ``data`` stored at ``key``."""
    digest = hashlib.sha256(data).hexdigest()
    ikey = upload_idempotency_key(user_id, digest)
    return Upload(record_type, bucket or settings.bucket, key, len(data), digest, ikey,
                  derive_message_id(ikey), user_id=user_id)


def upload_file(
    storage: Storage, settings: Settings, record_type: str, path: Path, *,
    run_id: str = "", user_id: str = "demo-user", when: datetime | None = None,
) -> Upload:
    """Upload as the upload service does. ``run_id`` makes a user of its own
    (``{user_id}-{run_id}``): the idempotency key is per user and file, so a new run id
    gives fresh keys for the same files."""
    return upload_bytes(storage, settings, record_type, path.read_bytes(),
                        user_id=f"{user_id}-{run_id}" if run_id else user_id, when=when)


def upload_bytes(
    storage: Storage, settings: Settings, record_type: str, data: bytes, *,
    user_id: str, when: datetime | None = None,
) -> Upload:
    """Store ``data`` under the upload service's key layout and describe the upload."""
    key = raw_key(settings, record_type, user_id, when or datetime.now(UTC))
    storage.client.put_object(Bucket=settings.bucket, Key=key, Body=data,
                              ContentType="avro/binary")
    return describe_upload(settings, record_type, key, data, user_id)


class PublishFailure(StrEnum):
    """Why the broker did not take a copy (the settle_failed log line's reason)."""

    CONFIRM_TIMEOUT = "confirm_timeout"  # no confirm in time (memory alarm, stuck leader)
    NACKED = "nacked"  # the broker refused it (e.g. a queue at its limit)
    UNROUTABLE = "unroutable"  # returned: no queue bound for the routing key
    CHANNEL_CLOSED = "channel_closed"  # the channel or connection went away
    ERROR = "publish_error"  # anything else (e.g. a header that does not encode)


class PublishFailed(aiormq.exceptions.DeliveryError):
    """The copy is not known to be in a queue: the caller must keep the original.

    A ``DeliveryError`` so callers that caught aio-pika's nack and return errors still do.
    """

    def __init__(self, reason: PublishFailure, routing_key: str = "") -> None:
        super().__init__(None, None)  # type: ignore[arg-type]
        self.failure = reason  # not .reason: AMQPError's repr uses that
        self.routing_key = routing_key

    def __str__(self) -> str:
        return f"publish to {self.routing_key!r} failed: {self.failure.value}"

    __repr__ = __str__


class ConfirmGate:
    """Confirmed, mandatory publishes with a bounded confirm wait.

    aiormq matches a ``basic.return`` to its publish by the message id, so two publishes
    of one id in flight on a channel can swap outcomes: the returned one then reads as
    confirmed and its original would be acked without a copy. The gate lets one publish
    per message id be in flight at a time. (A publish abandoned at the timeout can still
    be returned later and fail the next one of its id: a false failure, which only
    requeues, never a false success.)
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def _one_per_id(self, message_id: str | None) -> AsyncIterator[None]:
        if not message_id:  # aiormq gives it a random id of its own
            yield
            return
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        self._waiting[message_id] = self._waiting.get(message_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[message_id] -= 1
            if not self._waiting[message_id]:
                del self._waiting[message_id], self._locks[message_id]

    async def publish(self, exchange: aio_pika.abc.AbstractExchange,
                      message: aio_pika.abc.AbstractMessage, routing_key: str) -> None:
        """Return once the broker confirmed the message into a queue; else raise
        ``PublishFailed``."""
        async with self._one_per_id(message.message_id):
            try:
                result = await exchange.publish(message, routing_key=routing_key,
                                                mandatory=True, timeout=self.timeout_s)
            except aiormq.exceptions.PublishError as exc:
                raise PublishFailed(PublishFailure.UNROUTABLE, routing_key) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise PublishFailed(PublishFailure.NACKED, routing_key) from exc
            except TimeoutError as exc:
                raise PublishFailed(PublishFailure.CONFIRM_TIMEOUT, routing_key) from exc
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                raise PublishFailed(_closed_or_error(exc), routing_key) from exc
            except Exception as exc:
                raise PublishFailed(PublishFailure.ERROR, routing_key) from exc
        if not isinstance(result, aiormq.spec.Basic.Ack):
            # A return without on_return_raises, or a channel without confirms.
            raise PublishFailed(PublishFailure.UNROUTABLE if result is not None
                                else PublishFailure.ERROR, routing_key)


def _closed_or_error(exc: BaseException) -> PublishFailure:
    closed = (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ChannelClosed,
              aiormq.exceptions.ConnectionClosed, aiormq.exceptions.AMQPConnectionError,
              ConnectionError)
    return PublishFailure.CHANNEL_CLOSED if isinstance(exc, closed) else PublishFailure.ERROR


class Publisher:
    """A confirmed-publish channel. ``mandatory`` makes an unroutable message an error
    (``PublishFailed``, a ``DeliveryError``), so does a confirm that does not come within
    ``ETL_PUBLISH_CONFIRM_TIMEOUT_S``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._gate = ConfirmGate(settings.publish_confirm_timeout_s)

    async def __aenter__(self) -> Publisher:
        self._conn = await connect(self.settings.amqp_url.get_secret_value())
        try:
            self._channel = await self._conn.channel(publisher_confirms=True,
                                                     on_return_raises=True)
            topo = await declare(self._channel, self.settings)
        except BaseException:
            await self._conn.close()
            raise
        self._exchange = topo.exchange
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel:
        assert self._channel is not None
        return self._channel

    async def publish(
        self, body: dict[str, Any] | bytes, *, routing: str | None = None,
        message_id: str | None = None, headers: dict[str, Any] | None = None,
    ) -> None:
        assert self._exchange is not None
        if isinstance(body, dict):
            rtype = str(body.get("record_type", "unknown"))
            rk = routing or (routing_key(rtype, str(body["priority"])) if "priority" in body
                             else upload_routing_key(rtype))
            # The id the worker derives when the body has none (aio-pika would otherwise
            # invent a random one), so callers can wait on Upload.message_id.
            ikey = body.get("idempotency_key")
            message_id = message_id or body.get("message_id") or (
                derive_message_id(ikey) if isinstance(ikey, str) and ikey else None)
            payload = orjson.dumps(body)
            correlation = body.get("correlation_id")
        else:
            rk, payload, correlation = routing or "health.processing.unknown", body, None
        hdrs = dict(headers or {})
        with telemetry.span(
            f"publish {self.settings.exchange}", kind=SpanKind.PRODUCER,
            attributes=telemetry.messaging_attributes(
                "publish", self.settings.exchange, routing_key=rk, message_id=message_id,
                body_size=len(payload)),
        ):
            # W3C traceparent in the AMQP headers: the worker continues this trace. A
            # caller's own traceparent (a replay) is kept.
            telemetry.inject(hdrs, replace=False)
            msg = aio_pika.Message(
                body=payload,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                correlation_id=correlation if isinstance(correlation, str) else None,
                timestamp=datetime.now(UTC),
                headers=hdrs,
            )
            await self._gate.publish(self._exchange, msg, rk)

    async def publish_many(
        self, bodies: Sequence[dict[str, Any]], *, window: int = 256,
        message_ids: Sequence[str] | None = None,
    ) -> None:
        """Pipelined confirmed publishes: at most ``window`` awaiting confirmation.
        ``message_ids``: the AMQP message-id of each (else derived from the body)."""
        sem = asyncio.Semaphore(window)
        ids = list(message_ids) if message_ids is not None else [None] * len(bodies)

        async def one(body: dict[str, Any], message_id: str | None) -> None:
            async with sem:
                await self.publish(body, message_id=message_id)

        await asyncio.gather(*(one(b, m) for b, m in zip(bodies, ids, strict=True)))


async def wait_for_outcomes(
    settings: Settings, message_ids: list[str], *, timeout_s: float,
    on_progress: Any = None,
) -> tuple[dict[str, str], float]:
    """Poll the dedup store's per-message outcomes until all are settled or time runs out."""
    store = open_store(settings.dedup_url, settings.dedup_prefix)
    start = time.monotonic()
    seen: dict[str, str] = {}
    try:
        while time.monotonic() - start < timeout_s:
            missing = [m for m in message_ids if m not in seen]
            if not missing:
                break
            seen.update(await store.outcomes(missing))
            if on_progress:
                on_progress(len(seen))
            if len(seen) < len(message_ids):
                await asyncio.sleep(0.1)
    finally:
        await store.close()
    return seen, time.monotonic() - start
