"""Typed inputs and outputs of the pipeline stages.

The pipeline (``pipeline.py``) runs: parse message -> dedup -> download -> verify ->
decode -> validate -> transform -> write -> mark done. The pure stages (decode, validate,
transform) exchange the values below, so each can be tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a result came from. The training record carries only the pseudonyms
    (domain/lineage.py), unless ``full`` (a private deployment's ETL_FULL_LINEAGE) adds the
    raw fields too."""

    bucket: str
    key: str
    message_id: str
    correlation_id: str
    record_type: str
    idempotency_key: str
    upload_timestamp_utc: str | None = None
    subject_id: str | None = None  # keyed pseudonym of the user id: per-subject compaction
    source_id: str = ""  # keyed pseudonym of bucket + key
    record_id: str = ""  # keyed pseudonym of the idempotency key: the result's file name
    key_id: str = ""  # fingerprint of the lineage key the pseudonyms were made with
    full: bool = False


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """The settings the pure domain stages need (no I/O, no environment)."""

    quality_threshold: float = 0.7
    max_future_skew_ms: int = 300_000
    origin_priority: tuple[str, ...] = ()
    processor_version: str = "0.2.0"


@dataclass(slots=True)
class DecodedFile:
    record_type: str
    records: list[Record]
    codec: str
    writer_schema_name: str
    size_bytes: int


@dataclass(slots=True)
class ValidationReport:
    """Outcome of validation. ``issue_counts`` holds reason codes and counts, never values."""

    record_type: str
    total_records: int
    valid_records: list[Record]
    quality_score: float
    components: dict[str, float] = field(default_factory=dict)
    issue_counts: dict[str, int] = field(default_factory=dict)
    passed: bool = True
    quarantine_reason: str | None = None
    # Set when validation streamed the valid records into a column store (long series,
    # ``domain/stats/columns.py``) instead of ``valid_records``; ``valid_count`` then counts
    # them (-1: count ``valid_records``).
    columns: Any = None
    valid_count: int = -1
    # Records still in progress at their export time (kept, ending then), and the latest
    # export time of the kept records (epoch ms; None when nothing was kept).
    in_progress_records: int = 0
    export_ms: int | None = None

    @property
    def kept(self) -> int:
        """How many records passed, wherever they were kept."""
        return self.valid_count if self.valid_count >= 0 else len(self.valid_records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_type": self.record_type,
            "total_records": self.total_records,
            "valid_records": self.kept,
            "quality_score": round(self.quality_score, 4),
            "components": {k: round(v, 4) for k, v in sorted(self.components.items())},
            "issue_counts": dict(sorted(self.issue_counts.items())),
            "passed": self.passed,
            "quarantine_reason": self.quarantine_reason,
            "in_progress_records": self.in_progress_records,
        }


@dataclass(slots=True)
class TrainingOutput:
    """One JSONL training record and where it belongs."""

    category: str
    period_date: date
    record: dict[str, Any]
