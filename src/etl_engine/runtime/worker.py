"""The worker loop: connect, consume, hand each delivery to the pipeline, settle it.

Settling is the only place that talks back to the broker:
    processed | duplicate | quarantined -> ack
    retry        -> publish to a delay tier with attempt+1, then ack
    lease_busy   -> publish to the first delay tier (attempt unchanged), then ack
    dead_letter  -> publish to the DLQ with the reason, then ack
A publish is confirmed before the ack, so a crash in between duplicates, never loses.
A copy the broker does not confirm within ETL_PUBLISH_CONFIRM_TIMEOUT_S, nacks or returns
(unroutable) is never acked: the delivery is nacked back to its queue (settle_failed).
A consumer the broker cancels (queue deleted) is re-declared and consumed again; until
then /ready fails (consumer).
Connection loss: in-flight deliveries are abandoned (the broker redelivers them) and the
loop reconnects with backoff, declaring the topology and consuming afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry.trace import SpanKind

from etl_engine.adapters.dedup import DedupStore, open_store
from etl_engine.adapters.publisher import ConfirmGate, PublishFailed, PublishFailure
from etl_engine.adapters.storage import (
    AsyncStorage,
    Storage,
    check_conditional_writes,
    make_client,
    make_hot_path,
)
from etl_engine.adapters.topology import (
    ATTEMPT_HEADER,
    FAILED_DELIVERIES_HEADER,
    LEASE_WAIT_HEADER,
    REASON_HEADER,
    STAGE_HEADER,
    Topology,
    copy_message,
    declare,
    header_int,
    legacy_retry_queues,
)
from etl_engine.domain import registry
from etl_engine.domain.messages import HealthDataMessage
from etl_engine.errors import ExitCode, Unavailable
from etl_engine.observability import logs, metrics, telemetry
from etl_engine.observability.logs import error_class, get_logger, hash_user_id
from etl_engine.runtime.admin import AdminReads
from etl_engine.runtime.compute import ComputePool
from etl_engine.runtime.hooks import Observers, OutcomeObserver, PipelineObserver
from etl_engine.runtime.pipeline import Delivery, Outcome, Pipeline
from etl_engine.runtime.reload import ConcurrencyLimit, Reloader
from etl_engine.runtime.sidecar import Sidecar, beat
from etl_engine.settings import ConfigError, Settings, load_settings

log = get_logger("etl.worker")
# Pause before nacking a delivery whose copy the broker refused, so the redelivery does not
# spin through the delivery limit in milliseconds.
REFUSED_PAUSE_S = 1.0
NACK_TIMEOUT_S = 5.0


@dataclass
class WorkerState:
    """What the sidecar reports. Written by the worker, read by probes."""

    worker_id: str
    started_at: float = field(default_factory=time.time)
    heartbeat: float = field(default_factory=time.monotonic)
    broker_connected: bool = False
    consuming: bool = False
    draining: bool = False
    redis_ok: bool = False
    s3_ok: bool = False
    in_flight: int = 0
    last_error_class: str | None = None
    processed: int = 0
    sidecar_port: int = 0
    config_version: int = 1

    def components(self) -> dict[str, bool]:
        return {
            "rabbitmq": self.broker_connected,
            "consumer": self.consuming and not self.draining,
            "redis": self.redis_ok,
            "s3": self.s3_ok,
        }


def _attempt(headers: dict[str, Any]) -> int:
    return max(1, header_int(headers, ATTEMPT_HEADER, 1)[0])


def _delivery(message: AbstractIncomingMessage) -> Delivery:
    """What the pipeline needs from a broker message (no broker types past here)."""
    headers = dict(message.headers or {})
    return Delivery(
        body=message.body,
        message_id=message.message_id,
        headers=headers,
        correlation_id=message.correlation_id,
        routing_key=message.routing_key or "",
        attempt=_attempt(headers),
        failed_deliveries=_failed_deliveries(headers),
        lease_waits=header_int(headers, LEASE_WAIT_HEADER)[0],
    )


def _failed_deliveries(headers: dict[str, Any]) -> int:
    """Unsettled deliveries so far: this copy's (the quorum queue's x-delivery-count) plus
    those of the copies republished before it (our header)."""
    return sum(header_int(headers, name)[0]
               for name in (FAILED_DELIVERIES_HEADER, "x-delivery-count"))


COUNTER_HEADERS = (ATTEMPT_HEADER, LEASE_WAIT_HEADER, FAILED_DELIVERIES_HEADER,
                   "x-delivery-count")


def _junk_headers(headers: dict[str, Any]) -> list[str]:
    """Counter headers that are not a small non-negative integer (read as their default)."""
    return [name for name in COUNTER_HEADERS if not header_int(headers, name)[1]]


class Worker:
    """Consumes, runs each delivery through the pipeline, settles it with the broker.

    ``observers`` see every delivery's lifecycle events (``runtime/hooks.py``) after the
    outcome observer (metrics and the ``message_settled`` log line); more can be added
    with ``observers.add`` before ``run``.
    """

    def __init__(self, settings: Settings, *, dedup: DedupStore | None = None,
                 observers: Sequence[PipelineObserver] = (),
                 reload_settings: Callable[[], Settings] = load_settings) -> None:
        self.settings = settings
        # What the broker grants at connect; a reload may lower ETL_CONCURRENCY below it
        # (``limit``), never raise the prefetch itself.
        self._prefetch = settings.effective_prefetch
        self.limit = ConcurrencyLimit(settings.concurrency)
        self.reloader = Reloader(settings, load=reload_settings, apply=self._apply_config,
                                 granted_prefetch=self._prefetch)
        self._sidecar: Sidecar | None = None
        self._reloads: set[asyncio.Task[Any]] = set()
        self.observers = Observers([OutcomeObserver(), *observers])
        # the series the SLOs and alerts take rates of, at 0 before the first delivery
        metrics.precreate(registry.names())
        self.state = WorkerState(worker_id=settings.effective_worker_id)
        self.storage = AsyncStorage(
            Storage(make_client(settings)),
            threads=settings.concurrency, hot=make_hot_path(settings),
        )
        self.dedup = dedup or open_store(settings.dedup_url, settings.dedup_prefix)
        self.compute = ComputePool(
            settings.decode_processes, settings.decode_memory_limit_mb,
            settings.message_timeout_s, inline_max_bytes=settings.decode_inline_max_bytes,
            on_loop_max_bytes=settings.decode_on_loop_max_bytes,
        )
        self.owner = f"{self.state.worker_id}:{time.time_ns()}"
        self.pipeline = Pipeline(
            settings, self.storage, self.dedup, self.compute,
            owner=self.owner, on_dedup_error=self._dedup_error,
            tracer_span=telemetry.pipeline_hook(), observer=self.observers,
        )
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._topology: Topology | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._consumer = ""
        self._gate = ConfirmGate(settings.publish_confirm_timeout_s)
        self._broker_tasks: set[asyncio.Task[None]] = set()  # re-consume, re-declare
        self._heal: asyncio.Task[None] | None = None
        self._healed_at = 0.0
        self._legacy_checked = False

    # --- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutdown_requested", in_flight=len(self._tasks))
            self.state.draining = True
            self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
        admin = AdminReads(self.settings, self.storage.sync)
        sidecar = self._sidecar = Sidecar(
            self.state, host=self.settings.sidecar_host, port=self.settings.sidecar_port,
            admin_token=self.settings.admin_token.get_secret_value(),
            admin_routes={"/admin/drain": self._admin_drain,
                          "/admin/config/reload": self._admin_reload},
            admin_reads=admin.routes(),
            max_connections=self.settings.sidecar_max_connections,
        )
        try:
            self.state.sidecar_port = await sidecar.start()
        except ConfigError:  # its port is taken (exit 78): nothing else has started yet
            admin.close()
            self.compute.close()
            self.storage.close()
            with contextlib.suppress(Exception):
                await self.dedup.close()
            raise
        if not self.settings.user_id_hash_key.get_secret_value():
            log.warning("user_id_hash_key_unset",
                        hint="set ETL_USER_ID_HASH_KEY so logged user hashes are keyed")
        _warn_lineage(self.settings)
        if self.settings.idempotency_scheme == "opaque":
            log.warning("idempotency_scheme_opaque",
                        hint="idempotency keys are not bound to user and file: any publisher "
                             "can reuse another upload's key (ETL_IDEMPOTENCY_SCHEME)")
        log.info("sidecar_listening", host=self.settings.sidecar_host, port=self.state.sidecar_port,
                 worker_id=self.state.worker_id, event_loop=_loop_name(loop))
        await self.compute.warm()
        background = [
            asyncio.create_task(self._renew_leases(), name="lease-renewal"),
            asyncio.create_task(self._check_dependencies(), name="dependency-checks"),
            asyncio.create_task(self._beat(), name="heartbeat"),
        ]
        try:
            # Refuse to run (ConfigError) on a store that ignores If-None-Match.
            with telemetry.quiet():  # a start-up check, not a trace of anyone's upload
                await check_conditional_writes(self.storage, self.settings, stop=self._stop)
            await self._connection_loop()
        finally:
            for task in [*background, *self._broker_tasks]:
                task.cancel()
            await asyncio.gather(*background, *self._broker_tasks, return_exceptions=True)
            await sidecar.stop()
            admin.close()
            self.compute.close()
            self.storage.close()
            with contextlib.suppress(Exception):
                await self.dedup.close()
            log.info("worker_stopped")

    async def _admin_drain(self) -> tuple[int, str, bytes]:
        self.request_stop()
        return 200, "application/json", b'{"draining": true}'

    # --- configuration reload (runtime/reload.py) ------------------------------------------
    async def _admin_reload(self) -> tuple[int, str, bytes]:
        status, body = await self.reloader.reload("http")
        return status, "application/json", orjson.dumps(body)

    def _sighup(self) -> None:
        """SIGHUP: the same reload as POST /admin/config/reload (its answer is logged)."""
        task = asyncio.ensure_future(self.reloader.reload("sighup"))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _apply_config(self, new: Settings, changed: list[str], version: int) -> None:
        """Swap in the operational settings a reload changed, all before the next await
        (``version``: the config_version they make; the reloader commits it after this)."""
        if "log_level" in changed:
            logs.set_level(new.log_level)
        if "log_format" in changed:
            logs.set_format(new.log_format)
        if "concurrency" in changed:
            self.limit.set(new.concurrency)
        if "trace_sample_ratio" in changed:
            telemetry.set_sample_ratio(new.trace_sample_ratio)
        if "admin_token" in changed and self._sidecar is not None:
            self._sidecar.set_admin_token(new.admin_token.get_secret_value())
        self.settings = new
        self.state.config_version = version

    async def _connection_loop(self) -> None:
        backoff = 0.2
        first = True
        while not self._stop.is_set():
            try:
                closed = await self._connect_and_consume()
                if not first:
                    metrics.RECONNECTS.inc()
                first = False
                backoff = 0.2
                stop_wait = asyncio.create_task(self._stop.wait())
                await asyncio.wait(
                    {stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED
                )
                stop_wait.cancel()
                if self._stop.is_set():
                    await self._drain()
                    return
                log.warning("broker_connection_lost", in_flight=len(self._tasks))
            except Exception as exc:
                refused = _refused_at_start(exc) if first else None
                if refused is not None:  # no retry fixes it: exit 69 (serve)
                    log.error("broker_refused", error=error_class(exc), hint=str(refused))
                    raise refused from None
                self.state.last_error_class = error_class(exc)
                log.warning("broker_connect_failed", error=error_class(exc), retry_in=backoff)
            self._mark_disconnected()
            await self._abandon_in_flight()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _connect_and_consume(self) -> asyncio.Future[Any]:
        connection = await aio_pika.connect(
            self.settings.amqp_url.get_secret_value(),
            heartbeat=self.settings.amqp_heartbeat_s,
            timeout=10,
            client_properties={"connection_name": f"etl-worker {self.state.worker_id}"},
        )
        self._connection = connection  # type: ignore[assignment]
        closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def _on_close(*_: Any) -> None:
            if not closed.done():
                closed.set_result(None)

        connection.close_callbacks.add(_on_close)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        channel.close_callbacks.add(_on_close)
        await channel.set_qos(prefetch_count=self._prefetch)
        self._topology = await declare(channel, self.settings)
        self._channel = channel
        self._consumer = await self._topology.work.consume(
            self._on_message, consumer_tag=self._consumer_tag()
        )
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancel)
        await self._warn_legacy_queues(connection)
        self.state.broker_connected = True
        self.state.consuming = True
        metrics.DEPENDENCY_UP.labels("rabbitmq").set(1)
        log.info("consuming", queue=self.settings.queue,
                 prefetch=self.settings.effective_prefetch)
        self.observers.consuming()
        return closed

    def _consumer_tag(self) -> str:
        return f"etl-{self.state.worker_id}-{time.time_ns()}"

    async def _warn_legacy_queues(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Once per process: say which classic retry queues of an older release remain."""
        if self._legacy_checked:
            return
        self._legacy_checked = True
        try:
            found = await asyncio.wait_for(legacy_retry_queues(connection, self.settings), 10)
        except Exception as exc:
            log.info("legacy_retry_queue_check_failed", error=error_class(exc))
            return
        for name, ready in found:
            log.warning("legacy_retry_queue", queue=name, ready=ready,
                        hint="a classic retry queue of an older release: it returns what it "
                             "holds to the work queue after its TTL; once every worker runs "
                             "this release and it is empty: rabbitmqctl delete_queue NAME")

    def _on_consumer_cancel(self, frame: Any) -> None:
        """The broker cancelled our consumer (the queue was deleted, or a queue-side
        failure): fail readiness at once and consume again on a fresh declaration."""
        if frame.consumer_tag != self._consumer or self._stop.is_set():
            return
        self.state.consuming = False
        log.warning("consumer_cancelled_by_broker", queue=self.settings.queue,
                    in_flight=len(self._tasks))
        self._spawn(self._reconsume(self._channel))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._broker_tasks.add(task)
        task.add_done_callback(self._broker_tasks.discard)
        return task

    async def _reconsume(self, channel: aio_pika.abc.AbstractChannel | None) -> None:
        """Declare the topology again (recreating a deleted queue) and consume on the same
        channel, so in-flight deliveries can still be settled. If that fails, close the
        channel: the connection loop reconnects with backoff, /ready failing meanwhile."""
        topo = self._topology
        if channel is None or topo is None:
            return
        try:
            async with asyncio.timeout(15):
                await asyncio.sleep(0.2)  # let the deletion or failover finish
                await self._declare_aside()
                tag = await topo.work.consume(self._on_message,
                                              consumer_tag=self._consumer_tag())
        except Exception as exc:
            log.warning("reconsume_failed", error=error_class(exc))
            await _quiet_close(channel)
            return
        if channel is not self._channel or self._stop.is_set():
            return  # a reconnect or shutdown overtook us; that path owns the state
        self._consumer = tag
        self.state.consuming = True
        log.info("consuming", queue=self.settings.queue, reconsumed=True,
                 prefetch=self.settings.effective_prefetch)
        self.observers.consuming()

    async def _declare_aside(self) -> None:
        """Declare the topology on a channel of its own: a declaration the broker refuses
        closes that channel, not the one holding our deliveries."""
        connection = self._connection
        if connection is None:
            raise ConnectionError("not connected")
        side = await connection.channel()
        try:
            await declare(side, self.settings)
        finally:
            await _quiet_close(side)

    def _heal_topology(self) -> asyncio.Task[None] | None:
        """After an unroutable copy (a retry queue or the DLQ deleted): declare again, at
        most every 5 s; returns the declaration to wait for, if one runs."""
        if self._heal is not None and not self._heal.done():
            return self._heal
        if time.monotonic() - self._healed_at < 5 or self._connection is None:
            return None
        self._healed_at = time.monotonic()
        self._heal = self._spawn(self._redeclare())
        return self._heal

    async def _redeclare(self) -> None:
        try:
            await asyncio.wait_for(self._declare_aside(), 10)
            log.info("topology_redeclared")
        except Exception as exc:
            log.warning("topology_redeclare_failed", error=error_class(exc))

    def _mark_disconnected(self) -> None:
        self.state.broker_connected = False
        metrics.DEPENDENCY_UP.labels("rabbitmq").set(0)
        self.state.consuming = False
        self._channel = None
        self._topology = None
        if self._connection is not None:
            conn, self._connection = self._connection, None
            task = asyncio.ensure_future(_quiet_close(conn))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _abandon_in_flight(self) -> None:
        # Their delivery tags died with the channel; the broker redelivers them.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        """Stop consuming, let in-flight messages finish within the grace, then close."""
        topo, channel = self._topology, self._channel
        if topo is not None and channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await topo.work.cancel(self._consumer, timeout=5)
        self.state.consuming = False
        if self._tasks:
            grace = self.settings.shutdown_grace_s
            log.info("draining", in_flight=len(self._tasks), grace_s=grace)
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("drain_grace_expired", returned_to_queue=len(pending))
        if self._connection is not None:
            await _quiet_close(self._connection)
        self.state.broker_connected = False

    # --- per message -----------------------------------------------------------------------
    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stop.is_set():
            return  # not acked: returns to the queue when we close
        if message.redelivered:  # a crash or connection loss returned it (ids only)
            log.info("message_redelivered", message_id=message.message_id,
                     delivery_count=(message.headers or {}).get("x-delivery-count"))
        task = asyncio.create_task(self._limited(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _limited(self, message: AbstractIncomingMessage) -> None:
        """Handle within ETL_CONCURRENCY (reloadable; the prefetch may hold more). A
        delivery still waiting when the worker stops is left unacked: it returns."""
        await self.limit.acquire()
        try:
            if not self._stop.is_set():
                await self._handle(message)
        finally:
            self.limit.release()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        delivery = _delivery(message)
        # Every log line of this delivery carries these (this task's own context copy);
        # refined from the parsed message once the pipeline returns.
        tokens = structlog.contextvars.bind_contextvars(
            message_id=message.message_id, correlation_id=message.correlation_id,
            record_type=_record_type_hint(delivery.routing_key),
            worker_id=self.state.worker_id, attempt=delivery.attempt, trace_id=None,
        )
        if junk := _junk_headers(delivery.headers):
            # A publisher's counter we cannot read: its default is used (names only logged).
            log.warning("hostile_header", headers=junk)
        self.state.in_flight += 1
        metrics.IN_FLIGHT.inc()
        try:
            await self._process(message, delivery, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Anything that escaped settling: give the delivery back now rather than hold
            # its prefetch slot until the channel closes or the consumer timeout.
            self.state.last_error_class = error_class(exc)
            log.warning("settle_failed", error=error_class(exc),
                        requeued=await _nack(message))
        finally:
            self.state.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            structlog.contextvars.reset_contextvars(**tokens)
            structlog.contextvars.unbind_contextvars("user")

    async def _process(
        self, message: AbstractIncomingMessage, delivery: Delivery, started: float
    ) -> None:
        """Run, settle and report one delivery inside its consumer span."""
        parent = telemetry.extract(delivery.headers)
        with telemetry.span(
            f"process {self.settings.queue}", kind=SpanKind.CONSUMER, parent=parent,
            attributes=telemetry.messaging_attributes(
                "process", message.exchange or "", queue=self.settings.queue,
                routing_key=delivery.routing_key, message_id=message.message_id,
                body_size=len(message.body)),
        ) as span:
            structlog.contextvars.bind_contextvars(trace_id=telemetry.trace_id(parent))
            outcome = await self._run_pipeline(delivery)
            if outcome.message is not None:
                _bind_message(outcome.message)
            telemetry.set_attributes(
                span, **{"etl.outcome": outcome.kind, "etl.reason": outcome.reason,
                         "etl.attempt": delivery.attempt,
                         "etl.record_type": outcome.message.record_type
                         if outcome.message else None})
            if await self._settle(message, delivery, outcome):
                self._note(outcome)
                self.observers.settled(outcome, time.perf_counter() - started)

    async def _run_pipeline(self, delivery: Delivery) -> Outcome:
        """The pipeline bounds the message by ``ETL_MESSAGE_TIMEOUT_S`` itself and decides
        every outcome (``domain.outcomes.decide``); the worker only settles it."""
        return await self.pipeline.run(delivery)

    def _note(self, outcome: Outcome) -> None:
        """What the sidecar reports about the outcomes so far."""
        if outcome.kind == "processed":
            self.state.processed += 1
        if outcome.kind in ("retry", "dead_letter", "quarantined"):
            self.state.last_error_class = outcome.reason

    async def _settle(
        self, message: AbstractIncomingMessage, delivery: Delivery, outcome: Outcome
    ) -> bool:
        """Publish the outcome's copy (retry tier or DLQ) if it has one, then ack: only
        the broker. Between the two the pipeline keeps what the stores need to know.

        False: the copy was not confirmed (timeout, nack, returned, channel gone) and the
        delivery went back to its queue instead; it is never acked without its copy.
        """
        try:
            await self._publish_outcome(message, delivery, outcome)
        except PublishFailed as exc:
            await self._requeue(message, exc)
            return False
        await self.pipeline.copy_confirmed(outcome, message.message_id)
        self.observers.acking(outcome)
        with telemetry.span(f"ack {self.settings.queue}", attributes=telemetry.messaging_attributes(
                "settle", message.exchange or "", queue=self.settings.queue,
                message_id=message.message_id)):
            await message.ack()
        return True

    async def _requeue(self, message: AbstractIncomingMessage, exc: PublishFailed) -> None:
        """Nack the delivery back to its queue after its copy failed. A missing queue is
        declared again first, and after a refusal we pause, so that the redelivery can
        succeed (each nack counts towards the work queue's delivery limit)."""
        self.state.last_error_class = f"settle_failed:{exc.failure.value}"
        if exc.failure is PublishFailure.UNROUTABLE:
            heal = self._heal_topology()
            if heal is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(heal), 10)
        elif exc.failure in (PublishFailure.NACKED, PublishFailure.ERROR):
            await asyncio.sleep(REFUSED_PAUSE_S)
        log.warning("settle_failed", reason=exc.failure.value, target=exc.routing_key,
                    requeued=await _nack(message))

    async def _publish_outcome(
        self, message: AbstractIncomingMessage, delivery: Delivery, outcome: Outcome
    ) -> None:
        """The retry or dead-letter copy of ``outcome``, confirmed; nothing for the rest."""
        headers = dict(delivery.headers)
        # A republished copy starts a new broker count: carry the total in our header.
        headers.pop("x-delivery-count", None)
        headers[FAILED_DELIVERIES_HEADER] = delivery.failed_deliveries
        if outcome.kind == "retry":
            tier = min(delivery.attempt - 1, len(self.settings.retry_delays) - 1)
            headers[ATTEMPT_HEADER] = delivery.attempt + 1
            headers[REASON_HEADER] = outcome.reason or ""
            await self._republish(message, self.settings.retry_queue_name(tier), headers)
        elif outcome.kind == "lease_busy":  # past outcomes.MAX_LEASE_WAITS: dead-lettered
            headers[LEASE_WAIT_HEADER] = delivery.lease_waits + 1
            await self._republish(message, self.settings.retry_queue_name(0), headers)
        if outcome.kind == "dead_letter":
            headers[REASON_HEADER] = outcome.reason or "unknown"
            headers[STAGE_HEADER] = outcome.stage or ""
            headers["x-etl-worker"] = self.state.worker_id
            headers["x-etl-original-routing-key"] = delivery.routing_key
            headers["x-etl-dead-lettered-at"] = int(time.time())
            if outcome.outcome_id:  # two copies of one recorded outcome are one outcome
                headers["x-etl-outcome-id"] = outcome.outcome_id
            await self._republish(message, self.settings.dlq_name, headers)

    async def _republish(
        self, message: AbstractIncomingMessage, routing_key: str, headers: dict[str, Any]
    ) -> None:
        channel, topology = self._channel, self._topology
        if channel is None or channel.is_closed or topology is None:
            raise PublishFailed(PublishFailure.CHANNEL_CLOSED, routing_key)
        with telemetry.span(f"publish {routing_key}", kind=SpanKind.PRODUCER,
                            attributes=telemetry.messaging_attributes(
                                "publish", self.settings.dlx_name, routing_key=routing_key,
                                message_id=message.message_id)):
            # The retried / dead-lettered copy continues this trace (replay keeps it).
            telemetry.inject(headers)
            await self._publish_copy(topology.dlx, message, routing_key, headers)

    async def _publish_copy(
        self, exchange: aio_pika.abc.AbstractExchange, message: AbstractIncomingMessage,
        routing_key: str, headers: dict[str, Any],
    ) -> None:
        """Through the DLX, where each retry queue and the DLQ is bound by its name."""
        out = copy_message(message, headers)
        await self._gate.publish(exchange, out, routing_key)

    # --- background ------------------------------------------------------------------------
    def _dedup_error(self, exc: BaseException) -> None:
        metrics.DEDUP_ERRORS.inc()
        self.state.redis_ok = False
        metrics.DEPENDENCY_UP.labels("redis").set(0)
        log.warning("dedup_unavailable", error=error_class(exc))

    async def _renew_leases(self) -> None:
        interval = self.settings.lease_ttl_s / 3
        with telemetry.quiet():
            await self._renew_leases_loop(interval)

    async def _renew_leases_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            keys = list(self.pipeline.in_flight)
            if keys:
                with contextlib.suppress(Exception):
                    await self.dedup.renew(keys, self.owner, int(self.settings.lease_ttl_s * 1000))

    async def _check_dependencies(self) -> None:
        with telemetry.quiet():
            await self._check_dependencies_loop()

    async def _check_dependencies_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.dedup.ping(), 2)
                self.state.redis_ok = True
            except Exception:
                self.state.redis_ok = False
            try:
                await asyncio.wait_for(self.storage.ping(self.settings.bucket), 5)
                self.state.s3_ok = True
            except Exception:
                self.state.s3_ok = False
            metrics.DEPENDENCY_UP.labels("redis").set(int(self.state.redis_ok))
            metrics.DEPENDENCY_UP.labels("s3").set(int(self.state.s3_ok))
            metrics.DEPENDENCY_UP.labels("rabbitmq").set(int(self.state.broker_connected))
            await asyncio.sleep(5)

    async def _beat(self) -> None:
        """/live's heartbeat, and the event-loop lag histogram (sidecar.beat)."""
        await beat(self.state)


def _warn_lineage(settings: Settings) -> None:
    """Loud at start: training records that name their people are a deliberate choice."""
    if settings.full_lineage:
        log.warning("full_lineage_enabled",
                    hint="ETL_FULL_LINEAGE=true: training records carry bucket, object key "
                         "(with the user id), message and correlation ids; share them with "
                         "no one who may not see whose data they hold")
    if not settings.lineage_key.get_secret_value():
        log.warning("lineage_key_unset",
                    hint="set ETL_LINEAGE_KEY: unkeyed pseudonyms in training records can "
                         "be reversed by hashing guessed user ids and object keys")


def serve(settings: Settings, observers: Sequence[PipelineObserver] = (),
          reload_settings: Callable[[], Settings] = load_settings) -> int:
    """Run one worker until it is told to stop: ``etl-engine worker``, and any wrapper that
    adds observers (the chaos tests' crash points) runs exactly this. ``reload_settings``
    builds a reload's candidate: the same loader that built ``settings``."""
    try:
        factory = loop_factory(settings.event_loop)
    except ConfigError as exc:
        print(f"etl-engine: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    logs.configure(settings.log_level, settings.log_format,
                   user_hash_key=settings.user_id_hash_key.get_secret_value())
    telemetry.configure(settings.otlp_endpoint, "etl-worker",
                        instance_id=settings.effective_worker_id,
                        sample_ratio=settings.trace_sample_ratio)

    async def main() -> None:
        await Worker(settings, observers=observers, reload_settings=reload_settings).run()

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except ConfigError as exc:  # found at start (the storage probe): like a bad setting
        print(f"etl-engine: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except Unavailable as exc:  # the broker refused our login at start
        print(f"etl-engine worker: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    finally:
        telemetry.shutdown()
    return ExitCode.OK


def _refused_at_start(exc: BaseException) -> Unavailable | None:
    """A broker that refuses the credentials, the virtual host or the user's permissions
    will go on refusing them: before the first connection that is exit 69 (as dramatiq
    exits on a failed broker connection), not a retry loop. A refused or lost connection
    is retried: the broker may be starting or restarting."""
    name, text = type(exc).__name__, str(exc)
    if name == "ProbableAuthenticationError" or "ACCESS_REFUSED - Login" in text:
        return Unavailable("RabbitMQ", "ETL_AMQP_URL (user and password)",
                           "refused the login (ACCESS_REFUSED)")
    if name == "InvalidFrameError" and "Connection.Close" in text:
        return Unavailable("RabbitMQ", "ETL_AMQP_URL (the virtual host, and the user's "
                           "access to it)", "closed the connection during the handshake")
    if name == "ChannelAccessRefused":
        return Unavailable("RabbitMQ", "the ETL_AMQP_URL user's permissions "
                           "(deployment/rabbitmq/permissions.sh)",
                           "refused the topology (ACCESS_REFUSED)")
    return None


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for ``ETL_EVENT_LOOP``; None means asyncio's own.

    uvloop saves ~0.3 ms of CPU per message in the loop's own bookkeeping
    (docs/performance.md); "auto" uses it when installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("ETL_EVENT_LOOP: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _record_type_hint(routing_key: str) -> str | None:
    """``health.processing.{record_type}[.{priority}]`` -> record type, for log context."""
    parts = routing_key.split(".")
    return parts[2] if len(parts) > 2 and parts[2] else None


def _bind_message(msg: HealthDataMessage) -> None:
    structlog.contextvars.bind_contextvars(
        message_id=msg.message_id, correlation_id=msg.correlation_id,
        record_type=msg.record_type, user=hash_user_id(msg.user_id),
    )


async def _nack(message: AbstractIncomingMessage) -> bool:
    """Nack with requeue unless already settled; False if it could not be sent (then the
    channel is gone and the broker requeues the delivery by itself)."""
    if message.processed:
        return False
    try:
        await asyncio.wait_for(message.nack(requeue=True), NACK_TIMEOUT_S)
    except Exception:
        return False
    return True


async def _quiet_close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5)
