"""The Health Connect record types the engine understands, and their Avro reader schemas.

The ``.avsc`` files in the repository's top-level ``schemas/`` directory read the Health
Sync app's exports. The app is the authority: its writer schemas (copied from real
exports into ``tools/etl_devtools/app_writer_schemas``) list the fields, names and order ours
repeat, so the app's files decode without schema resolution; named types that were once
spelled differently carry the old name as an alias (``AvroSleepStageRecord``, alias
``AvroSleepStage``). Shared named types (``AvroMetadata``, ``AvroDevice``)
live in their own files named ``<full name>.avsc``, which is the convention
``fastavro.schema.load_schema`` uses to find referenced types, so loading needs no custom
resolver and the result is a fully expanded, parsed schema.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro.schema import load_schema

AVRO_NAMESPACE = "io.github.hitoshura25.healthsyncapp.data.avro"

SUPPORTED_RECORD_TYPES: tuple[str, ...] = (
    "BloodGlucoseRecord",
    "HeartRateRecord",
    "HeartRateVariabilityRmssdRecord",
    "SleepSessionRecord",
    "StepsRecord",
    "ActiveCaloriesBurnedRecord",
)

TRAINING_CATEGORY: dict[str, str] = {
    "BloodGlucoseRecord": "metabolic_diabetes",
    "HeartRateRecord": "cardiovascular_fitness",
    "HeartRateVariabilityRmssdRecord": "autonomic_health",
    "SleepSessionRecord": "sleep_recovery",
    "StepsRecord": "physical_activity",
    "ActiveCaloriesBurnedRecord": "energy_metabolism",
}

# Interval records carry start/end times; the others are instants with one timestamp.
_INTERVAL_TYPES: frozenset[str] = frozenset(
    {"HeartRateRecord", "SleepSessionRecord", "StepsRecord", "ActiveCaloriesBurnedRecord"}
)



def _check(record_type: str) -> str:
    """Fail loudly (KeyError) for a type we have no contract for."""
    if record_type not in TRAINING_CATEGORY:
        raise KeyError(f"unsupported record type: {record_type!r}")
    return record_type


def full_name(record_type: str) -> str:
    """Avro full name the app writes for ``record_type`` (e.g. ``...avro.AvroStepsRecord``)."""
    return f"{AVRO_NAMESPACE}.Avro{_check(record_type)}"


def is_interval(record_type: str) -> bool:
    """True for records with start/end times, False for single-instant records."""
    return _check(record_type) in _INTERVAL_TYPES


def schema_dir() -> Path:
    """The reader schemas, shipped as package data (any install, not only the source tree).

    fastavro's ``load_schema`` resolves named types from sibling files, so it needs a real
    directory: ``as_file`` gives the package's own directory for every non-zip install.
    """
    with resources.as_file(resources.files("etl_engine") / "schemas") as path:
        return path


def schema_path(record_type: str) -> Path:
    """The ``.avsc`` file holding the reader schema of ``record_type``."""
    return schema_dir() / f"{_check(record_type)}.avsc"


@cache
def _load(record_type: str) -> Any:
    return load_schema(str(schema_path(record_type)))


def reader_schema(record_type: str) -> dict[str, Any]:
    """Parsed reader schema (named types expanded) for decoding the app's files.

    Cached: parsing is not free and every decode of every message needs it. Callers must
    not mutate the returned dict.
    """
    schema = _load(_check(record_type))
    assert isinstance(schema, dict)
    return schema


_BY_FULL_NAME: dict[str, str] = {f"{AVRO_NAMESPACE}.Avro{rt}": rt for rt in SUPPORTED_RECORD_TYPES}


def record_type_from_writer_name(name: str) -> str | None:
    """Map a writer schema's full name back to a record type; None if it is not ours."""
    return _BY_FULL_NAME.get(name)
