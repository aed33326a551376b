"""The published JSON Schema of a training record, assembled from the record-type registry.

Why generated: the schema closes ``training_category`` (an enum) and each category's
``statistics`` (``additionalProperties`` false), so a hand-kept file refused the output of
every type added later. Here the parts no type owns (the record's frame, the lineage and
quality fields, the fallback statistics of an unknown type, the shared formats) are
constants, and each spec brings its own statistics fragment (``RecordTypeSpec
.statistics_schema``). ``src/etl_engine/schemas/training-record.schema.json`` is this
module's output for the shipped types (``tests/test_registry.py`` holds them equal);
regenerate it with::

    python -m etl_engine.domain.output_schema src/etl_engine/schemas/training-record.schema.json
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from etl_engine.domain import registry
from etl_engine.domain.records.spec import RecordTypeSpec
from etl_engine.domain.stats.schema import COUNT, closed, per_origin
from etl_engine.domain.transform import GENERIC_CATEGORY

__all__ = ["BASE", "COMMON_DEFS", "GENERIC_DEFINITION", "SCHEMA_FILE", "main", "schema_text",
           "training_record_schema"]

SCHEMA_FILE = "training-record.schema.json"
GENERIC_DEFINITION = "genericStatistics"
DEFS = "#/$defs/"
NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}

# --- the parts no record type owns ---------------------------------------------------------------
BASE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:etl-narrative-engine:schema:training-record:1",
    "title": "ETL Narrative Engine training record",
    "description": (
        "One JSONL line written per processed Health Connect export: a natural question about the "
        "period (instruction), a plain-language answer built only from the statistics (output), "
        "and the lineage, quality and statistics behind it (metadata). Produced by "
        "etl_engine.domain.transform.transform."
    ),
    "type": "object",
    "required": ["instruction", "output", "metadata"],
    "properties": {
        "instruction": {
            "type": "string",
            "minLength": 1,
            "description": "A question about this period and record type.",
        },
        "output": {
            "type": "string",
            "minLength": 1,
            "description": (
                "Deterministic narrative stating the statistics and what they mean; no diagnosis."
            ),
        },
        "metadata": {
            "type": "object",
            "description": (
                "Pseudonymous lineage, quality and the statistics the narrative was written from. "
                "No bucket, object key, user id, message id, correlation id or idempotency key "
                "(unless ETL_FULL_LINEAGE adds `lineage`)."
            ),
            "required": [
                "source_id", "record_id", "subject_id", "lineage_key_id", "record_type",
                "processor_version", "processed_at", "quality_score", "quality_components",
                "total_records", "valid_records", "issue_counts", "warnings", "statistics",
                "training_category", "period_date", "period_start", "period_end", "export_time",
                "partial", "settings_digest",
            ],
            "properties": {
                "source_id": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{32}$",
                    "description": (
                        "Keyed pseudonym (HMAC-SHA256 under ETL_LINEAGE_KEY, 128 bits) of the "
                        "source file's bucket and object key. Operators map it back with "
                        "`etl-engine lineage SOURCE_ID`; without the key it can be neither "
                        "reversed nor confirmed."
                    ),
                },
                "record_id": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{32}$",
                    "description": (
                        "Keyed pseudonym of the input (its idempotency key): one per input, the "
                        "result object's file name. Several inputs may share a source_id only when "
                        "publishers announced one file under several keys."
                    ),
                },
                "record_type": {
                    "type": "string",
                    "description": "Canonical Health Connect record type, e.g. StepsRecord.",
                },
                "processor_version": {"type": "string"},
                "processed_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "ISO-8601 time passed to transform (UTC assumed if naive).",
                },
                "quality_score": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "See docs/quality-score.md.",
                },
                "quality_components": {
                    "type": "object",
                    "required": ["completeness", "consistency", "validity"],
                    "properties": {
                        "completeness": {"type": "number", "minimum": 0, "maximum": 1},
                        "consistency": {"type": "number", "minimum": 0, "maximum": 1},
                        "validity": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "additionalProperties": False,
                },
                "total_records": {"type": "integer", "minimum": 1},
                "valid_records": {"type": "integer", "minimum": 1},
                "issue_counts": {
                    "type": "object",
                    "description": "Validation reason code -> count. Codes only, never values.",
                    "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
                    "additionalProperties": {"type": "integer", "minimum": 1},
                },
                "warnings": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {
                        "enum": [
                            "day_in_progress", "multiple_data_origins", "records_excluded",
                            "zone_offset_assumed_utc",
                        ],
                    },
                },
                "statistics": {
                    "type": "object",
                    "description": "Per-type statistics; shape chosen by training_category.",
                },
                "training_category": {"enum": []},  # the registry's categories
                "period_date": {
                    "$ref": "#/$defs/localDate",
                    "description": (
                        "Local date of the earliest valid record (the record's own zone offset)."
                    ),
                },
                "period_start": {
                    "$ref": "#/$defs/utcTimestamp",
                    "description": "Earliest start (or instant) of a valid record, UTC.",
                },
                "period_end": {
                    "$ref": "#/$defs/utcTimestamp",
                    "description": "Latest end (or instant) of a valid record, UTC.",
                },
                "subject_id": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{32}$",
                    "description": (
                        "Keyed pseudonym of the user id: stable across one person's records (under "
                        "one lineage key), for per-person splits (`etl-engine dataset pull --split "
                        "... --by subject`). Not the user hash in the operators' logs."
                    ),
                },
                "lineage_key_id": {
                    "type": "string",
                    "pattern": "^([0-9a-f]{8})?$",
                    "description": (
                        "Fingerprint of the lineage key the three pseudonyms were made with (not "
                        "the key). Records under different keys cannot be joined by subject: the "
                        "dataset tools warn when they meet two."
                    ),
                },
                "export_time": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": (
                        "The latest export time of the records used: the app's "
                        "appRecordFetchTimeEpochMillis where plausible, else the upload time (see "
                        "docs/clinical.md)."
                    ),
                },
                "partial": {
                    "type": "boolean",
                    "description": (
                        "True when a day in this record was still in progress when the phone "
                        "exported it (its figures stop at the export time)."
                    ),
                },
                "supersedes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "uniqueItems": True,
                    "description": (
                        "Only in a monthly journal (etl-engine compact): idempotency keys of "
                        "earlier exports of the same subject, type and days that this record "
                        "replaced."
                    ),
                },
                "superseded_days": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/localDate"},
                    "description": (
                        "Only in a monthly journal: days of this record for which a later export "
                        "of the same subject and type is in the journal; skip them when summing "
                        "days."
                    ),
                },
                "settings_digest": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{16}$",
                    "description": (
                        "Digest of the settings that shape a result (quality threshold, future "
                        "skew, origin priority); the dataset card lists the settings behind each "
                        "digest it knows."
                    ),
                },
                "lineage": {
                    "type": "object",
                    "description": (
                        "Only with ETL_FULL_LINEAGE=true (a private deployment): the raw lineage. "
                        "Names the person (the object key holds the user id)."
                    ),
                    "properties": {
                        "bucket": {"type": ["string", "null"]},
                        "key": {"type": ["string", "null"]},
                        "message_id": {"type": ["string", "null"]},
                        "correlation_id": {"type": ["string", "null"]},
                        "idempotency_key": {"type": ["string", "null"]},
                        "upload_timestamp_utc": {"type": ["string", "null"]},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

LOCAL_DATE: dict[str, Any] = {
    "type": "string",
    "format": "date",
    "pattern": "^\\d{4}-\\d{2}-\\d{2}$",
}

UTC_TIMESTAMP: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "pattern": "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$",
}

GENERIC_STATISTICS: dict[str, Any] = {
    "type": "object",
    "description": "Fallback statistics for any other record type (domain/stats/generic.py).",
    "required": [
        "record_count", "first_time", "last_time", "span_hours", "days", "fields", "origins",
    ],
    "properties": {
        "record_count": {"type": "integer", "minimum": 1},
        "first_time": {"$ref": "#/$defs/utcTimestamp"},
        "last_time": {"$ref": "#/$defs/utcTimestamp"},
        "span_hours": {"type": "number", "minimum": 0},
        "days": {"type": "integer", "minimum": 1},
        "fields": {
            "type": "object",
            "additionalProperties": closed({
                "count": COUNT, "min": NUMBER_OR_NULL, "max": NUMBER_OR_NULL,
                "mean": NUMBER_OR_NULL,
            }),
        },
        "origins": per_origin({"records": COUNT}),
    },
    "additionalProperties": False,
}

DAY_DETAIL: dict[str, Any] = {
    "type": "object",
    "description": "What one local day rests on (domain/stats/daily.py).",
    "required": ["complete", "as_of_local", "hours_covered", "day_covered_percent", "origin"],
    "properties": {
        "complete": {
            "type": "boolean",
            "description": "False: the day was still in progress when the phone exported it.",
        },
        "as_of_local": {
            "type": ["string", "null"],
            "pattern": "^[0-2][0-9]:[0-5][0-9]$",
            "description": (
                "Local clock time of the export, for a day in progress; null for a complete day."
            ),
        },
        "hours_covered": {
            "type": "number",
            "minimum": 0,
            "description": (
                "Time covered by the chosen origin's records that day, up to the export time "
                "(hours)."
            ),
        },
        "day_covered_percent": {
            "type": "number",
            "minimum": 0,
            "maximum": 100,
            "description": "hours_covered as % of 24 h.",
        },
        "origin": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}

DAY_SUFFICIENCY: dict[str, Any] = {
    "type": "object",
    "description": "Days and hours the figures rest on.",
    "required": ["days_covered", "complete_days", "partial_days", "hours_covered"],
    "properties": {
        "days_covered": {"type": "integer", "minimum": 1},
        "complete_days": {"type": "integer", "minimum": 0},
        "partial_days": {"type": "integer", "minimum": 0},
        "hours_covered": {"type": "number", "minimum": 0},
    },
    "additionalProperties": False,
}

COMMON_DEFS: Mapping[str, dict[str, Any]] = {
    "localDate": LOCAL_DATE, "utcTimestamp": UTC_TIMESTAMP, "dayDetail": DAY_DETAIL,
    "daySufficiency": DAY_SUFFICIENCY,
}
"""What any statistics fragment may ``$ref`` besides its own parts."""


# --- assembling ----------------------------------------------------------------------------------
def _branch(when: dict[str, str], definition: str) -> dict[str, Any]:
    """``if`` the metadata has these values, ``then`` its statistics follow ``definition``."""
    return {"if": {"properties": {k: {"const": v} for k, v in when.items()},
                   "required": list(when)},
            "then": {"properties": {"statistics": {"$ref": DEFS + definition}}}}


def _branches(specs: tuple[RecordTypeSpec, ...]) -> list[dict[str, Any]]:
    """One branch per category; where types share a category but not a statistics shape,
    one per type (keyed by ``record_type`` too). The fallback category comes last."""
    by_category: dict[str, list[RecordTypeSpec]] = {}
    for spec in specs:
        if spec.category == GENERIC_CATEGORY:
            raise ValueError(f"{spec.name}: {GENERIC_CATEGORY!r} is the category of the "
                             "types without a spec")
        by_category.setdefault(spec.category, []).append(spec)
    out: list[dict[str, Any]] = []
    for category, group in by_category.items():
        shapes = {s.statistics_schema.name for s in group if s.statistics_schema is not None}
        if len(shapes) == 1 and all(s.statistics_schema is not None for s in group):
            out.append(_branch({"training_category": category}, shapes.pop()))
            continue
        out.extend(_branch({"training_category": category, "record_type": s.name},
                           s.statistics_schema.name)
                   for s in group if s.statistics_schema is not None)
    out.append(_branch({"training_category": GENERIC_CATEGORY}, GENERIC_DEFINITION))
    return out


def _type_defs(specs: tuple[RecordTypeSpec, ...]) -> dict[str, Any]:
    """The statistics fragments of the specs by ``$defs`` name; one name, one fragment."""
    out: dict[str, Any] = {}
    for spec in specs:
        shape = spec.statistics_schema
        if shape is None:
            continue
        if shape.name in COMMON_DEFS or shape.name == GENERIC_DEFINITION:
            raise ValueError(f"{spec.name}: $defs/{shape.name} is taken by a shared part")
        if out.get(shape.name, shape.schema) != shape.schema:
            raise ValueError(f"{spec.name}: another type defines $defs/{shape.name} otherwise")
        out[shape.name] = dict(shape.schema)
    return out


def _refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` in a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def training_record_schema(specs: Iterable[RecordTypeSpec] | None = None) -> dict[str, Any]:
    """The schema a training record of these types (default: every registered type, by
    ``order``) satisfies; a fresh dict each call.

    ValueError when a fragment ``$ref``s a definition that is not there, so a typo in a new
    type's fragment fails here rather than in a consumer's validator."""
    chosen = registry.specs() if specs is None else tuple(specs)
    schema = copy.deepcopy(BASE)
    metadata = schema["properties"]["metadata"]
    categories = dict.fromkeys([s.category for s in chosen] + [GENERIC_CATEGORY])
    metadata["properties"]["training_category"] = {"enum": list(categories)}
    metadata["allOf"] = _branches(chosen)
    # the file's long-standing order: formats, the types, the fallback, the daily parts
    defs: dict[str, Any] = {"localDate": LOCAL_DATE, "utcTimestamp": UTC_TIMESTAMP}
    defs.update(_type_defs(chosen))
    defs[GENERIC_DEFINITION] = GENERIC_STATISTICS
    defs.update((k, v) for k, v in COMMON_DEFS.items() if k not in defs)
    schema["$defs"] = copy.deepcopy(defs)
    missing = {r for r in _refs(schema) if r.removeprefix(DEFS) not in defs}
    if missing:
        raise ValueError(f"$ref to no definition: {', '.join(sorted(missing))}")
    return schema


def schema_text(specs: Iterable[RecordTypeSpec] | None = None) -> str:
    """The schema as the committed file spells it (two-space JSON, a final newline)."""
    return json.dumps(training_record_schema(specs), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the schema of the shipped types, or write it to the path given."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.stderr.write("usage: python -m etl_engine.domain.output_schema [PATH]\n")
        return 2
    text = schema_text(registry.SHIPPED)
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
