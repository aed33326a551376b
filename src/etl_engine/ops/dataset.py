"""The training data as a dataset: a card per month, and a local pull with leak-free splits.

``etl-engine compact`` (and ``etl-engine dataset card``) writes the card of a month next to
the monthly journals: ``{ETL_COMPACTED_PREFIX}dataset_card_{YYYY}_{MM}.md`` for people
(Hugging Face's README layout: YAML front matter, then prose) and ``.json`` for programs.
It is computed from the journals, so it describes exactly what a reader downloads.

``etl-engine dataset pull`` downloads journals to a folder an ML engineer loads with
pandas or Hugging Face ``datasets`` (docs/dataset.md). ``--split 80/10/10 --by subject``
puts each person in one split, decided by a hash of their ``subject_id`` alone: the same
person lands in the same split every month and whoever else is in the data, so a model is
never tested on someone it was trained on.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from etl_engine import __version__
from etl_engine.adapters.storage import Storage
from etl_engine.domain import output_schema
from etl_engine.domain.model import DomainConfig
from etl_engine.domain.transform import settings_digest
from etl_engine.ops.compact import (
    LEGACY_LINEAGE,
    journal_key,
    month_parts,
    training_categories,
)
from etl_engine.ops.dataset_card import render
from etl_engine.settings import Settings

SPLIT_NAMES = ("train", "validation", "test")
DEFINITIONS = ("docs/clinical.md", "docs/quality-score.md", "docs/dataset.md")
QUALITY_BINS = 10


def months_between(first: str, last: str) -> list[str]:
    """``first`` to ``last`` inclusive (YYYY-MM)."""
    (y, m), (y2, m2) = (tuple(map(int, month_parts(x))) for x in (first, last))
    out = []
    while (y, m) <= (y2, m2):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    if not out:
        raise ValueError(f"--to {last} is before --month {first}")
    return out


def months_with_records(storage: Storage, settings: Settings) -> list[str]:
    """The months that have per-input records under ``training/`` (a full listing)."""
    found = set()
    for key in storage.list_keys(settings.bucket, settings.training_prefix):
        parts = key[len(settings.training_prefix):].split("/")
        if len(parts) == 5 and parts[4].endswith(".jsonl"):
            found.add(f"{parts[1]}-{parts[2]}")
    return sorted(m for m in found if _is_month(m))


def _is_month(text: str) -> bool:
    try:
        month_parts(text)
    except ValueError:
        return False
    return True


def card_key(settings: Settings, month: str, ext: str) -> str:
    year, mon = month_parts(month)
    return f"{settings.compacted_prefix}dataset_card_{year}_{mon}.{ext}"


def record_schema() -> dict[str, Any]:
    """The training record's JSON Schema, built from the live registry: the shipped file
    for the shipped types (a test holds them equal), and a plugin's type included."""
    return output_schema.training_record_schema()


# --- reading journals ------------------------------------------------------------------------
def journal_lines(storage: Storage, settings: Settings, key: str) -> Iterator[bytes]:
    """One journal's lines, streamed (a month can be larger than memory should hold)."""
    body = storage.client.get_object(Bucket=settings.bucket, Key=key)["Body"]
    try:
        for line in body.iter_lines():
            if line.strip():
                yield line
    finally:
        body.close()


def month_journals(storage: Storage, settings: Settings, month: str,
                   only: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(category, key) of the month's journals that exist (``only``: these categories)."""
    year, mon = month_parts(month)
    wanted = set(only) or set(training_categories())
    found = []
    for category in sorted(wanted):
        key = journal_key(settings, category, year, mon)
        if storage.exists(settings.bucket, key):
            found.append((category, key))
    return found


def line_metadata(line: bytes) -> dict[str, Any]:
    """A journal line's metadata; {} for a line that is not a record (kept as it is)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    meta = record.get("metadata") if isinstance(record, dict) else None
    return meta if isinstance(meta, dict) else {}


# --- the card --------------------------------------------------------------------------------
@dataclass
class _CategoryTally:
    records: int = 0
    subjects: set[str] = field(default_factory=set)
    record_types: Counter[str] = field(default_factory=Counter)
    quality: list[float] = field(default_factory=list)
    partial: int = 0
    superseded_days: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    sufficiency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    versions: Counter[str] = field(default_factory=Counter)
    digests: Counter[str] = field(default_factory=Counter)
    key_ids: Counter[str] = field(default_factory=Counter)
    raw_lineage: int = 0  # records that name their source (ETL_FULL_LINEAGE, or pre-0.2)
    files: list[dict[str, Any]] = field(default_factory=list)

    def add(self, meta: dict[str, Any]) -> None:
        self.records += 1
        if meta.get("subject_id"):
            self.subjects.add(str(meta["subject_id"]))
        self.record_types[str(meta.get("record_type"))] += 1
        if isinstance(meta.get("quality_score"), int | float):
            self.quality.append(float(meta["quality_score"]))
        self.partial += bool(meta.get("partial"))
        self.superseded_days += bool(meta.get("superseded_days"))
        self.warnings.update(str(w) for w in meta.get("warnings") or ())
        self.versions[str(meta.get("processor_version"))] += 1
        self.digests[str(meta.get("settings_digest") or "unknown")] += 1
        self.key_ids[str(meta.get("lineage_key_id") or "unknown")] += 1
        self.raw_lineage += bool("lineage" in meta or any(f in meta for f in LEGACY_LINEAGE))
        stats = meta.get("statistics")
        stats = stats if isinstance(stats, dict) else {}
        self.flags.update(k for k, v in stats.items() if v is True)
        suff = stats.get("sufficiency")
        for name, value in (suff.items() if isinstance(suff, dict) else ()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.sufficiency[name].append(float(value))
            elif value is True:
                self.flags[f"sufficiency.{name}"] += 1


def _quantiles(values: list[float]) -> dict[str, Any]:
    """Deciles by linear interpolation between ranks (``statistics``' inclusive method)."""
    if not values:
        return {}
    ordered = sorted(values)
    deciles = (statistics.quantiles(ordered, n=10, method="inclusive")
               if len(ordered) > 1 else [ordered[0]] * 9)
    bins = Counter(min(int(v * QUALITY_BINS), QUALITY_BINS - 1) for v in ordered)
    return {"min": ordered[0], "p10": round(deciles[0], 4),
            "median": round(statistics.median(ordered), 4), "p90": round(deciles[8], 4),
            "max": ordered[-1],
            "histogram": [{"from": b / QUALITY_BINS, "to": (b + 1) / QUALITY_BINS,
                           "records": bins[b]} for b in range(QUALITY_BINS) if bins[b]]}


def _summary(t: _CategoryTally) -> dict[str, Any]:
    return {
        "records": t.records, "subjects": len(t.subjects),
        "record_types": dict(sorted(t.record_types.items())),
        "quality_score": _quantiles(t.quality),
        "partial_records": t.partial, "records_with_superseded_days": t.superseded_days,
        "records_with_raw_lineage": t.raw_lineage,
        "warnings": dict(sorted(t.warnings.items())),
        "flags_true": dict(sorted(t.flags.items())),
        "sufficiency": {k: {"min": min(v), "median": round(statistics.median(v), 2),
                            "max": max(v)} for k, v in sorted(t.sufficiency.items())},
        "files": t.files,
    }


def build_card(storage: Storage, settings: Settings, month: str) -> dict[str, Any]:
    """The month's card (JSON form), read from its journals."""
    tallies: dict[str, _CategoryTally] = {}
    for category, key in month_journals(storage, settings, month):
        tally = tallies.setdefault(category, _CategoryTally())
        count = 0
        for line in journal_lines(storage, settings, key):
            tally.add(line_metadata(line))
            count += 1
        tally.files.append({"key": key, "records": count})
    versions: Counter[str] = Counter()
    digests: Counter[str] = Counter()
    key_ids: Counter[str] = Counter()
    for t in tallies.values():
        versions.update(t.versions)
        digests.update(t.digests)
        key_ids.update(t.key_ids)
    return {
        "name": "etl-narrative-engine training records", "month": month,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generated_by": f"etl-engine {__version__}",
        "records": sum(t.records for t in tallies.values()),
        "categories": {c: _summary(t) for c, t in sorted(tallies.items())},
        "processor_versions": dict(sorted(versions.items())),
        "settings": _settings_section(settings, digests),
        "definitions": list(DEFINITIONS),
        "deidentification": _deidentification(tallies, key_ids),
        "schema": record_schema(),
    }


def _settings_section(settings: Settings, digests: Counter[str]) -> list[dict[str, Any]]:
    """Each settings digest in the data; the values only for the one this tool runs with
    (a digest is one-way: other values are not known here, only that they differ)."""
    config = DomainConfig(quality_threshold=settings.quality_threshold,
                          max_future_skew_ms=settings.max_future_skew_s * 1000,
                          origin_priority=tuple(settings.origin_priority_list))
    mine = settings_digest(config)
    values = {"ETL_QUALITY_THRESHOLD": settings.quality_threshold,
              "ETL_MAX_FUTURE_SKEW_S": settings.max_future_skew_s,
              "ETL_ORIGIN_PRIORITY": list(config.origin_priority)}
    return [{"settings_digest": d, "records": n, "values": values if d == mine else None}
            for d, n in sorted(digests.items())]


DEIDENTIFICATION = {
    "method": (
        "No bucket, object key, user id, message id, correlation id or idempotency key is "
        "stored in a record. Lineage is pseudonymous: source_id (the source file), "
        "record_id (the input; also the object's file name) and subject_id (the person) "
        "are HMAC-SHA256 values under a lineage key that only the operators hold "
        "(ETL_LINEAGE_KEY), cut to 128 bits. Without the key they can be neither reversed "
        "nor confirmed by hashing a guessed id. Operators map them back with "
        "`etl-engine lineage ID`, from outcome records the ML team cannot read. "
        "Instructions and narratives are built from numbers and fixed phrases only; no "
        "message field reaches them (tested on the realistic corpus)."),
    "limits": [
        "Pseudonymous is not anonymous: subject_id links all of a person's records, which "
        "is what per-person splits need, and also what a re-identification attack needs.",
        "Dates, times of day and exact values (a night's bed time, a day's step count, a "
        "glucose trace) can re-identify a person in a small population, or anyone whose "
        "data an attacker has seen elsewhere (a shared fitness app, a clinic visit).",
        "Device and app names in statistics (data origins) narrow a population further.",
        "Whoever holds ETL_LINEAGE_KEY can recompute every pseudonym from user ids and "
        "object keys: keep it with the other secrets, never with the data.",
        "Records made with ETL_FULL_LINEAGE=true carry the raw lineage under "
        "metadata.lineage: such data must not leave the private deployment.",
    ],
}


def _deidentification(tallies: dict[str, _CategoryTally], key_ids: Counter[str]
                      ) -> dict[str, Any]:
    """The method and its limits, and what this month's records actually are: records that
    name their source, or pseudonyms made under more than one key, are said up front."""
    raw = sum(t.raw_lineage for t in tallies.values())
    notes = []
    if raw:
        notes.append(f"{raw} records carry raw lineage (metadata.lineage, from "
                     "ETL_FULL_LINEAGE=true): they name the person; do not share them.")
    if len(key_ids) > 1:
        notes.append(f"Pseudonyms were made under {len(key_ids)} lineage keys "
                     f"({', '.join(sorted(key_ids))}): one person can have two subject_ids "
                     "here, so per-person splits can leak across them.")
    return {**DEIDENTIFICATION, "records_with_raw_lineage": raw,
            "lineage_key_ids": dict(sorted(key_ids.items())), "notes": notes}


def render_markdown(card: dict[str, Any], settings: Settings) -> str:
    """The card for people: front matter a dataset hub reads, then the tables."""
    return render(card, compacted_prefix=settings.compacted_prefix)


def write_card(storage: Storage, settings: Settings, month: str) -> dict[str, Any] | None:
    """Build and store the month's card next to its journals; None when it has none."""
    card = build_card(storage, settings, month)
    if not card["categories"]:
        return None
    storage.put(settings.bucket, card_key(settings, month, "json"),
                orjson.dumps(card, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
                content_type="application/json")
    storage.put(settings.bucket, card_key(settings, month, "md"),
                render_markdown(card, settings).encode(),
                content_type="text/markdown; charset=utf-8")
    return card


# --- splits ----------------------------------------------------------------------------------
def parse_split(text: str) -> tuple[int, ...]:
    """``80/10/10`` -> (80, 10, 10): two or three whole percentages that add up to 100."""
    try:
        parts = tuple(int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--split must look like 80/10/10, not {text!r}") from None
    if len(parts) not in (2, 3) or sum(parts) != 100 or min(parts) < 0:
        raise ValueError(f"--split needs 2 or 3 percentages adding up to 100, not {text!r}")
    return parts


def split_of(unit: str, shares: tuple[int, ...], seed: str = "") -> str:
    """The split a subject (or record) belongs to: from its own id only, so it never moves
    when other people's data is added."""
    point = int.from_bytes(hashlib.sha256(f"{seed}\x00{unit}".encode()).digest()[:8]) % 10_000
    edge = 0
    for name, share in zip(SPLIT_NAMES, shares, strict=False):
        edge += share * 100
        if point < edge:
            return name
    return SPLIT_NAMES[len(shares) - 1]


def split_unit(meta: dict[str, Any], by: str) -> str:
    """The id a record's split is decided by: its subject (else its record id: a record
    without a subject cannot leak a person across splits)."""
    if by == "subject" and meta.get("subject_id"):
        return "subject:" + str(meta["subject_id"])
    return "record:" + str(meta.get("record_id") or meta.get("source_id") or "")


# --- pull ------------------------------------------------------------------------------------
@dataclass
class PullReport:
    out: Path
    files: dict[str, int] = field(default_factory=dict)  # written path -> records
    sources: list[str] = field(default_factory=list)
    months_without_journals: list[str] = field(default_factory=list)
    subjects_per_split: dict[str, int] = field(default_factory=dict)
    lineage_key_ids: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "files": self.files, "sources": self.sources,
                "months_without_journals": self.months_without_journals,
                "subjects_per_split": self.subjects_per_split,
                "lineage_key_ids": self.lineage_key_ids, "cards": self.cards}


class Writer:
    """JSONL files under the output folder: ``{category}.jsonl``, or with splits
    ``{split}/{category}.jsonl``. What an earlier pull left there in that layout is removed
    first: a stale file from another seed or split would put people in two splits."""

    def __init__(self, out: Path, *, flat: bool = False) -> None:
        self.out = out
        self.flat = flat
        self._files: dict[Path, Any] = {}
        self._counts: Counter[Path] = Counter()

    def __enter__(self) -> Writer:
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, *(self.out / name for name in SPLIT_NAMES)):
            for old in folder.glob("*.jsonl"):
                old.unlink()
        for old in (*self.out.glob("dataset_card_*.md"), self.out / "manifest.json"):
            old.unlink(missing_ok=True)
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._files.values():
            handle.close()

    def write(self, part: str | None, category: str, line: bytes) -> None:
        path = (self.out / part if part else self.out) / f"{category}.jsonl"
        if path not in self._files:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._files[path] = path.open("wb")
        if self.flat:
            line = flat_row(line)
        self._files[path].write(line.rstrip(b"\r\n") + b"\n")
        self._counts[path] += 1

    def counts(self) -> dict[str, int]:
        return {str(p.relative_to(self.out)): n for p, n in sorted(self._counts.items())}


# Columns of a flat row besides instruction and output: never null, one type each.
FLAT_COLUMNS: dict[str, Any] = {"record_id": "", "subject_id": "", "training_category": "",
                                "record_type": "", "period_date": "", "quality_score": 0.0,
                                "partial": False}


def flat_row(line: bytes) -> bytes:
    """One record as a row of fixed columns, for Arrow (Hugging Face ``datasets``): the key
    metadata fields as columns that are never null, and the whole metadata as a JSON
    string. Arrow needs one type per column across files, which nested metadata cannot
    give: ``statistics`` differs by category and is keyed by date, ``issue_counts`` by
    reason, and some fields exist on compacted records only."""
    try:
        record = orjson.loads(line)
        meta = record["metadata"]
        row = {"instruction": str(record["instruction"]), "output": str(record["output"])}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return line
    for name, empty in FLAT_COLUMNS.items():
        value = meta.get(name)
        row[name] = type(empty)(value) if value is not None else empty
    row["metadata"] = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode()
    return orjson.dumps(row)


@dataclass(frozen=True, slots=True)
class PullRequest:
    months: list[str]
    out: Path
    categories: tuple[str, ...] = ()
    split: tuple[int, ...] | None = None
    by: str = "subject"
    seed: str = ""
    flat: bool = False


def pull(storage: Storage, settings: Settings, req: PullRequest) -> PullReport:
    """Download the months' journals into ``req.out`` (see the module docstring)."""
    report = PullReport(req.out)
    subjects: dict[str, set[str]] = defaultdict(set)
    key_ids: set[str] = set()
    with Writer(req.out, flat=req.flat) as writer:
        for month in req.months:
            journals = month_journals(storage, settings, month, req.categories)
            if not journals:
                report.months_without_journals.append(month)
            for category, key in journals:
                report.sources.append(key)
                for line in journal_lines(storage, settings, key):
                    meta = line_metadata(line)
                    key_ids.add(str(meta.get("lineage_key_id") or "unknown"))
                    part = (split_of(split_unit(meta, req.by), req.split, req.seed)
                            if req.split else None)
                    writer.write(part, category, line)
                    if part and meta.get("subject_id"):
                        subjects[part].add(str(meta["subject_id"]))
            report.cards += _pull_card(storage, settings, month, req.out) if journals else []
        report.files = writer.counts()
    report.subjects_per_split = {k: len(v) for k, v in sorted(subjects.items())}
    report.lineage_key_ids = sorted(key_ids)
    return report


def _pull_card(storage: Storage, settings: Settings, month: str, out: Path) -> list[str]:
    """The month's card beside the data: the stored one, else one built now and written
    only here (a reader of the journals need not be allowed to write next to them)."""
    key = card_key(settings, month, "md")
    target = out / f"dataset_card_{month.replace('-', '_')}.md"
    if storage.exists(settings.bucket, key):
        target.write_bytes(storage.get(settings.bucket, key))
    else:
        target.write_text(render_markdown(build_card(storage, settings, month), settings))
    return [str(target)]
