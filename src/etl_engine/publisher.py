"""Announce uploads: optional upload to ``raw/``, then a confirmed, mandatory publish."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from opentelemetry.trace import SpanKind

from etl_engine import telemetry
from etl_engine.dedup import open_store
from etl_engine.messages import routing_key
from etl_engine.settings import Settings
from etl_engine.storage import Storage
from etl_engine.topology import declare


@dataclass(frozen=True, slots=True)
class Upload:
    """One file to announce: where it lives and what the message says about it."""

    record_type: str
    bucket: str
    key: str
    size: int
    sha256: str
    idempotency_key: str
    message_id: str
    user_id: str = "demo-user"
    priority: str = "normal"

    def message(self, correlation_id: str | None = None) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key,
            "bucket": self.bucket,
            "key": self.key,
            "record_type": self.record_type,
            "user_id": self.user_id,
            "correlation_id": correlation_id or self.message_id,
            "upload_timestamp_utc": datetime.now(UTC).isoformat(),
            "content_hash": self.sha256,
            "file_size_bytes": self.size,
            "message_id": self.message_id,
            "priority": self.priority,
        }


def raw_key(settings: Settings, record_type: str, filename: str, when: datetime) -> str:
    return (f"{settings.raw_prefix}{record_type}/{when:%Y/%m/%d}/{filename}")


def upload_file(
    storage: Storage, settings: Settings, record_type: str, path: Path, *,
    run_id: str = "", user_id: str = "demo-user", when: datetime | None = None,
) -> Upload:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"{run_id}-{path.name}" if run_id else path.name
    key = raw_key(settings, record_type, name, when or datetime.now(UTC))
    storage.client.put_object(Bucket=settings.bucket, Key=key, Body=data,
                              ContentType="avro/binary")
    ikey = hashlib.sha256(f"{settings.bucket}/{key}/{digest}".encode()).hexdigest()[:40]
    return Upload(record_type, settings.bucket, key, len(data), digest, ikey,
                  str(uuid.uuid4()), user_id=user_id)


class Publisher:
    """A confirmed-publish channel. ``mandatory`` makes an unroutable message an error."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> Publisher:
        self._conn = await aio_pika.connect(self.s.amqp_url.get_secret_value(), timeout=10)
        self._channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        topo = await declare(self._channel, self.s)
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
            rk = routing or routing_key(str(body.get("record_type", "unknown")),
                                        str(body.get("priority", "normal")))
            message_id = message_id or body.get("message_id")
            payload = orjson.dumps(body)
            correlation = body.get("correlation_id")
        else:
            rk, payload, correlation = routing or "health.processing.unknown", body, None
        hdrs = dict(headers or {})
        with telemetry.span(
            f"publish {self.s.exchange}", kind=SpanKind.PRODUCER,
            attributes=telemetry.messaging_attributes(
                "publish", self.s.exchange, routing_key=rk, message_id=message_id,
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
            await self._exchange.publish(msg, routing_key=rk, mandatory=True)

    async def publish_many(self, bodies: Sequence[dict[str, Any]], *, window: int = 256) -> None:
        """Pipelined confirmed publishes: at most ``window`` awaiting confirmation."""
        sem = asyncio.Semaphore(window)

        async def one(body: dict[str, Any]) -> None:
            async with sem:
                await self.publish(body)

        await asyncio.gather(*(one(b) for b in bodies))


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
