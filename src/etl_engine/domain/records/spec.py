"""What the engine needs to know about one record type, in one value: ``RecordTypeSpec``.

Why: a record type used to be spread over five modules (its name and category, whether it
is an interval, its value checks, its chunk checks, its column store, its statistics and
its narrative). Each file ``records/<type>.py`` now ends with a ``SPEC``; the registry
(``domain/registry.py``) collects them, and validation, transform and narratives look a type
up there once per file. Adding a type is one file (and its reader schema).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from etl_engine.domain.checks import ChunkCheck, ValueCheck
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.wording import Stats

__all__ = ["ChunkCheck", "ColumnStore", "Narrator", "RecordStatistics", "RecordTypeSpec",
           "ValueCheck"]

STANDARD_CHUNK_RECORDS = 256


class ColumnStore(Protocol):
    """Where validation streams a long series (``stats/columns.py``), and what transform
    asks of it."""

    def extend(self, recs: list[Record]) -> None: ...

    def __len__(self) -> int: ...

    def bounds(self) -> tuple[int, int, date, date]: ...

    def origin_count(self) -> int: ...


RecordStatistics = Callable[[list[Record], DomainConfig], dict[str, Any]]
# Statistics from the type's own column store (the parameter is that store's class).
ColumnStatistics = Callable[[Any, DomainConfig], dict[str, Any]]
Narrator = Callable[[Stats, str], str]  # (statistics, "on March 3, 2024") -> the answer


@dataclass(frozen=True, slots=True)
class RecordTypeSpec:
    """One Health Connect record type: contract, rules, statistics and words.

    ``check`` runs per record (None: kept whole); ``clean``, when given, accepts a whole
    chunk at C speed exactly when ``check`` would keep every record of it unchanged (the
    fast path; None: record by record). ``incomplete`` names a completeness issue of a
    kept record (it cannot go with ``clean``, which would not count it). ``running_total``:
    the app may export a record while it is still going (a day's steps; never a sleep
    session). ``column_store`` and ``column_statistics`` come together: validation streams
    the valid records into the store, transform computes from it. ``instructions`` are the
    question's phrasings (``{period}`` is filled in). ``schema_dir`` None: the shipped
    ``schemas/``. ``order``: position in ``SUPPORTED_RECORD_TYPES``.
    """

    name: str
    category: str
    interval: bool
    schema_file: str
    check: ValueCheck
    statistics: RecordStatistics
    narrative: Narrator
    instructions: tuple[str, ...]
    clean: ChunkCheck | None = None
    chunk_records: int = STANDARD_CHUNK_RECORDS
    column_store: Callable[[], ColumnStore] | None = None
    column_statistics: ColumnStatistics | None = None
    incomplete: Callable[[Record], str | None] | None = None
    running_total: bool = True
    schema_dir: Path | None = None
    order: int = 1000

    def __post_init__(self) -> None:
        if (self.column_store is None) != (self.column_statistics is None):
            raise ValueError(f"{self.name}: column_store and column_statistics go together")
        if self.clean is not None and self.incomplete is not None:
            raise ValueError(f"{self.name}: a chunk check cannot count completeness issues")
        if self.chunk_records < 1 or not self.instructions:
            raise ValueError(f"{self.name}: chunk_records >= 1 and an instruction needed")
