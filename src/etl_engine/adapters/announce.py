"""The publishing API for uploaders: announce an upload exactly as the workers expect it.

    from etl_engine.adapters.announce import Announcer, announcement, upload_key

    key = upload_key("StepsRecord", user_id)              # where to PUT the file first
    body = announcement(bucket="health-data", key=key, record_type="StepsRecord",
                        user_id=user_id, content=data)    # hash, size, idempotency key
    async with Announcer("amqps://uploader:...@broker:5671/") as announcer:
        message_id = await announcer.announce(body)

(``announce_once(url, body)`` does the same without an ``async`` caller.)

What it does, for a least-privilege uploader:

- It needs only the broker URL and the exchange name, not the workers' settings.
- It declares nothing. It checks passively that the exchange exists, which needs no
  configure permission, only write on the exchange (deployment/rabbitmq/permissions.sh).
  If the exchange is missing, ``AnnounceFailed`` says so.
- It checks each message with the worker's own parser before publishing: record type,
  key layout, idempotency key bound to user and hash, and field limits. A message the
  worker would dead-letter never leaves: ``InvalidAnnouncement`` carries the worker's
  reason code.
- It publishes persistent JSON with publisher confirms and ``mandatory``. ``announce``
  returns once the broker has the message in a queue. It raises ``AnnounceFailed`` when the
  message is unroutable (no queue bound), nacked, unconfirmed within ``confirm_timeout_s``,
  or the connection is lost; ``async with Announcer(...)`` raises it when the broker cannot
  be reached or refuses the connection (the cause says which). Announcing again after a
  failure is safe: the idempotency key makes a second copy a duplicate.

The contract itself: schemas/message.schema.json and docs/asyncapi.yaml.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from opentelemetry.trace import SpanKind

from etl_engine.adapters.publisher import ConfirmGate, PublishFailed
from etl_engine.adapters.topology import BrokerUnreachable, connect
from etl_engine.domain.messages import (
    Scheme,
    derive_message_id,
    parse_message,
    routing_key,
    upload_idempotency_key,
    upload_routing_key,
)
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES
from etl_engine.errors import PoisonMessage
from etl_engine.observability import telemetry

HEALTH_EXCHANGE = "health_data_exchange"
RAW_PREFIX = "raw/"


class InvalidAnnouncement(ValueError):
    """The worker would dead-letter this message; ``reason`` is its code (README)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class AnnounceFailed(ConnectionError):
    """The broker did not take the message (or the exchange is missing); retry later."""


def upload_key(record_type: str, user_id: str, when: datetime | None = None, *,
               raw_prefix: str = RAW_PREFIX) -> str:
    """The upload service's object key:
    ``raw/{RecordType}/{YYYY}/{MM}/{DD}/{user_id}_{YYYYmmdd_HHMMSS_ffffff}.avro``."""
    at = when or datetime.now(UTC)
    return f"{raw_prefix}{record_type}/{at:%Y/%m/%d}/{user_id}_{at:%Y%m%d_%H%M%S_%f}.avro"


def announcement(*, bucket: str, key: str, record_type: str, user_id: str,
                 content: bytes | None = None, file_hash: str | None = None,
                 file_size_bytes: int | None = None, correlation_id: str | None = None,
                 record_count: int | None = None, uploaded_at: datetime | None = None
                 ) -> dict[str, Any]:
    """The upload service's message for an object already stored at ``key``: give the
    file's ``content`` (hash and size are computed) or its ``file_hash`` (hex SHA-256)."""
    if content is not None:
        file_hash = hashlib.sha256(content).hexdigest()
        file_size_bytes = len(content)
    if not file_hash:
        raise InvalidAnnouncement("content_hash_required", "give content or file_hash")
    body: dict[str, Any] = {
        "bucket": bucket, "key": key, "user_id": user_id, "record_type": record_type,
        "upload_timestamp_utc": (uploaded_at or datetime.now(UTC)).isoformat(),
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "file_hash": file_hash, "idempotency_key": upload_idempotency_key(user_id, file_hash),
    }
    if file_size_bytes is not None:
        body["file_size_bytes"] = file_size_bytes
    if record_count is not None:
        body["record_count"] = record_count
    return body


def check(message: Mapping[str, Any], *, message_id: str | None = None,
          raw_prefix: str = RAW_PREFIX, scheme: Scheme = "upload-service",
          allowed_buckets: frozenset[str] | None = None) -> bytes:
    """The message as JSON bytes, after the worker's own checks (``parse_message`` under
    the workers' default settings; pass theirs when they differ)."""
    body = orjson.dumps(dict(message))
    bucket = message.get("bucket")
    buckets = allowed_buckets or frozenset({bucket if isinstance(bucket, str) else ""})
    try:
        parse_message(body, amqp_message_id=message_id, allowed_buckets=buckets,
                      supported_types=SUPPORTED_RECORD_TYPES, raw_prefix=raw_prefix,
                      amqp_correlation_id=_str(message.get("correlation_id")),
                      require_hash=True, scheme=scheme)
    except PoisonMessage as exc:
        raise InvalidAnnouncement(exc.reason, exc.detail) from None
    return body


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Announcer:
    """A confirmed, mandatory publisher of announcements on one connection."""

    def __init__(self, amqp_url: str, *, exchange: str = HEALTH_EXCHANGE,
                 confirm_timeout_s: float = 10.0, raw_prefix: str = RAW_PREFIX,
                 scheme: Scheme = "upload-service") -> None:
        self.amqp_url = amqp_url
        self.exchange_name = exchange
        self.raw_prefix = raw_prefix
        self.scheme = scheme
        self._gate = ConfirmGate(confirm_timeout_s)
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> Announcer:
        try:
            self._conn = await connect(self.amqp_url)
        except (BrokerUnreachable, aiormq.exceptions.AMQPError) as exc:
            # The cause (kept) says which: unreachable, a refused login, a virtual host.
            raise AnnounceFailed(f"cannot connect to the broker ({type(exc).__name__}: "
                                 f"{exc})") from exc
        try:
            channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
            # passive: fails if the exchange is missing, creates nothing
            self._exchange = await channel.get_exchange(self.exchange_name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            await self._conn.close()
            raise AnnounceFailed(f"no exchange {self.exchange_name!r} on the broker (the "
                                 "workers declare it when they start)") from None
        except BaseException:
            await self._conn.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def announce(self, message: Mapping[str, Any], *,
                       headers: Mapping[str, Any] | None = None) -> str:
        """Check ``message``, publish it, wait for the broker's confirm; returns the AMQP
        message id (the worker's default: derived from the idempotency key)."""
        if self._exchange is None:
            raise RuntimeError("use `async with Announcer(...)`")
        ikey = _str(message.get("idempotency_key")) or ""
        message_id = _str(message.get("message_id")) or derive_message_id(ikey)
        body = check(message, message_id=message_id, raw_prefix=self.raw_prefix,
                     scheme=self.scheme)
        priority = _str(message.get("priority"))
        rtype = str(message["record_type"])
        rk = routing_key(rtype, priority) if priority else upload_routing_key(rtype)
        hdrs = dict(headers or {})
        with telemetry.span(f"publish {self.exchange_name}", kind=SpanKind.PRODUCER,
                            attributes=telemetry.messaging_attributes(
                                "publish", self.exchange_name, routing_key=rk,
                                message_id=message_id, body_size=len(body))):
            telemetry.inject(hdrs, replace=False)
            amqp_message = aio_pika.Message(
                body=body, content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id,
                correlation_id=_str(message.get("correlation_id")),
                timestamp=datetime.now(UTC), headers=hdrs)
            try:
                await self._gate.publish(self._exchange, amqp_message, rk)
            except PublishFailed as exc:
                raise AnnounceFailed(f"{exc} (exchange {self.exchange_name!r})") from exc
        return message_id


def announce_once(amqp_url: str, message: Mapping[str, Any], *,
                  exchange: str = HEALTH_EXCHANGE) -> str:
    """One announcement from synchronous code (a connection per call: for a few files;
    keep an ``Announcer`` open for many)."""
    async def run() -> str:
        async with Announcer(amqp_url, exchange=exchange) as announcer:
            return await announcer.announce(message)
    return asyncio.run(run())
