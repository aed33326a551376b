"""Monthly compaction: one sorted JSONL journal per training category and month.

Reads the per-message objects ``training/{category}/{YYYY}/{MM}/{DD}/*.jsonl`` and writes
``training/{category}/{YYYY}/{MM}/health_journal_{YYYY}_{MM}.jsonl``. Lines are sorted by
(period start, idempotency key, line), so running it twice writes the same bytes. The
per-message objects are left in place: they stay the exactly-once record of each input.

Later exports of the same day: the app exports a day while it is still going, so one day
can have a partial record (exported at 10 a.m.) and a later, complete one. Per subject,
record type and day, the journal keeps the record with the latest export time (then a
complete one over a partial one, then the larger idempotency key); a record that wins none
of its days is left out, and each winner lists what it replaced in
``metadata.supersedes`` (idempotency keys). A record that wins only some of its days stays,
and lists the others in ``metadata.superseded_days``: a reader summing days skips those.
Records without a ``subject_id`` are never merged: without it two people's days could not
be told apart.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from etl_engine.adapters.storage import Storage
from etl_engine.domain.record_types import TRAINING_CATEGORY
from etl_engine.settings import Settings

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class CompactResult:
    category: str
    key: str
    records: int
    bytes: int
    superseded: int = 0  # records replaced by a later export of the same days


def journal_key(settings: Settings, category: str, year: str, month: str) -> str:
    return (f"{settings.training_prefix}{category}/{year}/{month}/"
            f"health_journal_{year}_{month}.jsonl")


def _sort_key(line: bytes) -> tuple[str, str, bytes]:
    try:
        meta = orjson.loads(line).get("metadata", {})
    except orjson.JSONDecodeError:
        meta = {}
    return (str(meta.get("period_start", "")), str(meta.get("idempotency_key", "")), line)


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
            str(meta.get("idempotency_key", "")))


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
    """Winner index -> idempotency keys of the dropped records it replaced."""
    replaced: dict[int, set[str]] = defaultdict(set)
    for i in dropped:
        meta = metas[i]
        for key in _day_keys(meta):
            replaced[winners[key]].add(str(meta.get("idempotency_key", "")))
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


def compact_month(storage: Storage, settings: Settings, month: str) -> list[CompactResult]:
    match = _MONTH.match(month)
    if not match:
        raise ValueError("month must look like YYYY-MM")
    year, mon = match.groups()
    out: list[CompactResult] = []
    for category in sorted(set(TRAINING_CATEGORY.values())):
        prefix = f"{settings.training_prefix}{category}/{year}/{mon}/"
        target = journal_key(settings, category, year, mon)
        lines: dict[str, list[bytes]] = defaultdict(list)
        for key in storage.list_keys(settings.bucket, prefix):
            if key == target or not key.endswith(".jsonl") or key.count("/") != prefix.count(
                    "/") + 1:
                continue
            body = storage.get(settings.bucket, key)
            lines[key] = [ln for ln in body.splitlines() if ln.strip()]
        if not lines:
            continue
        kept, superseded = latest_exports([ln for group in lines.values() for ln in group])
        merged = sorted(kept, key=_sort_key)
        body = b"\n".join(merged) + b"\n"
        storage.put(settings.bucket, target, body, content_type="application/x-ndjson")
        out.append(CompactResult(category, target, len(merged), len(body), superseded))
    return out
