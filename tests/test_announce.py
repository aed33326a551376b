"""The uploaders' publishing API (etl_engine.adapters.announce) on the real broker: passive,
checked, confirmed and mandatory; and what the worker makes of what it sends."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import pytest

from etl_engine.adapters.announce import (
    AnnounceFailed,
    Announcer,
    InvalidAnnouncement,
    announce_once,
    announcement,
    upload_key,
)
from etl_engine.adapters.topology import declare
from helpers import queue_counts, results, running_worker, sample_files, storage_for, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_topology")]


async def _declared(settings) -> None:  # type: ignore[no-untyped-def]
    """The topology as a worker declares it at start."""
    async with await aio_pika.connect(settings.amqp_url.get_secret_value()) as conn:
        await declare(await conn.channel(), settings)


async def _exchange_exists(settings, name: str) -> bool:  # type: ignore[no-untyped-def]
    async with await aio_pika.connect(settings.amqp_url.get_secret_value()) as conn:
        try:
            await (await conn.channel()).get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


def _stored(settings, user: str) -> dict:  # type: ignore[no-untyped-def]
    """A sample uploaded as the upload service would, and its announcement."""
    rt, path = sample_files()[0]
    data = path.read_bytes()
    key = upload_key(rt, user)
    storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    return announcement(bucket=settings.bucket, key=key, record_type=rt, user_id=user,
                        content=data)


async def test_an_announcement_is_confirmed_into_the_work_queue_and_processed(settings
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    await _declared(settings)
    body = _stored(settings, "uploader-1")
    url = settings.amqp_url.get_secret_value()
    async with Announcer(url, exchange=settings.exchange) as announcer:
        message_id = await announcer.announce(body)
    assert (await queue_counts(settings, settings.queue))[0] == 1
    async with running_worker(settings):
        await wait_for(lambda: len(results(settings)) == 1, what="the result")
    assert message_id  # derived from the idempotency key, as the worker derives it


async def test_a_message_the_worker_would_dead_letter_never_leaves(settings) -> None:  # type: ignore[no-untyped-def]
    await _declared(settings)
    body = _stored(settings, "uploader-2")
    url = settings.amqp_url.get_secret_value()
    async with Announcer(url, exchange=settings.exchange) as announcer:
        with pytest.raises(InvalidAnnouncement) as bound:
            await announcer.announce({**body, "user_id": "someone-else"})
        assert bound.value.reason == "idempotency_key_mismatch"
        with pytest.raises(InvalidAnnouncement) as typed:
            await announcer.announce({**body, "record_type": "NoSuchRecord"})
        assert typed.value.reason == "unknown_record_type"
        with pytest.raises(InvalidAnnouncement) as control:
            await announcer.announce({**body, "correlation_id": "x\r\ny"})
        assert control.value.reason == "invalid_property"  # it is the AMQP property too
    assert (await queue_counts(settings, settings.queue))[0] == 0


async def test_it_declares_nothing_and_says_when_the_exchange_is_missing(settings) -> None:  # type: ignore[no-untyped-def]
    body = _stored(settings, "uploader-3")
    url = settings.amqp_url.get_secret_value()
    with pytest.raises(AnnounceFailed, match="no exchange"):
        async with Announcer(url, exchange=settings.exchange):
            pass
    assert not await _exchange_exists(settings, settings.exchange), "it declared the exchange"
    with pytest.raises(AnnounceFailed):  # the synchronous form, from a thread of its own
        await asyncio.to_thread(announce_once, url, body, exchange=settings.exchange)


async def test_an_unroutable_announcement_is_an_error_not_a_silent_drop(settings) -> None:  # type: ignore[no-untyped-def]
    async with await aio_pika.connect(settings.amqp_url.get_secret_value()) as conn:
        await (await conn.channel()).declare_exchange(  # an exchange without the work queue
            settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    body = _stored(settings, "uploader-4")
    async with Announcer(settings.amqp_url.get_secret_value(),
                        exchange=settings.exchange) as announcer:
        with pytest.raises(AnnounceFailed, match="unroutable"):
            await announcer.announce(body)
