"""Tearing down a test's or a benchmark's broker topology.

Why here and not in ``etl_engine.adapters.topology``: only the tests and ``bench`` delete
what ``declare`` made (each run gets its own exchange and queues); the worker and the
operator tools never do, so the package ships no such call.
"""

from __future__ import annotations

from aio_pika.abc import AbstractChannel

from etl_engine.settings import Settings


async def delete_all(channel: AbstractChannel, settings: Settings) -> None:
    """Remove everything ``etl_engine.adapters.topology.declare`` made for ``settings``:
    the work queue, the DLQ, the retry tiers and both exchanges, so a run leaves nothing
    on a shared broker."""
    names = [settings.queue, settings.dlq_name] + [
        settings.retry_queue_name(t) for t in range(len(settings.retry_delays))
    ]
    for name in names:
        await channel.queue_delete(name)
    await channel.exchange_delete(settings.exchange)
    await channel.exchange_delete(settings.dlx_name)
