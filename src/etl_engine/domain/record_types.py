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

Which types exist, and what each one is, comes from the registry (``registry.py``: one
``RecordTypeSpec`` per file in ``records/``); this module keeps the names other modules
import. ``SUPPORTED_RECORD_TYPES`` and ``TRAINING_CATEGORY`` are the shipped types, in their
fixed order; the functions also know a type added with ``registry.register``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastavro.schema import load_schema

from etl_engine.domain import registry
from etl_engine.domain.records.spec import RecordTypeSpec

AVRO_NAMESPACE = "io.github.hitoshura25.healthsyncapp.data.avro"

SUPPORTED_RECORD_TYPES: tuple[str, ...] = tuple(spec.name for spec in registry.SHIPPED)

TRAINING_CATEGORY: dict[str, str] = {spec.name: spec.category for spec in registry.SHIPPED}


def supported_record_types() -> tuple[str, ...]:
    """Every type known now: the shipped ones and any registered since, in order."""
    return registry.names()


def _check(record_type: str) -> RecordTypeSpec:
    """Fail loudly (KeyError) for a type we have no contract for."""
    return registry.get(record_type)


def full_name(record_type: str) -> str:
    """Avro full name the app writes for ``record_type`` (e.g. ``...avro.AvroStepsRecord``)."""
    return f"{AVRO_NAMESPACE}.Avro{_check(record_type).name}"


def is_interval(record_type: str) -> bool:
    """True for records with start/end times, False for single-instant records."""
    return _check(record_type).interval


def schema_dir() -> Path:
    """The reader schemas, shipped as package data (any install, not only the source tree).

    fastavro's ``load_schema`` resolves named types from sibling files, so it needs a real
    directory: ``as_file`` gives the package's own directory for every non-zip install.
    """
    with resources.as_file(resources.files("etl_engine") / "schemas") as path:
        return path


def schema_path(record_type: str) -> Path:
    """The ``.avsc`` file holding the reader schema of ``record_type``."""
    spec = _check(record_type)
    return (spec.schema_dir or schema_dir()) / spec.schema_file


# record type -> (the spec it was loaded for, parsed schema): a type registered again with
# another spec is loaded again.
_SCHEMAS: dict[str, tuple[RecordTypeSpec, Any]] = {}


def reader_schema(record_type: str) -> dict[str, Any]:
    """Parsed reader schema (named types expanded) for decoding the app's files.

    Cached: parsing is not free and every decode of every message needs it. Callers must
    not mutate the returned dict.
    """
    spec = _check(record_type)
    hit = _SCHEMAS.get(record_type)
    if hit is None or hit[0] is not spec:
        hit = _SCHEMAS[record_type] = (spec, load_schema(str(schema_path(record_type))))
    schema = hit[1]
    assert isinstance(schema, dict)
    return schema


_PREFIX = f"{AVRO_NAMESPACE}.Avro"


def record_type_from_writer_name(name: str) -> str | None:
    """Map a writer schema's full name back to a record type; None if it is not ours."""
    if not name.startswith(_PREFIX):
        return None
    spec = registry.find(name[len(_PREFIX):])
    return None if spec is None else spec.name
