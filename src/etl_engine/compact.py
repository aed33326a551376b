"""Monthly compaction: one sorted JSONL journal per training category and month.

Reads the per-message objects ``training/{category}/{YYYY}/{MM}/{DD}/*.jsonl`` and writes
``training/{category}/{YYYY}/{MM}/health_journal_{YYYY}_{MM}.jsonl``. Lines are sorted by
(period start, idempotency key, line), so running it twice writes the same bytes. The
per-message objects are left in place: they stay the exactly-once record of each input.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import orjson

from etl_engine.record_types import TRAINING_CATEGORY
from etl_engine.settings import Settings
from etl_engine.storage import Storage

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class CompactResult:
    category: str
    key: str
    records: int
    bytes: int


def journal_key(settings: Settings, category: str, year: str, month: str) -> str:
    return (f"{settings.training_prefix}{category}/{year}/{month}/"
            f"health_journal_{year}_{month}.jsonl")


def _sort_key(line: bytes) -> tuple[str, str, bytes]:
    try:
        meta = orjson.loads(line).get("metadata", {})
    except orjson.JSONDecodeError:
        meta = {}
    return (str(meta.get("period_start", "")), str(meta.get("idempotency_key", "")), line)


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
        merged = sorted((ln for group in lines.values() for ln in group), key=_sort_key)
        body = b"\n".join(merged) + b"\n"
        storage.put(settings.bucket, target, body, content_type="application/x-ndjson")
        out.append(CompactResult(category, target, len(merged), len(body)))
    return out
