"""Broker semantics (issue 15): retry tiers that dead-letter at least once, a bounded
confirm wait, returned copies matched to their own publish, counter headers that cannot
stop a settle, and a consumer cancelled by the broker. Real RabbitMQ, this test's own
queue names; workers are real ``etl-engine worker`` processes where logs or /ready count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from etl_engine.adapters.dedup import open_store
from etl_engine.adapters.publisher import (
    ConfirmGate,
    Publisher,
    PublishFailed,
    PublishFailure,
    Upload,
)
from etl_engine.adapters.topology import (
    declare,
    header_int,
    legacy_retry_queue_names,
    legacy_retry_queues,
)
from etl_engine.settings import Settings
from faultproxy import FaultProxy
from helpers import WorkerProcess, drain_dlq, publish, results, sample_files, upload, wait_for

HOLDER = "test-lease-holder"
# Queue types and arguments, and a broker setting, are read with rabbitmqctl (the native
# stack of scripts/manage-etl-stack.sh and CI has it; a broker in a container may not).
needs_rabbitmqctl = pytest.mark.skipif(shutil.which("rabbitmqctl") is None,
                                       reason="rabbitmqctl is not on PATH")


@contextlib.asynccontextmanager
async def _channel(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        yield await conn.channel(publisher_confirms=True, on_return_raises=True)
    finally:
        await conn.close()


def _queues() -> dict[str, dict[str, Any]]:
    """Every queue as rabbitmqctl sees it: type and declared arguments."""
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--formatter", "json",
                          "name", "type", "arguments"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {q["name"]: {"type": q["type"], "arguments": {a[0]: a[2] for a in q["arguments"]}}
            for q in json.loads(out)}


async def _exists(settings: Settings, name: str) -> bool:
    async with _channel(settings) as ch:
        try:
            await ch.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
    return True


def _events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in worker.log_lines() if line.get("event") == event]


@contextlib.asynccontextmanager
async def _lease_held(settings: Settings, up: Upload, ms: int) -> AsyncIterator[Any]:
    """Someone else holds the input's lease: the worker answers lease_busy and republishes
    the delivery to the first retry tier until the lease is gone."""
    store = open_store(settings.dedup_url, settings.dedup_prefix)
    try:
        claim = await store.claim(up.idempotency_key, HOLDER, ms)
        assert claim.state == "acquired", claim
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.release(up.idempotency_key, HOLDER)
        await store.close()


@contextlib.contextmanager
def _worker(test_env: dict[str, str], tmp_path: Path, name: str = "w",
            **env: str) -> Iterator[WorkerProcess]:
    w = WorkerProcess({**test_env, "ETL_LOG_FORMAT": "json", **env}, tmp_path / f"{name}.log")
    try:
        yield w
    finally:
        w.signal(15)
        with contextlib.suppress(Exception):
            w.proc.wait(20)
        w.kill()


# --- retry tiers --------------------------------------------------------------------------
@needs_rabbitmqctl
async def test_retry_tiers_are_quorum_queues_dead_lettering_at_least_once(
        settings: Settings, clean_topology: None) -> None:
    async with _channel(settings) as ch:
        topo = await declare(ch, settings)
        queues = _queues()
        for tier, delay in enumerate(settings.retry_delays):
            q = queues[settings.retry_queue_name(tier)]
            assert q["type"] == "quorum", q
            assert q["arguments"] == {
                "x-queue-type": "quorum", "x-message-ttl": delay,
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.queue,
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        # a copy published to a tier (through the DLX, as the worker does) comes back
        tier0 = settings.retry_queue_name(0)
        await ConfirmGate(5).publish(
            topo.dlx, aio_pika.Message(b"{}", message_id="tier-copy"), tier0)
        back = None
        deadline = time.monotonic() + 10
        while back is None and time.monotonic() < deadline:
            back = await topo.work.get(no_ack=True, fail=False)
            await asyncio.sleep(0.05)
        assert back is not None and back.message_id == "tier-copy"
        assert back.headers["x-first-death-queue"] == tier0
        assert back.headers["x-first-death-reason"] == "expired"


def _rabbit_eval(expr: str) -> str:
    return subprocess.run(["rabbitmqctl", "eval", expr], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@contextlib.contextmanager
def _dead_letter_resend_after(ms: int) -> Iterator[None]:
    """RabbitMQ re-sends an at-least-once dead-letter every
    ``dead_letter_worker_publisher_confirm_timeout`` (180 s by default): shorter for this
    test's queues (read when a queue starts), and put back after."""
    key = "rabbit, dead_letter_worker_publisher_confirm_timeout"
    before = _rabbit_eval(f"application:get_env({key}).")
    _rabbit_eval(f"application:set_env({key}, {ms}).")
    try:
        yield
    finally:
        if before.startswith("{ok,"):
            _rabbit_eval(f"application:set_env({key}, {before[4:-1]}).")
        else:
            _rabbit_eval(f"application:unset_env({key}).")


@needs_rabbitmqctl
async def test_a_copy_that_expires_while_the_work_queue_is_gone_is_kept_not_dropped(
        settings: Settings, clean_topology: None) -> None:
    """The hole: the original is acked once its retry copy is confirmed, so the copy is the
    only one. An older release's classic tier drops a copy that expires while the work
    queue cannot take it; the quorum tier keeps it until the work queue has it."""
    legacy = legacy_retry_queue_names(settings)[0]
    with _dead_letter_resend_after(500):
        async with _channel(settings) as ch:
            topo = await declare(ch, settings)
            await ch.declare_queue(legacy, durable=True, arguments={
                "x-message-ttl": 200, "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": settings.queue})
            try:
                await topo.work.delete(if_unused=False, if_empty=False)  # no work queue now
                gate = ConfirmGate(5)
                await gate.publish(topo.dlx, aio_pika.Message(b"q", message_id="quorum-tier"),
                                   settings.retry_queue_name(0))
                await gate.publish(ch.default_exchange,
                                   aio_pika.Message(b"c", message_id="classic-tier"), legacy)
                await asyncio.sleep(1.5)  # both expired with nowhere to go
                work = await declare(ch, settings)
                seen: list[str | None] = []
                deadline = time.monotonic() + 15
                while "quorum-tier" not in seen and time.monotonic() < deadline:
                    if (msg := await work.work.get(no_ack=True, fail=False)) is not None:
                        seen.append(msg.message_id)
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                while (msg := await work.work.get(no_ack=True, fail=False)) is not None:
                    seen.append(msg.message_id)
            finally:
                await ch.queue_delete(legacy)
    assert seen == ["quorum-tier"], seen


async def test_a_classic_retry_queue_of_an_older_release_is_found_and_does_not_block(
        settings: Settings, clean_topology: None) -> None:
    legacy = legacy_retry_queue_names(settings)[0]
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue(legacy, durable=True, arguments={
            "x-message-ttl": 60_000, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.queue})
        await ch.default_exchange.publish(aio_pika.Message(b"old"), routing_key=legacy)
        assert legacy != settings.retry_queue_name(0)
        await declare(ch, settings)  # the quorum tiers have names of their own: no clash
        assert await legacy_retry_queues(conn, settings) == [(legacy, 1)]
        await ch.queue_delete(legacy)
        assert await legacy_retry_queues(conn, settings) == []
    finally:
        await conn.close()


# --- confirms and returns -------------------------------------------------------------------
async def test_returns_are_matched_to_their_own_publish(settings: Settings,
                                                        clean_topology: None) -> None:
    """aiormq matches a basic.return by message id: two copies of one message in flight,
    one unroutable, swap outcomes (the lost one reads as confirmed). The gate keeps one
    publish per id in flight, so each gets its own answer."""
    async with _channel(settings) as ch:
        topo = await declare(ch, settings)
        gate = ConfirmGate(10)

        async def one(routing_key: str, mid: str) -> str:
            msg = aio_pika.Message(b"{}", message_id=mid)
            try:
                await gate.publish(topo.dlx, msg, routing_key)
            except PublishFailed as exc:
                return exc.failure.value
            return "ok"

        answers = await asyncio.gather(*(one(rk, f"m{i}") for i in range(40)
                                         for rk in ("nowhere", settings.dlq_name)))
        assert answers == ["unroutable", "ok"] * 40
        queue = await ch.declare_queue(settings.dlq_name, passive=True)
        assert queue.declaration_result.message_count == 40


async def test_a_confirm_that_does_not_come_in_time_fails_the_publish(
        settings: Settings, clean_topology: None) -> None:
    proxy = FaultProxy("127.0.0.1", 5672)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        conn = await aio_pika.connect(url)
        try:
            ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
            topo = await declare(ch, settings)
            proxy.latency_upstream = False
            proxy.latency_s = 1.5  # the broker's answers arrive late
            started = time.monotonic()
            with pytest.raises(PublishFailed) as failed:
                await ConfirmGate(0.3).publish(topo.dlx, aio_pika.Message(b"{}"),
                                               settings.dlq_name)
            assert failed.value.failure is PublishFailure.CONFIRM_TIMEOUT
            assert time.monotonic() - started < 1.2
            proxy.latency_s = 0
        finally:
            await conn.close()
    finally:
        proxy.close()


def _sample_upload(settings: Settings, run: str) -> Upload:
    rt, path = sample_files()[0]
    return upload(settings, rt, path, run=run)


async def test_a_late_confirm_nacks_the_delivery_back_and_it_is_processed_once(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    """The worker's retry copy is not confirmed in time: the original goes back to the
    work queue (nack, requeue) instead of waiting without end or being acked."""
    proxy = FaultProxy("127.0.0.1", 5672)
    up = _sample_upload(settings, "late-confirm")
    try:
        with _worker(test_env, tmp_path, ETL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
                     ETL_PUBLISH_CONFIRM_TIMEOUT_S="0.5", ETL_AMQP_HEARTBEAT_S="0") as w:
            await w.wait_ready()
            async with _lease_held(settings, up, 60_000) as store:
                proxy.latency_upstream = False
                proxy.latency_s = 1.5  # confirms (broker -> worker) come 1.5 s late
                await publish(settings, up.message())
                await wait_for(lambda: _events(w, "settle_failed"), 30, "a settle failure")
                proxy.latency_s = 0
                await store.release(up.idempotency_key, HOLDER)
            failed = _events(w, "settle_failed")[0]
            assert (failed["reason"], failed["requeued"]) == ("confirm_timeout", True)
            await wait_for(lambda: len(results(settings)) == 1, 60, "the result")
            await asyncio.sleep(1.5)  # the late copy comes back too: a duplicate, no 2nd
            assert len(results(settings)) == 1
            assert w.get("/live")[0] == 200
    finally:
        proxy.close()
    assert await drain_dlq(settings) == []


async def test_an_unroutable_retry_copy_is_nacked_back_and_its_queue_declared_again(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    up = _sample_upload(settings, "unroutable")
    tier0 = settings.retry_queue_name(0)
    with _worker(test_env, tmp_path) as w:
        await w.wait_ready()
        async with _lease_held(settings, up, 1500), Publisher(settings) as pub:
            await pub.channel.queue_delete(tier0)  # an operator's mistake (after the
            await pub.publish(up.message())        # publisher declared the topology)
            await wait_for(lambda: _events(w, "settle_failed"), 20, "a settle failure")
        failed = _events(w, "settle_failed")[0]
        assert (failed["reason"], failed["target"], failed["requeued"]) == (
            "unroutable", tier0, True)
        assert _events(w, "topology_redeclared")
        assert await _exists(settings, tier0)
        await wait_for(lambda: len(results(settings)) == 1, 30, "the result")
    assert await drain_dlq(settings) == []


# --- hostile headers --------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (None, (7, True)), (0, (0, True)), (5, (5, True)), (2**31 - 1, (2**31 - 1, True)),
    (2**31, (7, False)), (-1, (7, False)), (2.0, (7, False)), (float("nan"), (7, False)),
    ("3", (7, False)), (b"3", (7, False)), (True, (7, False)), ([1], (7, False)),
])
def test_counter_headers_are_small_integers_or_their_default(value: Any,
                                                             expected: tuple[int, bool]) -> None:
    headers = {} if value is None else {"x-etl-attempt": value}
    assert header_int(headers, "x-etl-attempt", 7) == expected


async def test_junk_counter_headers_are_read_as_defaults_and_the_message_settles(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    up = _sample_upload(settings, "junk-headers")
    junk = {"x-etl-lease-waits": "lots", "x-etl-attempt": 2.5,
            "x-etl-failed-deliveries": 2**40}
    with _worker(test_env, tmp_path) as w:
        await w.wait_ready()
        async with _lease_held(settings, up, 1000):  # the lease-wait counter is read
            await publish(settings, up.message(), headers=junk)
            await wait_for(lambda: _events(w, "hostile_header"), 20, "the hostile header")
        await wait_for(lambda: len(results(settings)) == 1, 30, "the result")
        hostile = _events(w, "hostile_header")[0]
        assert sorted(hostile["headers"]) == sorted(junk)
        assert "lots" not in str(hostile)  # names only, never the values
        assert not _events(w, "settle_failed")
        health = json.loads(w.get("/health")[1])
        assert health["in_flight"] == 0


# --- a consumer cancelled by the broker -----------------------------------------------------
class _ReadyProbe:
    """Polls /ready every 10 ms in a thread and keeps every status it saw."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker, self.seen = worker, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.seen.append(self.worker.get("/ready")[0])
            time.sleep(0.01)

    def __enter__(self) -> _ReadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_a_deleted_work_queue_is_declared_and_consumed_again(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    with _worker(test_env, tmp_path) as w:
        await w.wait_ready()
        with _ReadyProbe(w) as probe:
            async with _channel(settings) as ch:
                await ch.queue_delete(settings.queue)
            await wait_for(lambda: len(_events(w, "consuming")) >= 2, 20, "a new consumer")
            await wait_for(lambda: probe.seen and probe.seen[-1] == 200, 10, "ready again")
        assert _events(w, "consumer_cancelled_by_broker")
        assert 503 in probe.seen, "readiness did not fail while nothing was consumed"
        assert _events(w, "consuming")[-1].get("reconsumed") is True
        up = _sample_upload(settings, "after-cancel")
        await publish(settings, up.message())
        await wait_for(lambda: len(results(settings)) == 1, 30, "the result")


async def test_readiness_fails_while_the_work_queue_cannot_be_consumed(
        settings: Settings, test_env: dict[str, str], tmp_path: Path,
        clean_topology: None) -> None:
    """Someone recreates the work queue with other arguments: the worker cannot declare
    it, so /ready fails until it can (and the orchestrator restarts or waits)."""
    with _worker(test_env, tmp_path) as w:
        await w.wait_ready()
        async with _channel(settings) as ch:
            await ch.queue_delete(settings.queue)
            await ch.declare_queue(settings.queue, durable=True)  # classic, no arguments
        await wait_for(lambda: _events(w, "consumer_cancelled_by_broker"), 10, "the cancel")
        await asyncio.sleep(2.0)
        with _ReadyProbe(w) as probe:
            await asyncio.sleep(1.0)
        assert probe.seen and set(probe.seen) == {503}, probe.seen
        async with _channel(settings) as ch:
            await ch.queue_delete(settings.queue)
        await w.wait_ready(30)
        up = _sample_upload(settings, "after-conflict")
        await publish(settings, up.message())
        await wait_for(lambda: len(results(settings)) == 1, 30, "the result")
