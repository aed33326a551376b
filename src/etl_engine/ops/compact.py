"""Monthly compaction: one sorted JSONL journal per training category and month.

Reads the per-message objects ``training/{category}/{YYYY}/{MM}/{DD}/*.jsonl`` and writes
``{ETL_COMPACTED_PREFIX}{category}/{YYYY}/{MM}/health_journal_{YYYY}_{MM}.jsonl``
(``compacted/`` by default): outside ``training/``, so a reader of ``training/`` counts each
record once. Lines are sorted by (period start, record id, line), so the same inputs
give the same bytes. The per-message objects are left in place: they stay the exactly-once
record of each input.

Safe to run twice and concurrently. A journal says which inputs it covers, in its S3 user
metadata: ``inputs`` (count), ``inputs-sha256`` (digest of the sorted input keys),
``last-input`` and ``records``. A run lists the inputs; when the digest matches, the journal is
already complete and nothing is written. Otherwise it rebuilds the journal from every input
(never appends, so no record twice) and writes it with a precondition: ``If-None-Match: *``
for a new journal, ``If-Match: <etag read at the start>`` to replace one. Of two concurrent
runs only one write can succeed; the other re-reads and finds the journal complete, or
rebuilds. After a write the inputs are listed again, and inputs written during the run get
another round, so later writes are not left out (an input written after the run ends is
added by the next run: the digest no longer matches). S3 replaces an object atomically, so a
reader always sees one complete snapshot.

Later exports of the same day: the app exports a day while it is still going, so one day
can have a partial record (exported at 10 a.m.) and a later, complete one. Per subject,
record type and day, the journal keeps the record with the latest export time (then a
complete one over a partial one, then the larger record id); a record that wins none
of its days is left out, and each winner lists what it replaced in
``metadata.supersedes`` (record ids). A record that wins only some of its days stays,
and lists the others in ``metadata.superseded_days``: a reader summing days skips those.
Records without a ``subject_id`` are never merged: without it two people's days could not
be told apart.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from etl_engine import __version__
from etl_engine.adapters.storage import Storage
from etl_engine.domain import lineage as pseudonyms
from etl_engine.domain import registry
from etl_engine.domain.transform import GENERIC_CATEGORY
from etl_engine.observability.masking import upload_user
from etl_engine.ops import conditional
from etl_engine.settings import Settings

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
# Rounds per category: a write that lost to a concurrent run, or inputs written meanwhile,
# cost one more; a journal still contended after this many is reported, never half-written.
MAX_ROUNDS = 8


class JournalState(StrEnum):
    WRITTEN = "written"  # this run wrote (created or replaced) the journal
    UNCHANGED = "unchanged"  # the journal already covered exactly these inputs


class CompactionContended(RuntimeError):
    """Other runs kept replacing the journal (or inputs kept arriving): run it again."""


@dataclass(frozen=True, slots=True)
class CompactResult:
    category: str
    key: str
    records: int
    bytes: int
    superseded: int = 0  # records replaced by a later export of the same days
    inputs: int = 0  # per-input objects the journal covers
    state: JournalState = JournalState.WRITTEN


@dataclass(frozen=True, slots=True)
class _Coverage:
    """What an existing journal covers (its metadata) and which version it is (ETag)."""

    etag: str
    digest: str
    inputs: int
    records: int
    size: int


def month_parts(month: str) -> tuple[str, str]:
    """``YYYY-MM`` -> (year, month); ValueError for anything else (the whole text)."""
    found = _MONTH.fullmatch(month)
    if not found:
        raise ValueError(f"month must look like YYYY-MM, not {month!r}")
    return found.group(1), found.group(2)


def training_categories() -> list[str]:
    """Every category a record can have: the live registry's, and the generic one."""
    return sorted({*(spec.category for spec in registry.SPECS.values()), GENERIC_CATEGORY})


def journal_key(settings: Settings, category: str, year: str, month: str) -> str:
    return (f"{settings.compacted_prefix}{category}/{year}/{month}/"
            f"health_journal_{year}_{month}.jsonl")


def legacy_journal_key(settings: Settings, category: str, year: str, month: str) -> str:
    """Where journals were written before ETL_COMPACTED_PREFIX: under training/, where a
    recursive reader counts their records a second time (delete them)."""
    return (f"{settings.training_prefix}{category}/{year}/{month}/"
            f"health_journal_{year}_{month}.jsonl")


def inputs_digest(keys: list[str]) -> str:
    """SHA-256 of the sorted input keys: equal digests, same inputs (they are write-once)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _sort_key(line: bytes) -> tuple[str, str, bytes]:
    try:
        meta = orjson.loads(line).get("metadata", {})
    except orjson.JSONDecodeError:
        meta = {}
    return (str(meta.get("period_start", "")), _record_id(meta), line)


def _record_id(meta: dict[str, Any]) -> str:
    """The input's id: ``record_id``; records made before pseudonymous lineage carry the
    idempotency key instead."""
    return str(meta.get("record_id") or meta.get("idempotency_key") or "")


def _days(meta: dict[str, Any]) -> list[str]:
    """The local days a record speaks for: its per-day statistics, else its period date."""
    stats = meta.get("statistics")
    stats = stats if isinstance(stats, dict) else {}
    for key in ("days_detail", "origin_by_day"):
        days = stats.get(key)
        if isinstance(days, dict) and days:
            return sorted(str(d) for d in days)
    return [str(meta.get("period_date", ""))]


def _rank(meta: dict[str, Any]) -> tuple[str, bool, str]:
    return (str(meta.get("export_time") or ""), not meta.get("partial", False),
            _record_id(meta))


_DayKey = tuple[str, str, str]  # (subject, record type, local day)


def _day_keys(meta: dict[str, Any]) -> list[_DayKey]:
    """Days are only compared within one subject and record type (callers check subject)."""
    subject, record_type = str(meta["subject_id"]), str(meta.get("record_type", ""))
    return [(subject, record_type, day) for day in _days(meta)]


def _line_metadata(lines: list[bytes]) -> list[dict[str, Any]]:
    """Each line's metadata; a line that is not a JSON object has none (it is kept as is)."""
    metas = []
    for line in lines:
        try:
            meta = orjson.loads(line).get("metadata", {})
        except orjson.JSONDecodeError:
            meta = {}
        metas.append(meta if isinstance(meta, dict) else {})
    return metas


def _day_winners(metas: list[dict[str, Any]]) -> dict[_DayKey, int]:
    """For each subject's day, the index of the record that speaks for it (best rank)."""
    winners: dict[_DayKey, int] = {}
    for i, meta in enumerate(metas):
        if not meta.get("subject_id"):
            continue
        for key in _day_keys(meta):
            if key not in winners or _rank(meta) > _rank(metas[winners[key]]):
                winners[key] = i
    return winners


def _supersedes(metas: list[dict[str, Any]], winners: dict[_DayKey, int],
                dropped: set[int]) -> dict[int, set[str]]:
    """Winner index -> record ids of the dropped records it replaced."""
    replaced: dict[int, set[str]] = defaultdict(set)
    for i in dropped:
        meta = metas[i]
        for key in _day_keys(meta):
            replaced[winners[key]].add(_record_id(meta))
    return replaced


def latest_exports(lines: list[bytes]) -> tuple[list[bytes], int]:
    """The lines to keep (see the module docstring) and how many were superseded."""
    metas = _line_metadata(lines)
    winners = _day_winners(metas)
    won = set(winners.values())
    dropped = {i for i, m in enumerate(metas) if m.get("subject_id") and i not in won}
    replaced = _supersedes(metas, winners, dropped)
    lost = _days_lost(metas, winners, dropped)
    out = []
    for i, line in enumerate(lines):
        if i in dropped:
            continue
        if i in replaced or i in lost:
            out.append(_annotated(line, replaced.get(i), lost.get(i)))
        else:
            out.append(line)
    return out, len(dropped)


def _annotated(line: bytes, supersedes: set[str] | None, lost_days: list[str] | None) -> bytes:
    """The line with what it replaced added; only such lines are re-serialised, the others
    keep their bytes."""
    record = orjson.loads(line)
    if supersedes is not None:
        record["metadata"]["supersedes"] = sorted(supersedes)
    if lost_days is not None:
        record["metadata"]["superseded_days"] = lost_days
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _days_lost(metas: list[dict[str, Any]], winners: dict[_DayKey, int],
               dropped: set[int]) -> dict[int, list[str]]:
    """Kept records' days that a later export in the journal speaks for instead: a record
    spanning several days stays for the days it wins, and says which ones it does not."""
    lost: dict[int, list[str]] = {}
    for i, meta in enumerate(metas):
        if i in dropped or not meta.get("subject_id"):
            continue
        days = [key[2] for key in _day_keys(meta) if winners[key] != i]
        if days:
            lost[i] = days
    return lost


def _input_keys(storage: Storage, settings: Settings, prefix: str) -> list[str]:
    """The per-input records of a month: ``{prefix}{DD}/{name}.jsonl``, sorted."""
    depth = prefix.count("/") + 1
    return sorted(k for k in storage.list_keys(settings.bucket, prefix)
                  if k.endswith(".jsonl") and k.count("/") == depth)


def _coverage(storage: Storage, settings: Settings, key: str) -> _Coverage | None:
    found = conditional.head(storage, settings.bucket, key)
    if found is None:
        return None
    meta = found.metadata
    return _Coverage(found.etag, meta.get("inputs-sha256", ""), _int(meta.get("inputs")),
                     _int(meta.get("records")), found.size)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


LEGACY_LINEAGE = ("bucket", "key", "message_id", "correlation_id", "idempotency_key",
                  "upload_timestamp_utc")


def deidentified(line: bytes, lineage_key: bytes) -> bytes:
    """A record written before pseudonymous lineage (0.1.x) with its raw lineage replaced
    by the pseudonyms a 0.2 worker would give it, so no journal carries a key or an id;
    the user id comes from the upload key's file name (the upload service's layout),
    else the record has no subject (and is never merged). Other lines keep their bytes."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    meta = record.get("metadata") if isinstance(record, dict) else None
    if not isinstance(meta, dict) or not any(f in meta for f in LEGACY_LINEAGE):
        return line
    raw = {f: str(meta.pop(f)) for f in LEGACY_LINEAGE if meta.get(f) is not None}
    user = upload_user(raw.get("key", ""))
    meta["source_id"] = pseudonyms.source_id(lineage_key, raw.get("bucket", ""),
                                             raw.get("key", ""))
    meta["record_id"] = pseudonyms.record_id(lineage_key, raw.get("idempotency_key", ""))
    meta["subject_id"] = pseudonyms.subject_id(lineage_key, user) if user else None
    meta["lineage_key_id"] = pseudonyms.key_id(lineage_key)
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _build(storage: Storage, settings: Settings, inputs: list[str]) -> tuple[bytes, int, int]:
    """(journal body, records kept, records superseded) from every input."""
    lines: list[bytes] = []
    lineage_key = settings.lineage_key.get_secret_value().encode()
    for key in inputs:
        body = storage.get(settings.bucket, key)
        lines.extend(deidentified(ln, lineage_key) for ln in body.splitlines() if ln.strip())
    kept, superseded = latest_exports(lines)
    merged = sorted(kept, key=_sort_key)
    return b"\n".join(merged) + b"\n", len(merged), superseded


def compact_category(storage: Storage, settings: Settings, category: str, year: str,
                     month: str) -> CompactResult | None:
    """One category's journal for a month (see the module docstring); None: no inputs."""
    prefix = f"{settings.training_prefix}{category}/{year}/{month}/"
    target = journal_key(settings, category, year, month)
    written: CompactResult | None = None
    for _ in range(MAX_ROUNDS):
        current = _coverage(storage, settings, target)
        inputs = _input_keys(storage, settings, prefix)
        if not inputs:
            return written
        digest = inputs_digest(inputs)
        if current is not None and current.digest == digest:
            return written or CompactResult(category, target, current.records, current.size,
                                            inputs=current.inputs,
                                            state=JournalState.UNCHANGED)
        body, records, superseded = _build(storage, settings, inputs)
        meta = {"inputs": str(len(inputs)), "inputs-sha256": digest,
                "last-input": inputs[-1], "records": str(records),
                "compacted-by": f"etl-engine-{__version__}"}
        etag = conditional.put(storage, settings.bucket, target, body,
                               replaces=current.etag if current else None,
                               content_type="application/x-ndjson", metadata=meta)
        if etag is not None:
            written = CompactResult(category, target, records, len(body), superseded,
                                    inputs=len(inputs))
        # Either way, look again: inputs written meanwhile, or the run that won the race.
    raise CompactionContended(f"{target}: still changing after {MAX_ROUNDS} rounds; run again")


def compact_month(storage: Storage, settings: Settings, month: str) -> list[CompactResult]:
    year, mon = month_parts(month)
    out: list[CompactResult] = []
    for category in training_categories():
        result = compact_category(storage, settings, category, year, mon)
        if result is not None:
            out.append(result)
    return out


def legacy_journals(storage: Storage, settings: Settings, month: str) -> list[str]:
    """Journals an older version left under training/ for ``month`` (to be deleted)."""
    year, mon = month_parts(month)
    keys = (legacy_journal_key(settings, c, year, mon) for c in training_categories())
    return [k for k in keys if storage.exists(settings.bucket, k)]
