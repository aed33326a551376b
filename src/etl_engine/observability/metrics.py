"""Prometheus metrics. Labels are bounded sets: outcome, record type, stage, reason code.

Never a user id, object key or message id.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from etl_engine import __version__

# ``*_created`` series double the scrape size and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

OUTCOMES = ("processed", "duplicate", "quarantined", "retried", "dead_lettered", "rejected")
STAGES = ("download", "decode", "validate", "transform", "write")

MESSAGES = Counter(
    "etl_messages_total", "Messages settled, by outcome and record type.",
    ["outcome", "record_type"], registry=REGISTRY,
)
RECORDS = Counter(
    "etl_records_decoded_total", "Avro records decoded.", ["record_type"], registry=REGISTRY
)
BYTES_DOWNLOADED = Counter(
    "etl_downloaded_bytes_total", "Bytes downloaded from object storage.", registry=REGISTRY
)
BYTES_UPLOADED = Counter(
    "etl_uploaded_bytes_total", "Bytes of results written to object storage.",
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "etl_stage_duration_seconds", "Time spent per pipeline stage.", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PROCESSING_SECONDS = Histogram(
    "etl_processing_duration_seconds", "End-to-end handling time of one message.",
    ["record_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("etl_messages_in_flight", "Messages being handled now.", registry=REGISTRY)
QUALITY = Histogram(
    "etl_quality_score", "Quality score of validated files.", ["record_type"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0), registry=REGISTRY,
)
QUARANTINED = Counter(
    "etl_quarantined_total", "Files quarantined, by reason code.", ["reason"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "etl_dead_lettered_total", "Messages dead-lettered, by reason code.", ["reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "etl_retries_total", "Delayed retries scheduled, by reason code.", ["reason"],
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "etl_dependency_up", "1 when the dependency answered its last check.", ["dependency"],
    registry=REGISTRY,
)
LEASE_CONTENTION = Counter(
    "etl_lease_contention_total", "Deliveries that found another worker holding the lease.",
    registry=REGISTRY,
)
DEDUP_ERRORS = Counter(
    "etl_dedup_errors_total", "Dedup store calls that failed (work continued without it).",
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "etl_broker_reconnects_total", "Broker connections re-established.", registry=REGISTRY
)
EVENT_LOOP_LAG = Histogram(
    "etl_event_loop_lag_seconds",
    "How late a timer on the worker's event loop fires past its interval (a blocked loop "
    "delays probes, AMQP heartbeats and acks).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
# The freshness SLO (docs/slo.md): an accepted upload settled (result, quarantine or DLQ)
# within 60 s of its announcement; 60 must stay a bucket bound.
PUBLISH_TO_SETTLE = Histogram(
    "etl_publish_to_settle_seconds",
    "From the message's upload_timestamp_utc to the settle of its first final outcome "
    "(processed, quarantined or dead-lettered; replays and releases not counted). A clock "
    "behind the publisher's reads as 0.",
    ["outcome"],
    buckets=(1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
CONFIG_VERSION = Gauge(
    "etl_config_version",
    "Configuration version of this worker: 1 at start, +1 for each reload that changed a "
    "setting (POST /admin/config/reload, SIGHUP).",
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "etl_config_reloads_total",
    "Configuration reloads, by result: applied, unchanged, refused (a setting needs a "
    "restart; the others were applied), invalid (nothing changed), failed (the apply "
    "failed and was undone: nothing changed).",
    ["result"], registry=REGISTRY,
)
BUILD = Info("etl_build", "Build information.", registry=REGISTRY)
BUILD.info({"version": __version__})

# Label values whose series exist from the start (``precreate``): a labelled child appears
# on its first increment, and rate()/increase() cannot see a series go from absent to 1,
# so the first dead-letter of a fresh worker would escape the alerts and the SLOs.
SERVICE_FAILURES = ("attempts_exhausted", "delivery_limit")  # the correctness SLO's errors
SETTLED = ("processed", "quarantined", "dead_lettered")  # the publish-to-settle outcomes
RELOAD_RESULTS = ("applied", "unchanged", "refused", "invalid", "failed")


def precreate(record_types: Iterable[str]) -> None:
    """Create at 0 the series the SLOs and alerts take rates of: every outcome x record
    type (the registry's names; ``unknown`` for a rejected message), the service-failure
    dead-letter reasons, the publish-to-settle outcomes, every reload result. Bounded: a
    few dozen series."""
    for record_type in record_types:
        for outcome in OUTCOMES:
            MESSAGES.labels(outcome, record_type)
    MESSAGES.labels("rejected", "unknown")
    for reason in SERVICE_FAILURES:
        DEAD_LETTERED.labels(reason)
    for outcome in SETTLED:
        PUBLISH_TO_SETTLE.labels(outcome)
    for result in RELOAD_RESULTS:
        CONFIG_RELOADS.labels(result)


_REASON_MAX = 48


def reason_label(reason: str | None) -> str:
    """Reason codes are ours, but clip anything odd to keep label cardinality bounded."""
    if not reason:
        return "unknown"
    code = reason.split(":", 1)[0] if not reason.startswith("attempts_exhausted") else (
        "attempts_exhausted")
    return code[:_REASON_MAX]
