"""The pipeline, in the order it runs. One call handles one delivery:

    parse -> claim (dedup) -> download -> verify -> decode -> validate -> transform
          -> outcome record (conditional) -> its side effects -> mark done

and returns an ``Outcome``. It never touches the broker: the worker settles the outcome
(ack, delayed retry, dead-letter). What a failure means is decided in one place
(``domain.outcomes.decide``); the commit point is the input's outcome record, created with
``If-None-Match: *`` before the result, the quarantine or the DLQ entry. Whoever creates it
owns the input's outcome; every later delivery obeys it (``_commit``). The observer
(``runtime/hooks.py``) hears as each stage finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from etl_engine import __version__
from etl_engine.adapters.ports import OUTCOME_TTL_S, DedupStore, Download, ObjectStore
from etl_engine.adapters.topology import RELEASED_HEADER, REPLAYED_HEADER, header_int
from etl_engine.domain import lineage as pseudonyms
from etl_engine.domain import outcomes, registry
from etl_engine.domain.messages import HealthDataMessage, header_metadata, parse_message
from etl_engine.domain.model import DomainConfig, Lineage
from etl_engine.domain.outcomes import ClaimState, Decision, Failure, OutcomeKind
from etl_engine.errors import (
    Disposition,
    LeaseBusy,
    PermanentError,
    PoisonMessage,
    TransientError,
    classify,
)
from etl_engine.observability.logs import error_class, get_logger
from etl_engine.runtime import hooks
from etl_engine.runtime.compute import ComputePool, CpuResult, Limits
from etl_engine.runtime.hooks import PipelineObserver
from etl_engine.settings import Settings

# An outcome record is a few kB (a training record's body at most); a cap all the same.
_MAX_RECORD_BYTES = 64 * 1024 * 1024
# Recording an outcome after a failure (or the message's time limit) gets this long.
_SETTLE_TIMEOUT_S = 60.0
_JSON = orjson.OPT_SORT_KEYS

log = get_logger("etl.worker")


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
    lease_waits: int = 0  # copies republished so far to wait out another worker's lease

    @property
    def operator_copy(self) -> bool:
        """A ``dlq replay`` or ``quarantine release`` copy (or a retry of one: the headers
        travel with it), not a fresh upload: it keeps the upload's original timestamp."""
        return any(header_int(self.headers, name)[0] > 0
                   for name in (REPLAYED_HEADER, RELEASED_HEADER))


@dataclass(slots=True)
class Outcome:
    """One delivery's end: ``kind`` is an ``OutcomeKind``. For a ``duplicate``,
    ``recorded_kind`` is the outcome the input has (when known); for a recorded
    ``dead_letter``, ``dlq_marker`` is the object ``copy_confirmed`` creates once the DLQ
    has it."""

    kind: OutcomeKind
    reason: str | None = None
    stage: str | None = None
    message: HealthDataMessage | None = None
    result_key: str | None = None
    records: int = 0
    quality_score: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    recorded: bool = False  # the outcome by message id was written with the done marker
    recorded_kind: OutcomeKind | None = None
    dlq_marker: str | None = None
    outcome_id: str | None = None  # the recorded outcome a DLQ copy belongs to
    operator_copy: bool = False  # a dlq replay or quarantine release, not a fresh upload

    def __post_init__(self) -> None:
        self.kind = OutcomeKind(self.kind)


def result_key(settings: Settings, category: str, day: Any, record_id: str) -> str:
    """Deterministic per input (``record_id``: the keyed pseudonym of its idempotency key,
    which a publisher may have chosen and must not show in the dataset); the outcome record
    keeps the key it chose, so a later delivery writes the same object."""
    return (f"{settings.training_prefix}{category}/{day.year:04d}/{day.month:02d}/"
            f"{day.day:02d}/{outcomes.key_name(record_id)}.jsonl")


def quarantine_key(settings: Settings, msg: HealthDataMessage) -> str:
    """The input's quarantined copy (its reason file: this + ``outcomes.REASON_SUFFIX``)."""
    return outcomes.quarantine_key(settings.quarantine_prefix, msg.record_type,
                                   msg.idempotency_key, msg.key)


def outcome_key(settings: Settings, idempotency_key: str) -> str:
    """The input's outcome record."""
    return outcomes.outcome_key(settings.outcome_prefix, idempotency_key)


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
    committed: bool = False  # the input's outcome record exists (ours or obeyed)
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
        self._lineage_key = settings.lineage_key.get_secret_value().encode()
        self._on_dedup_error = on_dedup_error or (lambda exc: None)
        self._span = tracer_span
        self.in_flight: set[str] = set()
        self.max_lease_waits = outcomes.lease_wait_limit(
            settings.message_timeout_s, settings.lease_ttl_s, settings.retry_delays[0] / 1000)

    def _stage(self, name: str) -> Any:
        """A trace span around a stage, when tracing is on."""
        if self._span is None:
            return contextlib.nullcontext()
        return self._span(name)

    async def run(self, delivery: Delivery) -> Outcome:
        """One delivery to its outcome, within ``ETL_MESSAGE_TIMEOUT_S``; every failure
        becomes one in ``_after_failure``."""
        run = _Run()
        try:
            outcome = await self._bounded(delivery, run)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            outcome = await self._after_failure(exc, run, delivery)
            outcome.timings = run.timings
        finally:
            if run.msg is not None:
                self.in_flight.discard(run.msg.idempotency_key)
                if run.leased:
                    await self._release(run.msg)
        outcome.operator_copy = delivery.operator_copy
        return outcome

    async def copy_confirmed(self, outcome: Outcome, broker_message_id: str | None) -> None:
        """What the stores keep once the broker confirmed the outcome's copy (or it had
        none), before the ack: the DLQ marker, then the final outcome per message id.
        Best effort: without the marker a later delivery of the input publishes its DLQ
        copy once more (at least once); an outcome per message id that fails to record
        is dropped (it only informs status and the tools)."""
        if outcome.dlq_marker is not None:
            try:
                async with asyncio.timeout(10):
                    await self.storage.put_if_absent(self.settings.bucket, outcome.dlq_marker,
                                                     b"", content_type="text/plain", metadata={})
            except Exception as exc:
                log.warning("dlq_marker_failed", error=error_class(exc))
        if outcome.kind not in outcomes.FINAL or outcome.recorded:
            return
        # Recorded before the ack: a crash in between redelivers the message and it is
        # recorded again when it settles; a crash after the ack would lose it for good.
        mid = outcome.message.message_id if outcome.message is not None else None
        if not mid and outcome.kind == OutcomeKind.DEAD_LETTER:
            mid = broker_message_id
        if mid:
            with contextlib.suppress(Exception):
                await self.dedup.record_outcomes({mid: outcome.kind}, OUTCOME_TTL_S)

    async def _bounded(self, delivery: Delivery, run: _Run) -> Outcome:
        """The stages within the message's time limit; running out is ``message_timeout``
        (a transient failure like any other, decided in the same place)."""
        limit = asyncio.timeout(self.settings.message_timeout_s)
        try:
            async with limit:
                return await self._stages(delivery, run)
        except TimeoutError:
            if limit.expired():
                raise TransientError("message_timeout") from None
            raise

    async def _stages(self, delivery: Delivery, run: _Run) -> Outcome:
        with self._stage("parse"):
            msg = run.msg = self.parse(delivery)
        with self._stage("dedup"):
            claim, done_as = await self._claim(msg)
        if claim is ClaimState.DONE:
            return await self._done_already(msg, done_as)
        run.leased = claim is ClaimState.ACQUIRED
        if delivery.failed_deliveries > self.settings.delivery_limit:
            # A crash loop. The broker's x-delivery-limit alone does not end it: a lease
            # wait or retry republishes a fresh copy whose broker count starts at 0.
            raise PoisonMessage("delivery_limit", stage="consume")
        if claim is ClaimState.BUSY:
            raise LeaseBusy()
        self.in_flight.add(msg.idempotency_key)
        dl = await self._download(msg, run.timings)
        cpu = await self._compute(msg, dl, run.timings)
        t = time.perf_counter()
        with self._stage("write"):
            outcome = await self._commit(self._processed_record(msg, cpu, delivery), msg, run)
        run.timings["write"] = time.perf_counter() - t
        outcome.bytes_in = dl.size
        if outcome.kind in (OutcomeKind.PROCESSED, OutcomeKind.DUPLICATE):
            outcome.records, outcome.quality_score = cpu.records, cpu.report.get(
                "quality_score")
        outcome.timings = run.timings
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
        return pseudonyms.pseudonymous(
            self._lineage_key, bucket=msg.bucket, key=msg.key,
            record_type=msg.record_type, idempotency_key=msg.idempotency_key,
            user_id=msg.user_id, message_id=msg.message_id or "",
            correlation_id=msg.correlation_id,
            upload_timestamp_utc=msg.upload_timestamp_utc.isoformat()
            if msg.upload_timestamp_utc else None,
            full=self.settings.full_lineage)

    # --- the outcome record: the commit point ---------------------------------------------
    def _record(self, msg: HealthDataMessage, decision: Decision, delivery: Delivery,
                **fields: Any) -> dict[str, Any]:
        """The outcome record for ``decision``; ``fields`` are what its side effects need."""
        return {
            "schema": outcomes.RECORD_SCHEMA,
            "outcome_id": uuid.uuid4().hex,
            "idempotency_key": msg.idempotency_key,
            "kind": decision.kind.value,
            "reason": decision.reason,
            "stage": decision.stage,
            "binding": outcomes.binding(msg.bucket, msg.key, msg.record_type,
                                        msg.content_hash),
            # what a training record names its input by (etl-engine lineage looks here)
            "source_id": pseudonyms.source_id(self._lineage_key, msg.bucket, msg.key),
            "record_id": pseudonyms.record_id(self._lineage_key, msg.idempotency_key),
            "message_id": msg.message_id,
            "decided_at": datetime.now(UTC).isoformat(),
            "worker_id": self.settings.effective_worker_id,
            "attempt": delivery.attempt,
            "processor_version": __version__,
            **fields,
        }

    def _processed_record(self, msg: HealthDataMessage, cpu: CpuResult,
                          delivery: Delivery) -> dict[str, Any]:
        """The result's exact bytes go into the record: a later run that finishes the write
        writes these, whatever its own computation would give now."""
        out = cpu.output
        assert out is not None
        body = orjson.dumps(out.record, option=_JSON) + b"\n"
        return self._record(
            msg, Decision(OutcomeKind.PROCESSED, None, None), delivery,
            result_key=result_key(self.settings, out.category, out.period_date,
                                  out.record["metadata"]["record_id"]),
            body=body.decode(), records=cpu.records,
            quality_score=cpu.report.get("quality_score"))

    def _quarantine_record(self, msg: HealthDataMessage, decision: Decision,
                           exc: BaseException, delivery: Delivery) -> dict[str, Any]:
        cpu = exc.cpu if isinstance(exc, QuarantineWithReport) else None
        decided = self._record(msg, decision, delivery, quarantine_key=quarantine_key(
            self.settings, msg), records=cpu.records if cpu else 0,
            quality_score=cpu.report.get("quality_score") if cpu else None)
        decided["reason_document"] = {
            "reason": decision.reason,
            "detail": getattr(exc, "detail", ""),  # a field path or an error class, no value
            "stage": decision.stage,
            "message_id": msg.message_id,
            "idempotency_key": msg.idempotency_key,
            "outcome_id": decided["outcome_id"],
            "correlation_id": msg.correlation_id,
            "record_type": msg.record_type,
            "source": {"bucket": msg.bucket, "key": msg.key},
            "quality_report": cpu.report if cpu else None,
            "quarantined_at": decided["decided_at"],
            "processor_version": __version__,
            # Kept so an operator can release (re-publish) the upload after a fix.
            "message": msg.model_dump(mode="json"),
        }
        return decided

    async def _commit(self, record: dict[str, Any], msg: HealthDataMessage,
                      run: _Run) -> Outcome:
        """Create the input's outcome record, then perform its side effects. If a record
        exists, obey it: complete its side effects (a crash may have come between) and
        answer ``duplicate``; under a different binding, dead-letter the newcomer as
        ``idempotency_key_conflict`` and leave the first outcome alone. The delivery that
        creates the outcome's final artefact (the result, the reason file, the DLQ entry)
        reports the recorded kind, so each input is counted once: usually the owner, the
        next delivery when the owner failed or crashed before it."""
        key = outcome_key(self.settings, msg.idempotency_key)
        created = await self.storage.put_if_absent(
            self.settings.bucket, key, orjson.dumps(record, option=_JSON),
            content_type="application/json",
            metadata=header_metadata(message_id=msg.message_id, record_type=msg.record_type))
        if created:
            run.committed = True
            return await self._apply(record, msg, run, own=True)
        try:
            existing = await self._read_record(key)
        except PermanentError as exc:
            if exc.reason == "object_missing":  # removed in between (a release): again later
                raise TransientError("outcome_record_missing", stage="outcome") from None
            raise
        refused = self._refusal(existing, msg)
        if refused is not None:
            return refused
        assert existing is not None  # _refusal refuses an unusable record
        run.committed = True
        return await self._apply(existing, msg, run, own=False)

    async def _done_already(self, msg: HealthDataMessage, done_as: str | None) -> Outcome:
        """The done marker is per idempotency key: the record (one small GET, on the
        duplicate path only) tells whether this is the same input or a key conflict."""
        try:
            existing = await self._read_record(outcome_key(self.settings, msg.idempotency_key))
        except PermanentError as exc:
            if exc.reason != "object_missing":
                raise
            # a done marker written before outcome records existed: a duplicate as it was
            return Outcome(OutcomeKind.DUPLICATE, message=msg, recorded_kind=_kind(done_as))
        refused = self._refusal(existing, msg)
        if refused is not None:
            return refused
        assert existing is not None  # _refusal refuses an unusable record
        return Outcome(OutcomeKind.DUPLICATE, message=msg, recorded_kind=_kind(done_as),
                       result_key=existing.get("result_key") or existing.get("quarantine_key"))

    def _refusal(self, existing: dict[str, Any] | None, msg: HealthDataMessage
                 ) -> Outcome | None:
        """The dead-letter for a delivery that may not obey the stored record: unusable,
        or another input's (same idempotency key, other binding; the first one stands)."""
        if existing is None:
            reason = outcomes.RECORD_INVALID
        elif not outcomes.same_input(
                existing["binding"],
                outcomes.binding(msg.bucket, msg.key, msg.record_type, msg.content_hash),
                key_implies_content=self.settings.idempotency_scheme == "upload-service"):
            reason = outcomes.KEY_CONFLICT
        else:
            return None
        return Outcome(OutcomeKind.DEAD_LETTER, reason=reason, stage="outcome", message=msg)

    async def _read_record(self, key: str) -> dict[str, Any] | None:
        """The stored record, None if unusable; a missing one is ``object_missing``."""
        try:
            dl = await self.storage.download(self.settings.bucket, key,
                                             max_bytes=_MAX_RECORD_BYTES)
        except PermanentError as exc:
            if exc.reason == "object_missing":
                raise
            return None
        try:
            return outcomes.recorded(orjson.loads(dl.body))
        except orjson.JSONDecodeError:
            return None

    async def _apply(self, record: dict[str, Any], msg: HealthDataMessage, run: _Run, *,
                     own: bool) -> Outcome:
        """The recorded outcome's side effects, each idempotent, then the done marker."""
        kind = OutcomeKind(record["kind"])
        if kind is OutcomeKind.DEAD_LETTER:
            return await self._dead_letter(record, msg, own=own)
        if kind is OutcomeKind.PROCESSED:
            outcome = await self._write_result(record, msg)
        else:
            outcome = await self._write_quarantine(record, msg)
        # the delivery's own outcome goes with the done marker only when it is the input's
        outcome.recorded = await self._finish(msg, kind, own=outcome.kind is kind)
        run.leased = False
        self.observer.stage_finished(hooks.DONE, msg)
        return outcome

    async def _write_result(self, record: dict[str, Any], msg: HealthDataMessage) -> Outcome:
        body = str(record["body"]).encode()
        created = await self.storage.put_if_absent(
            self.settings.bucket, record["result_key"], body,
            content_type="application/x-ndjson",
            # the ML team reads these objects: the record id, never the message id (the
            # operators' logs carry that one; the two must not join)
            metadata=header_metadata(record_id=record.get("record_id"),
                                     record_type=record["binding"]["record_type"]),
        )
        self.observer.stage_finished(hooks.WRITE, msg)
        if created:  # by the owner, or by the delivery that completes the owner's outcome
            return Outcome(OutcomeKind.PROCESSED, message=msg, result_key=record["result_key"],
                           bytes_out=len(body))
        return Outcome(OutcomeKind.DUPLICATE, message=msg, result_key=record["result_key"],
                       recorded_kind=OutcomeKind.PROCESSED)

    async def _write_quarantine(self, record: dict[str, Any], msg: HealthDataMessage
                                ) -> Outcome:
        """The raw object copied to the input's quarantine path, then its reason file (the
        marker the tools list), created only if missing, so one outcome has one version.
        A reason file of another outcome is a leftover of one an operator released (the
        release deleted its record, then keeps the file until a new outcome exists): any
        delivery applying the current record replaces it, unless this record was itself
        released meanwhile (a delivery frozen past a release must not write over the
        newer outcome's file)."""
        qkey = str(record["quarantine_key"])
        source = record["binding"]
        copied = await self._copy_raw(str(source["bucket"]), str(source["key"]), qkey)
        document = orjson.dumps({**record["reason_document"], "raw_copied": copied},
                                option=_JSON | orjson.OPT_INDENT_2)
        reason_key = qkey + outcomes.REASON_SUFFIX
        created = await self.storage.put_if_absent(
            self.settings.bucket, reason_key, document, content_type="application/json",
            metadata={})
        if (not created and await self._leftover_reason(reason_key, record)
                and await self._still_current(msg, record)):
            await self.storage.put(self.settings.bucket, reason_key, document,
                                   content_type="application/json")
            created = True
        if not created:
            return Outcome(OutcomeKind.DUPLICATE, message=msg, result_key=qkey,
                           recorded_kind=OutcomeKind.QUARANTINED)
        return Outcome(OutcomeKind.QUARANTINED, reason=record["reason"], stage=record["stage"],
                       message=msg, result_key=qkey, records=int(record.get("records") or 0),
                       quality_score=record.get("quality_score"))

    async def _still_current(self, msg: HealthDataMessage, record: dict[str, Any]) -> bool:
        """Whether the stored outcome record is still ``record`` (not released since)."""
        try:
            stored = await self._read_record(outcome_key(self.settings, msg.idempotency_key))
        except PermanentError as exc:
            if exc.reason == "object_missing":
                return False
            raise
        return stored is not None and stored.get("outcome_id") == record.get("outcome_id")

    async def _leftover_reason(self, reason_key: str, record: dict[str, Any]) -> bool:
        """True when the reason file there names another outcome (a released one's); one
        naming this outcome was created by a delivery that completed it meanwhile."""
        try:
            dl = await self.storage.download(self.settings.bucket, reason_key,
                                             max_bytes=_MAX_RECORD_BYTES)
        except PermanentError as exc:
            if exc.reason == "object_missing":  # deleted in between (a release): again later
                raise TransientError("reason_file_missing", stage="quarantine") from None
            raise
        try:
            there = orjson.loads(dl.body)
        except orjson.JSONDecodeError:
            return True
        return not isinstance(there, dict) or there.get("outcome_id") != record.get("outcome_id")

    async def _copy_raw(self, bucket: str, key: str, qkey: str) -> bool:
        """Server-side copy; False when there is nothing to copy (the object is gone, or
        its bucket refuses): the reason file stands without it."""
        try:
            return await self.storage.copy(bucket, key, self.settings.bucket, qkey)
        except PermanentError:
            return False

    async def _dead_letter(self, record: dict[str, Any], msg: HealthDataMessage, *,
                           own: bool) -> Outcome:
        """The worker publishes it, then ``copy_confirmed`` creates the DLQ marker; a later
        delivery finds the marker and publishes nothing (without it: once more, at least
        once)."""
        marker = outcomes.dlq_marker_key(self.settings.outcome_prefix, msg.idempotency_key,
                                         str(record.get("outcome_id", "")))
        if not own and await self.storage.exists(self.settings.bucket, marker):
            return Outcome(OutcomeKind.DUPLICATE, message=msg,
                           recorded_kind=OutcomeKind.DEAD_LETTER)
        return Outcome(OutcomeKind.DEAD_LETTER, reason=record.get("reason"),
                       stage=record.get("stage"), message=msg, dlq_marker=marker,
                       outcome_id=str(record.get("outcome_id", "")) or None)

    # --- the one place failures become outcomes -------------------------------------------
    async def _after_failure(self, exc: BaseException, run: _Run,
                             delivery: Delivery) -> Outcome:
        """Decide (``outcomes.decide``); a quarantine or dead-letter of a parsed message
        is recorded like any outcome, so it too happens once. Failing to record it, or to
        complete a recorded outcome, is retried: the decision is never changed."""
        decision = self._decide(exc, run, delivery)
        msg = run.msg
        if msg is None or decision.kind not in outcomes.RECORDED:
            return Outcome(decision.kind, reason=decision.reason, stage=decision.stage,
                           message=msg)
        if decision.kind is OutcomeKind.QUARANTINED:
            record = self._quarantine_record(msg, decision, exc, delivery)
        else:
            record = self._record(msg, decision, delivery)
        try:
            async with asyncio.timeout(min(_SETTLE_TIMEOUT_S, self.settings.message_timeout_s)):
                return await self._commit(record, msg, run)
        except Exception as again:
            reason = "message_timeout" if isinstance(again, TimeoutError) else classify(again)[1]
            stage = getattr(again, "stage", None) or "outcome"
            retry = outcomes.decide(Failure(Disposition.RETRY, reason, stage, committed=True),
                                    attempt=delivery.attempt,
                                    max_attempts=self.settings.max_attempts)
            return Outcome(retry.kind, reason=retry.reason, stage=retry.stage, message=msg)

    def _decide(self, exc: BaseException, run: _Run, delivery: Delivery) -> Decision:
        if isinstance(exc, LeaseBusy):
            failure = Failure(Disposition.RETRY, "lease_busy", None, lease_busy=True)
        else:
            disposition, reason = classify(exc)
            stage = getattr(exc, "stage", None) or None
            if disposition is Disposition.QUARANTINE and not stage:
                stage = "decode"  # e.g. a MemoryError while decoding
            failure = Failure(disposition, reason, stage, committed=run.committed)
        return outcomes.decide(failure, attempt=delivery.attempt,
                               max_attempts=self.settings.max_attempts,
                               lease_waits=delivery.lease_waits, parsed=run.msg is not None,
                               max_lease_waits=self.max_lease_waits)

    # --- dedup, best effort: outcomes stay exactly-once without it ------------------------
    async def _claim(self, msg: HealthDataMessage) -> tuple[ClaimState, str | None]:
        try:
            claim = await self.dedup.claim(msg.idempotency_key, self.owner,
                                           int(self.settings.lease_ttl_s * 1000))
        except Exception as exc:
            self._on_dedup_error(exc)
            return ClaimState.UNAVAILABLE, None
        return ClaimState(claim.state), claim.outcome

    async def _finish(self, msg: HealthDataMessage, kind: OutcomeKind, *, own: bool) -> bool:
        """Done marker (the input's recorded kind) and, for the owner of the outcome, the
        delivery's outcome by message id in the same round trip (a duplicate's is the
        worker's to record)."""
        try:
            await self.dedup.finish(msg.idempotency_key, self.owner, kind.value,
                                    self.settings.done_ttl_s,
                                    message_id=msg.message_id if own else None)
        except Exception as exc:
            self._on_dedup_error(exc)
            return False
        return own and bool(msg.message_id)

    async def _release(self, msg: HealthDataMessage) -> None:
        try:
            await self.dedup.release(msg.idempotency_key, self.owner)
        except Exception as exc:
            self._on_dedup_error(exc)


def _kind(value: str | None) -> OutcomeKind | None:
    """A done marker's outcome as the input's kind (None for any other value)."""
    return next((k for k in outcomes.RECORDED if k.value == value), None)
