"""Lifecycle events of a delivery, for code installed from outside the pipeline.

Like dramatiq's middleware: the worker and the pipeline call every observer at fixed
points, and an observer overrides only the events it cares about. Production installs
``OutcomeObserver`` (the metrics and the ``message_settled`` log line per outcome); tests
install their own (wait for the consumer, crash at a point) with no setting to switch on.

Observers run on the event loop, in the order they were added, and must be quick. An
observer watches and never steers: an exception from one is logged (``observer_failed``,
naming the observer and the event) and the worker carries on, with the observers after it
and with the delivery (``Observers._safely``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from etl_engine.observability import metrics
from etl_engine.observability.logs import get_logger

if TYPE_CHECKING:
    from etl_engine.domain.messages import HealthDataMessage
    from etl_engine.runtime.pipeline import Outcome

# The worker's logger: ``message_settled`` keeps the logger name it always had.
log = get_logger("etl.worker")

# The pipeline's events, in the order they happen for a message that is processed.
DOWNLOAD, DECODE, WRITE, DONE = "download", "decode", "write", "done"
STAGES = (DOWNLOAD, DECODE, WRITE, DONE)


class PipelineObserver:
    """No-op base: subclass it and override the events you need."""

    def consuming(self) -> None:
        """The worker has a consumer on the work queue (after every (re)connect)."""

    def stage_finished(self, stage: str, message: HealthDataMessage) -> None:
        """``stage`` (one of ``STAGES``) is over for ``message``: download (fetched and
        verified), decode (the CPU stages ran, before a failed validation is quarantined),
        write (the result object is stored), done (the done marker is written)."""

    def acking(self, outcome: Outcome) -> None:
        """The outcome is settled (republished, recorded) and the ack is next."""

    def settled(self, outcome: Outcome, seconds: float) -> None:
        """The delivery is acked, ``seconds`` after it arrived."""


class Observers(PipelineObserver):
    """Several observers as one: each event goes to every observer, in order."""

    def __init__(self, observers: Iterable[PipelineObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: PipelineObserver) -> None:
        """Install ``observer`` after the others (it sees every later event)."""
        self._observers.append(observer)

    def consuming(self) -> None:
        for observer in self._observers:
            self._safely(observer.consuming)

    def stage_finished(self, stage: str, message: HealthDataMessage) -> None:
        for observer in self._observers:
            self._safely(observer.stage_finished, stage, message)

    def acking(self, outcome: Outcome) -> None:
        for observer in self._observers:
            self._safely(observer.acking, outcome)

    def settled(self, outcome: Outcome, seconds: float) -> None:
        for observer in self._observers:
            self._safely(observer.settled, outcome, seconds)

    @staticmethod
    def _safely(event: Callable[..., None], *args: Any) -> None:
        """An observer sees the worker; it never steers it: its error is logged, not raised
        into consuming or settling (which would leak a consumer or skip an ack)."""
        try:
            event(*args)
        except Exception as exc:
            owner = type(getattr(event, "__self__", event)).__name__
            log.warning("observer_failed", observer=owner, hook=event.__name__,
                        error=type(exc).__name__)


class OutcomeObserver(PipelineObserver):
    """Counts and logs every settled delivery. The metric names, labels and log fields are
    an interface (the deployment's alerts and dashboards read them)."""

    def settled(self, outcome: Outcome, seconds: float) -> None:
        record_type = outcome.message.record_type if outcome.message else "unknown"
        _count(outcome, record_type, seconds)
        _count_failure(outcome)
        _freshness(outcome)
        # message_id, correlation_id, record_type, worker_id, attempt, trace_id: bound by
        # the worker for this delivery (from the parsed message when it parsed). A
        # duplicate also names the outcome the input has (``recorded_as``), when known.
        extra = {"recorded_as": outcome.recorded_kind} if outcome.recorded_kind else {}
        log.log(
            _INFO if outcome.kind in ("processed", "duplicate") else _WARNING,
            "message_settled",
            outcome=outcome.kind,
            reason=outcome.reason,
            stage=outcome.stage,
            duration_ms=round(seconds * 1000, 2),
            **extra,
        )


# Outcome kind -> the ``etl_messages_total`` outcome label, where they differ.
_LABELS = {"retry": "retried", "dead_letter": "dead_lettered", "lease_busy": "retried"}
_INFO, _WARNING = 20, 30


def _count(outcome: Outcome, record_type: str, seconds: float) -> None:
    label = _LABELS.get(outcome.kind, outcome.kind)
    if outcome.kind == "dead_letter" and outcome.stage == "parse":
        label = "rejected"
    metrics.MESSAGES.labels(label, record_type).inc()
    if outcome.records:
        metrics.RECORDS.labels(record_type).inc(outcome.records)
    if outcome.kind == "processed":
        metrics.BYTES_UPLOADED.inc(outcome.bytes_out)
        metrics.PROCESSING_SECONDS.labels(record_type).observe(seconds)
    if outcome.quality_score is not None:
        metrics.QUALITY.labels(record_type).observe(outcome.quality_score)
    # Downloaded bytes are counted by AsyncStorage.download (failed files count too).
    for stage, secs in outcome.timings.items():
        metrics.STAGE_SECONDS.labels(stage).observe(secs)


def _count_failure(outcome: Outcome) -> None:
    if outcome.kind == "quarantined":
        metrics.QUARANTINED.labels(metrics.reason_label(outcome.reason)).inc()
    elif outcome.kind == "dead_letter":
        metrics.DEAD_LETTERED.labels(metrics.reason_label(outcome.reason)).inc()
    elif outcome.kind == "retry":
        metrics.RETRIES.labels(metrics.reason_label(outcome.reason)).inc()
    elif outcome.kind == "lease_busy":
        metrics.LEASE_CONTENTION.inc()


# Outcome kinds that settle an accepted upload (the freshness SLO, docs/slo.md).
_SETTLING = {"processed": "processed", "quarantined": "quarantined",
             "dead_letter": "dead_lettered"}


def _freshness(outcome: Outcome) -> None:
    """Publish-to-settle of an upload's final outcome, from its ``upload_timestamp_utc``.

    Only the delivery that reports the input's outcome counts (a duplicate does not), and
    not an operator's copy (a replay or release keeps the original timestamp: hours later
    it would read as a slow settle). A publisher's clock ahead of ours gives a negative
    age: 0, never a negative observation."""
    label = _SETTLING.get(outcome.kind)
    msg = outcome.message
    if label is None or msg is None or msg.upload_timestamp_utc is None \
            or outcome.operator_copy:
        return
    sent = msg.upload_timestamp_utc
    if sent.tzinfo is None:  # ISO-8601 without an offset: the field is UTC by name
        sent = sent.replace(tzinfo=UTC)
    metrics.PUBLISH_TO_SETTLE.labels(label).observe(max(0.0, time.time() - sent.timestamp()))
