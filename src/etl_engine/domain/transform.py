"""Transform a validated file into one training record: statistics, narrative, lineage.

Why one entry point: the pipeline only knows ``transform``; which statistics apply is a
property of the record type (its spec in the registry, ``records/<type>.py``), and unknown
types fall back to ``generic`` instead of failing.
Pure and deterministic: ``processed_at`` is passed in, nothing is read or logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import orjson

from etl_engine.domain import narratives, registry
from etl_engine.domain.model import DomainConfig, Lineage, Record, TrainingOutput, ValidationReport
from etl_engine.domain.records.spec import ColumnStore, RecordTypeSpec
from etl_engine.domain.stats import generic
from etl_engine.domain.stats.common import (
    end_ms,
    iso_utc,
    local_date,
    origins_of,
    start_ms,
    start_offset_ms,
)
from etl_engine.domain.validation import canonical_record_type

__all__ = ["GENERIC_CATEGORY", "PROCESSORS", "column_sink", "compute_statistics",
           "full_lineage", "settings_digest", "training_category", "transform"]

# Every known type's spec by name (a live view of the registry; the old name).
PROCESSORS: Mapping[str, RecordTypeSpec] = registry.SPECS
GENERIC_CATEGORY = "general_health"


def training_category(record_type: str) -> str:
    """Training category of a record type; ``general_health`` for types we do not know."""
    spec = registry.find(canonical_record_type(record_type))
    return GENERIC_CATEGORY if spec is None else spec.category


def compute_statistics(
    record_type: str, records: list[Record], config: DomainConfig
) -> dict[str, Any]:
    """Statistics of the type's spec, or the generic summary for unknown types."""
    spec = registry.find(canonical_record_type(record_type))
    if spec is None:
        return generic.compute_statistics(records, config)
    return spec.statistics(records, config)


def column_sink(record_type: str) -> ColumnStore | None:
    """A column store for validation to stream into, for the types whose files can hold
    millions of values (CGM readings, heart-rate samples, minute-level steps or calories);
    None: keep records as a list."""
    spec = registry.find(canonical_record_type(record_type))
    if spec is None or spec.column_store is None:
        return None
    return spec.column_store()


def _column_statistics(rtype: str, cols: ColumnStore, config: DomainConfig) -> dict[str, Any]:
    """Statistics from the column store the type's spec streamed its records into."""
    spec = registry.find(rtype)
    if spec is None or spec.column_statistics is None:
        raise TypeError(f"no column statistics for {rtype}")
    return spec.column_statistics(cols, config)


def _bounds(records: list[Record]) -> tuple[int, int, date, date]:
    """Earliest start, latest end, and the local dates of the earliest and latest start."""
    first = last = records[0]
    first_s = last_s = start_ms(first)
    latest_end = end_ms(first)
    for rec in records:
        s = start_ms(rec)
        if s < first_s or (s == first_s and start_offset_ms(rec) < start_offset_ms(first)):
            first, first_s = rec, s  # ties: the earlier local date, whatever the input order
        if s > last_s or (s == last_s and start_offset_ms(rec) > start_offset_ms(last)):
            last, last_s = rec, s
        e = end_ms(rec)
        if e > latest_end:
            latest_end = e
    return (first_s, latest_end, local_date(first_s, start_offset_ms(first)),
            local_date(last_s, start_offset_ms(last)))


def _period(stats: dict[str, Any], first: date, last: date) -> tuple[date, date]:
    """The period a narrative names: the statistics' own (a night is named for the evening
    it began, ``night_of``) when they give one, else the local dates of the records."""
    a, b = stats.get("period_first_day"), stats.get("period_last_day")
    if isinstance(a, str) and isinstance(b, str):
        return date.fromisoformat(a), date.fromisoformat(b)
    return first, last


def _warnings(report: ValidationReport, valid: int, origins: int) -> list[str]:
    out = []
    if report.in_progress_records:
        out.append("day_in_progress")
    if valid < report.total_records:
        out.append("records_excluded")
    if report.issue_counts.get("missing_zone_offset"):
        out.append("zone_offset_assumed_utc")
    if origins > 1:
        out.append("multiple_data_origins")
    return out


def settings_digest(config: DomainConfig) -> str:
    """The settings that shape a result, as a short digest: the dataset card tells records
    made under different settings apart (and lists the settings of the one it knows)."""
    shaping = {"quality_threshold": config.quality_threshold,
               "max_future_skew_ms": config.max_future_skew_ms,
               "origin_priority": list(config.origin_priority)}
    return hashlib.sha256(orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def full_lineage(lineage: Lineage) -> dict[str, Any]:
    """The raw lineage, only under ETL_FULL_LINEAGE (names the person: see docs/dataset.md)."""
    return {"bucket": lineage.bucket, "key": lineage.key, "message_id": lineage.message_id,
            "correlation_id": lineage.correlation_id,
            "idempotency_key": lineage.idempotency_key,
            "upload_timestamp_utc": lineage.upload_timestamp_utc}


def transform(
    report: ValidationReport,
    lineage: Lineage,
    *,
    config: DomainConfig,
    processed_at: datetime,
) -> TrainingOutput:
    """Statistics + narrative + lineage for a passed report (ValueError if nothing valid).

    ``period_date`` is the local date of the earliest valid record; the instruction covers
    the local dates from the earliest to the latest record start.
    """
    records = report.valid_records
    cols = report.columns
    if not (len(cols) if cols is not None else records):
        raise ValueError("transform needs at least one valid record")
    rtype = canonical_record_type(report.record_type or lineage.record_type)
    category = training_category(rtype)
    if cols is not None:  # streamed: the valid records live in a column store
        stats = _column_statistics(rtype, cols, config)
        first_ms, last_ms, first_day, last_day = cols.bounds()
        valid, origins = len(cols), cols.origin_count()
    else:
        stats = compute_statistics(rtype, records, config)
        first_ms, last_ms, first_day, last_day = _bounds(records)
        valid, origins = len(records), len(set(origins_of(records)))
    first_day, last_day = _period(stats, first_day, last_day)
    question, answer = narratives.build(
        rtype, stats, first_day=first_day, last_day=last_day, seed=lineage.idempotency_key
    )
    when = processed_at if processed_at.tzinfo else processed_at.replace(tzinfo=UTC)
    metadata: dict[str, Any] = {
        "source_id": lineage.source_id,
        "record_id": lineage.record_id,
        "subject_id": lineage.subject_id,
        "lineage_key_id": lineage.key_id,
        "record_type": rtype,
        "export_time": iso_utc(report.export_ms) if report.export_ms else None,
        "partial": bool(stats.get("partial", report.in_progress_records > 0)),
        "processor_version": config.processor_version,
        "settings_digest": settings_digest(config),
        "processed_at": when.isoformat(),
        "quality_score": round(report.quality_score, 4),
        "quality_components": {k: round(v, 4) for k, v in sorted(report.components.items())},
        "total_records": report.total_records,
        "valid_records": valid,
        "issue_counts": dict(sorted(report.issue_counts.items())),
        "warnings": _warnings(report, valid, origins),
        "statistics": stats,
        "training_category": category,
        "period_date": first_day.isoformat(),
        "period_start": iso_utc(first_ms),
        "period_end": iso_utc(last_ms),
    }
    if lineage.full:  # ETL_FULL_LINEAGE: a private deployment asked for the raw fields
        metadata["lineage"] = full_lineage(lineage)
    record = {"instruction": question, "output": answer, "metadata": metadata}
    return TrainingOutput(category=category, period_date=first_day, record=record)
