"""The sample-folder layout ``load-samples`` reads: ``{dir}/{RecordType}/*.avro``.

Why here and not with the generator: loading samples is an operator task that the
production image runs (compose's loader); writing them is development tooling.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES


def bundled_samples() -> Path:
    """The bundled sample exports (package data, so any install finds them)."""
    with resources.as_file(resources.files("etl_engine") / "samples") as path:
        return path


def iter_sample_files(directory: Path) -> list[tuple[str, Path]]:
    """(record type, path) for every good sample; the type is the parent directory's name."""
    directory = Path(directory)
    return [
        (rt, path)
        for rt in SUPPORTED_RECORD_TYPES
        for path in sorted((directory / rt).glob("*.avro"))
    ]
