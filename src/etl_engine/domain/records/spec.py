"""What the engine needs to know about one record type, in one value: ``RecordTypeSpec``.

Why: a record type used to be spread over five modules (its name and category, whether it
is an interval, its value checks, its chunk checks, its column store, its statistics and
its narrative). Each file ``records/<type>.py`` now ends with a ``SPEC``; the registry
(``domain/registry.py``) collects them, and validation, transform and narratives look a type
up there once per file. Adding a type is one file (and its reader schema): what its
statistics look like in the published JSON Schema (``StatisticsSchema``,
``domain/output_schema.py`` assembles the file) and how ``inspect --html`` draws it
(``Chart``: a kind ``ops/report_html.py`` knows how to draw) are declared there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from etl_engine.domain.checks import ChunkCheck, ValueCheck
from etl_engine.domain.model import DomainConfig, Record
from etl_engine.domain.wording import Stats

__all__ = ["CHART_KINDS", "Chart", "ChartKind", "ChunkCheck", "ColumnStore", "Narrator",
           "RecordStatistics", "RecordTypeSpec", "StatisticsSchema", "ValueCheck"]

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

ChartKind = Literal["glucose", "samples", "readings", "hypnogram", "hourly_bars"]
CHART_KINDS: tuple[str, ...] = get_args(ChartKind)


@dataclass(frozen=True, slots=True)
class Chart:
    """How ``etl-engine inspect --html`` draws the kept records of a type.

    Why here: the page (``ops/report_html.py``) knows how to draw a *kind* and names no
    record type, so a new type picks a kind and its words and colours in its own file. Kinds
    and what they read:

    - ``glucose``: the ``Readings`` column store on the consensus glucose range bands;
    - ``samples``: the samples of a ``Samples`` column store (heart rate), a line;
    - ``readings``: instant readings, from a ``Readings`` column store or else the kept
      records' ``value_field``, a line (with dots if ``dots``);
    - ``hypnogram``: a stage chart per session (records with ``stages``);
    - ``hourly_bars``: an ``Intervals`` column store as totals per local hour, or the
      statistics' ``daily_key`` totals per day when the records are longer than an hour.

    ``heading`` starts the figure's heading (the period follows); ``title`` is the
    drawing's own title (default: ``heading``); ``caption`` follows the count of points
    (``{count}`` is filled in); a line breaks at gaps over ``gap_minutes``.
    """

    kind: ChartKind
    heading: str
    title: str = ""
    unit: str = ""
    color: str = "#1b4f72"
    caption: str = "{count} readings (local time)"
    gap_minutes: float = 60.0
    value_field: str = ""
    daily_key: str = ""
    dots: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CHART_KINDS:
            raise ValueError(f"chart kind {self.kind!r}: one of {', '.join(CHART_KINDS)}")

    @property
    def drawing_title(self) -> str:
        """The drawing's title: ``title``, else the heading."""
        return self.title or self.heading


@dataclass(frozen=True, slots=True)
class StatisticsSchema:
    """The JSON Schema of a type's ``metadata.statistics``, for the published training-record
    schema (``domain/output_schema.py`` puts it under ``$defs/<name>`` and picks it by the
    type's category).

    Why on the spec: the file closes each statistics object (``additionalProperties``
    false), so the shape belongs next to the code that makes it. The fragment may ``$ref``
    the shared ``#/$defs/`` entries of ``output_schema.COMMON_DEFS`` (``localDate``,
    ``utcTimestamp``, ``dayDetail``, ``daySufficiency``); the keys the shared helpers make
    (day coverage, per-origin figures) come from ``domain/stats/schema.py``.
    """

    name: str
    schema: Mapping[str, Any] = field(hash=False)


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
    ``schemas/``. ``order``: position in ``SUPPORTED_RECORD_TYPES``. ``chart`` None: no
    drawing in ``inspect --html``; ``statistics_schema`` None: the published schema lets the
    type's statistics be any object.
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
    chart: Chart | None = None
    statistics_schema: StatisticsSchema | None = None

    def __post_init__(self) -> None:
        if (self.column_store is None) != (self.column_statistics is None):
            raise ValueError(f"{self.name}: column_store and column_statistics go together")
        if self.clean is not None and self.incomplete is not None:
            raise ValueError(f"{self.name}: a chunk check cannot count completeness issues")
        if self.chunk_records < 1 or not self.instructions:
            raise ValueError(f"{self.name}: chunk_records >= 1 and an instruction needed")
