"""The pipeline, in the order it runs. One call handles one delivery:

    parse -> claim (dedup) -> download -> verify -> decode -> validate -> transform
          -> write (conditional) -> mark done

and returns an ``Outcome``. It never touches the broker: the worker settles the outcome
(ack, delayed retry, dead-letter). Failures become outcomes in one place: ``_settle_error``.
The observer (``runtime/hooks.py``) hears as each stage finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from etl_engine import __version__
from etl_engine.adapters.ports import DedupStore, Download, ObjectStore
from etl_engine.domain import registry
from etl_engine.domain.messages import HealthDataMessage, header_metadata, parse_message
from etl_engine.domain.model import DomainConfig, Lineage
from etl_engine.errors import Disposition, LeaseBusy, PermanentError, PoisonMessage, classify
from etl_engine.observability.logs import hash_user_id
from etl_engine.runtime import hooks
from etl_engine.runtime.compute import ComputePool, CpuResult, Limits
from etl_engine.runtime.hooks import PipelineObserver
from etl_engine.settings import Settings

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._=-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the pipeline needs from a broker message (no broker types)."""

    body: bytes
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    routing_key: str = ""
    attempt: int = 1
    failed_deliveries: int = 0  # earlier deliveries that ended unsettled (crash loop)


@dataclass(slots=True)
class Outcome:
    """``kind``: processed | duplicate | quarantined | retry | dead_letter | lease_busy."""

    kind: str
    reason: str | None = None
    stage: str | None = None
    message: HealthDataMessage | None = None
    result_key: str | None = None
    records: int = 0
    quality_score: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    recorded: bool = False  # the outcome record by message id was written with the done marker


def result_key(settings: Settings, category: str, day: Any, idempotency_key: str) -> str:
    """Deterministic per input: the same message can only ever name one object."""
    name = idempotency_key if _SAFE_KEY.match(idempotency_key) else hashlib.sha256(
        idempotency_key.encode()).hexdigest()
    return (f"{settings.training_prefix}{category}/{day.year:04d}/{day.month:02d}/"
            f"{day.day:02d}/{name}.jsonl")


def quarantine_key(settings: Settings, key: str) -> str:
    rel = key[len(settings.raw_prefix):] if key.startswith(settings.raw_prefix) else key
    return settings.quarantine_prefix + rel


class QuarantineWithReport(PermanentError):
    """A file that failed validation: carries its quality report to the quarantine writer
    (the report is written next to the quarantined copy, never logged)."""

    def __init__(self, cpu: CpuResult) -> None:
        super().__init__(cpu.quarantine_reason or "validation_failed", stage="validate")
        self.cpu = cpu


@dataclass(slots=True)
class _Run:
    """One delivery's state across the stages, for the error path and the clean-up."""

    msg: HealthDataMessage | None = None
    leased: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        storage: ObjectStore,
        dedup: DedupStore,
        compute: ComputePool,
        *,
        owner: str,
        on_dedup_error: Callable[[BaseException], None] | None = None,
        tracer_span: Callable[[str], Any] | None = None,
        observer: PipelineObserver | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.dedup = dedup
        self.compute = compute
        self.owner = owner
        self.observer = observer or PipelineObserver()
        self.limits = Limits(settings.max_records, settings.max_decompressed_bytes)
        self.domain = DomainConfig(
            quality_threshold=settings.quality_threshold,
            max_future_skew_ms=settings.max_future_skew_s * 1000,
            origin_priority=tuple(settings.origin_priority_list),
            processor_version=__version__,
        )
        self._on_dedup_error = on_dedup_error or (lambda exc: None)
        self._span = tracer_span
        self.in_flight: set[str] = set()

    def _stage(self, name: str) -> Any:
        """A trace span around a stage, when tracing is on."""
        if self._span is None:
            return contextlib.nullcontext()
        return self._span(name)

    async def run(self, delivery: Delivery) -> Outcome:
        """One delivery to its outcome; every failure becomes one in ``_settle_error``."""
        run = _Run()
        try:
            return await self._stages(delivery, run)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            outcome = await self._settle_error(exc, run.msg, delivery)
            if outcome.kind == "quarantined":
                run.leased = False
            outcome.timings = run.timings
            return outcome
        finally:
            if run.msg is not None:
                self.in_flight.discard(run.msg.idempotency_key)
                if run.leased:
                    await self._release(run.msg)

    async def _stages(self, delivery: Delivery, run: _Run) -> Outcome:
        with self._stage("parse"):
            msg = run.msg = self.parse(delivery)
        with self._stage("dedup"):
            claim = await self._claim(msg)
        if claim == "done":
            return Outcome("duplicate", message=msg)
        run.leased = claim == "acquired"
        if delivery.failed_deliveries > self.settings.delivery_limit:
            # A crash loop. The broker's x-delivery-limit alone does not end it: a lease
            # wait or retry republishes a fresh copy whose broker count starts at 0.
            raise PoisonMessage("delivery_limit", stage="consume")
        if claim == "busy":
            raise LeaseBusy()
        self.in_flight.add(msg.idempotency_key)
        dl = await self._download(msg, run.timings)
        cpu = await self._compute(msg, dl, run.timings)
        t = time.perf_counter()
        with self._stage("write"):
            outcome = await self.write(msg, cpu)
        run.timings["write"] = time.perf_counter() - t
        outcome.bytes_in = dl.size
        outcome.timings = run.timings
        self.observer.stage_finished(hooks.WRITE, msg)
        outcome.recorded = await self._finish(msg, outcome.kind)
        run.leased = False
        self.observer.stage_finished(hooks.DONE, msg)
        return outcome

    async def _download(self, msg: HealthDataMessage, timings: dict[str, float]) -> Download:
        t = time.perf_counter()
        with self._stage("download"):
            dl = await self.storage.download(
                msg.bucket, msg.key, max_bytes=self.settings.max_object_bytes)
            self.verify(msg, dl)
        timings["download"] = time.perf_counter() - t
        self.observer.stage_finished(hooks.DOWNLOAD, msg)
        return dl

    async def _compute(
        self, msg: HealthDataMessage, dl: Download, timings: dict[str, float]
    ) -> CpuResult:
        """decode -> validate -> transform; a file that fails validation is quarantined."""
        with self._stage("process"):
            cpu = await self.compute.run(
                dl.body, self.lineage(msg), self.limits, self.domain, datetime.now(UTC))
        timings.update(cpu.timings)
        self.observer.stage_finished(hooks.DECODE, msg)
        if cpu.quarantine_reason:
            raise QuarantineWithReport(cpu)
        return cpu

    # --- stages ---------------------------------------------------------------------------
    def parse(self, delivery: Delivery) -> HealthDataMessage:
        return parse_message(
            delivery.body,
            amqp_message_id=delivery.message_id,
            allowed_buckets=self.settings.allowed_bucket_set,
            supported_types=registry.names(),  # the live registry: a registered type too
            raw_prefix=self.settings.raw_prefix,
            max_bytes=self.settings.max_message_bytes,
            amqp_correlation_id=delivery.correlation_id,
            headers=delivery.headers,
            require_hash=self.settings.require_content_hash,
            scheme=self.settings.idempotency_scheme,
        )

    def verify(self, msg: HealthDataMessage, dl: Download) -> None:
        if msg.file_size_bytes is not None and msg.file_size_bytes != dl.size:
            raise PermanentError("size_mismatch", stage="verify")
        if msg.content_hash is not None and msg.content_hash != dl.sha256:
            raise PermanentError("hash_mismatch", stage="verify")

    def lineage(self, msg: HealthDataMessage) -> Lineage:
        return Lineage(
            bucket=msg.bucket,
            key=msg.key,
            message_id=msg.message_id or "",
            correlation_id=msg.correlation_id,
            record_type=msg.record_type,
            idempotency_key=msg.idempotency_key,
            upload_timestamp_utc=msg.upload_timestamp_utc.isoformat()
            if msg.upload_timestamp_utc else None,
            subject_id=hash_user_id(msg.user_id),
        )

    async def write(self, msg: HealthDataMessage, cpu: CpuResult) -> Outcome:
        out = cpu.output
        assert out is not None
        key = result_key(self.settings, out.category, out.period_date, msg.idempotency_key)
        body = orjson.dumps(out.record, option=orjson.OPT_SORT_KEYS) + b"\n"
        created = await self.storage.put_if_absent(
            self.settings.bucket, key, body,
            content_type="application/x-ndjson",
            metadata=header_metadata(message_id=msg.message_id, record_type=msg.record_type),
        )
        return Outcome(
            "processed" if created else "duplicate",
            message=msg, result_key=key, records=cpu.records,
            quality_score=cpu.report.get("quality_score"),
            bytes_out=len(body) if created else 0,
        )

    async def quarantine(self, msg: HealthDataMessage, exc: PermanentError) -> str:
        qkey = quarantine_key(self.settings, msg.key)
        copied = await self.storage.copy(msg.bucket, msg.key, self.settings.bucket, qkey)
        report = exc.cpu.report if isinstance(exc, QuarantineWithReport) else None
        reason = {
            "reason": exc.reason,
            "detail": exc.detail,  # a field path or a decoder's error class, never a value
            "stage": exc.stage,
            "message_id": msg.message_id,
            "idempotency_key": msg.idempotency_key,
            "correlation_id": msg.correlation_id,
            "record_type": msg.record_type,
            "source": {"bucket": msg.bucket, "key": msg.key},
            "raw_copied": copied,
            "quality_report": report,
            "quarantined_at": datetime.now(UTC).isoformat(),
            "processor_version": __version__,
            # Kept so an operator can release (re-publish) the upload after a fix.
            "message": msg.model_dump(mode="json"),
        }
        await self.storage.put(
            self.settings.bucket, qkey + ".reason.json",
            orjson.dumps(reason, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2),
            content_type="application/json",
        )
        return qkey

    # --- the one place failures become outcomes -------------------------------------------
    async def _settle_error(
        self, exc: BaseException, msg: HealthDataMessage | None, delivery: Delivery
    ) -> Outcome:
        if isinstance(exc, LeaseBusy):
            return Outcome("lease_busy", reason="lease_busy", message=msg)
        disposition, reason = classify(exc)
        stage = getattr(exc, "stage", None) or None
        if disposition is Disposition.QUARANTINE and msg is not None:
            perm = exc if isinstance(exc, PermanentError) else PermanentError(reason, stage=stage
                                                                               or "decode")
            try:
                qkey = await self.quarantine(msg, perm)
            except Exception as qexc:
                # Writing the quarantine failed. Transient: retry the whole message later.
                # Anything else (e.g. the target refused it) must not loop: dead-letter.
                qdisp, qreason = classify(qexc)
                if qdisp is Disposition.RETRY and delivery.attempt < self.settings.max_attempts:
                    return Outcome("retry", reason=qreason, stage="quarantine", message=msg)
                return Outcome("dead_letter", reason=f"quarantine_failed:{reason}",
                               stage="quarantine", message=msg)
            recorded = await self._finish(msg, "quarantined")
            report = exc.cpu if isinstance(exc, QuarantineWithReport) else None
            return Outcome("quarantined", reason=reason, stage=stage, message=msg,
                           result_key=qkey, records=report.records if report else 0,
                           quality_score=report.report.get("quality_score") if report else None,
                           recorded=recorded)
        if disposition is Disposition.DEAD_LETTER or isinstance(exc, PoisonMessage):
            return Outcome("dead_letter", reason=reason, stage=stage, message=msg)
        if delivery.attempt >= self.settings.max_attempts:
            return Outcome("dead_letter", reason=f"attempts_exhausted:{reason}", stage=stage,
                           message=msg)
        return Outcome("retry", reason=reason, stage=stage, message=msg)

    # --- dedup, best effort: results stay exactly-once without it -------------------------
    async def _claim(self, msg: HealthDataMessage) -> str:
        try:
            claim = await self.dedup.claim(msg.idempotency_key, self.owner,
                                           int(self.settings.lease_ttl_s * 1000))
        except Exception as exc:
            self._on_dedup_error(exc)
            return "unavailable"
        return claim.state

    async def _finish(self, msg: HealthDataMessage, outcome: str) -> bool:
        """Done marker and, in the same round trip, the delivery's outcome record."""
        try:
            await self.dedup.finish(msg.idempotency_key, self.owner, outcome,
                                    self.settings.done_ttl_s, message_id=msg.message_id)
        except Exception as exc:
            self._on_dedup_error(exc)
            return False
        return bool(msg.message_id)

    async def _release(self, msg: HealthDataMessage) -> None:
        try:
            await self.dedup.release(msg.idempotency_key, self.owner)
        except Exception as exc:
            self._on_dedup_error(exc)

