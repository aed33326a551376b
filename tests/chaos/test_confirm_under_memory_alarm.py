"""Broker pressure (issue 15): a memory alarm blocks every publishing connection, so the
worker's retry copies get no confirm. Each delivery must go back to its queue (nack with
requeue) within ``ETL_PUBLISH_CONFIRM_TIMEOUT_S`` instead of hanging in settle, a SIGTERM
during the alarm must still end the worker, and every input is processed once the alarm
clears. The alarm blocks the shared broker for other clients too: a few seconds, and the
watermark is always put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl_engine.adapters.dedup import open_store
from etl_engine.settings import Settings
from helpers import (
    WorkerProcess,
    drain_dlq,
    publish,
    results,
    rid,
    sample_files,
    upload,
    wait_for,
)

pytestmark = pytest.mark.chaos

HOLDER = "chaos-lease-holder"
ALARM_MAX_S = 30.0


def _watermark(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "set_vm_memory_high_watermark", *args],
                   check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def memory_alarm() -> Iterator[float]:
    """A memory alarm on the broker for the block (at most ALARM_MAX_S by the caller's
    deadlines); the default watermark is restored whatever happens."""
    started = time.monotonic()
    try:
        _watermark("absolute", "1")
        yield started
    finally:
        _watermark("0.4")


def _events(worker: WorkerProcess, event: str) -> list[dict[str, object]]:
    return [line for line in worker.log_lines() if line.get("event") == event]


def _queue_depths(settings: Settings) -> dict[str, tuple[int, int]]:
    """(ready, unacked) of this test's work and retry queues, as the broker counts them."""
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--formatter", "json", "name",
                          "messages_ready", "messages_unacknowledged"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    mine = {settings.queue, *(settings.retry_queue_name(t)
                              for t in range(len(settings.retry_delays)))}
    return {q["name"]: (q["messages_ready"], q["messages_unacknowledged"])
            for q in json.loads(out) if q["name"] in mine}


@pytest.mark.disruptive
async def test_memory_alarm_requeues_unconfirmed_copies_and_sigterm_still_ends_the_worker(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    env = {**test_env, "ETL_LOG_FORMAT": "json", "ETL_PUBLISH_CONFIRM_TIMEOUT_S": "1",
           "ETL_SHUTDOWN_GRACE_S": "5"}
    rt, path = sample_files()[0]
    ups = [upload(settings, rt, path, run=f"alarm{i}") for i in range(3)]
    store = open_store(settings.dedup_url, settings.dedup_prefix)
    a = WorkerProcess(env, tmp_path / "a.log")
    b: WorkerProcess | None = None
    try:
        await a.wait_ready()
        for up in ups:  # held elsewhere: every delivery is republished to a retry tier
            assert (await store.claim(up.idempotency_key, HOLDER, 120_000)).state == "acquired"
        await publish(settings, *[up.message() for up in ups])  # before the alarm
        await wait_for(lambda: len(_events(a, "message_settled")) >= len(ups), 20,
                       "the first lease_busy round")
        with memory_alarm() as started:
            await wait_for(lambda: _events(a, "settle_failed"), 15, "a settle failure")
            failed = _events(a, "settle_failed")
            assert {(e["reason"], e["requeued"]) for e in failed} == {("confirm_timeout", True)}
            # no delivery is left waiting in settle for a confirm
            await wait_for(lambda: json.loads(a.get("/health")[1])["in_flight"] == 0, 10,
                           "no delivery in settle")
            assert a.get("/live")[0] == 200
            stop = time.monotonic()
            a.signal(signal.SIGTERM)
            rc = await a.wait_exit(20)
            stop_s = time.monotonic() - stop
            for up in ups:
                await store.release(up.idempotency_key, HOLDER)
            assert time.monotonic() - started < ALARM_MAX_S
        assert rc == 0 and stop_s < 15, (rc, stop_s)
        b = WorkerProcess(env, tmp_path / "b.log")
        await b.wait_ready()
        await wait_for(lambda: len(results(settings)) == len(ups), 60, "every result")
        await asyncio.sleep(1.5)  # late copies of the alarm come back as duplicates
        keys = results(settings)
        assert len(keys) == len(ups)
        assert all(any(rid(settings, up.idempotency_key) in k for k in keys) for up in ups)
        await wait_for(lambda: all(d == (0, 0) for d in _queue_depths(settings).values()),
                       30, "empty queues")
    finally:
        with contextlib.suppress(Exception):
            _watermark("0.4")
        a.kill()
        if b is not None:
            b.kill()
        await store.close()
    assert await drain_dlq(settings) == []
