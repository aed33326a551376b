"""``etl-engine lineage ID``: which input a training record came from (operators only).

Training records name their input only by keyed pseudonyms (``source_id``, ``record_id``;
domain/lineage.py). The mapping back lives in the outcome records under
``ETL_OUTCOME_PREFIX``, which the operators' S3 policy can read and the ML team's cannot:
every outcome record stores the ``source_id`` and ``record_id`` it gave its input, next to
the bucket, object key and ids. So the answer does not depend on the lineage key this tool
runs with (records from before a key rotation are found too); a record written before
pseudonyms existed is matched by recomputing its ids under this tool's key.

Outcome records are named by idempotency key, not by pseudonym, so a lookup reads them all
(in parallel): seconds for thousands of inputs, minutes for millions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from etl_engine.adapters.storage import Storage
from etl_engine.domain import lineage as pseudonyms
from etl_engine.errors import PermanentError
from etl_engine.ops import display
from etl_engine.settings import Settings

_RESULT_NAME = re.compile(r"(?:^|/)([0-9a-f]{32})\.jsonl$")
READERS = 16


class NotAnId(ValueError):
    """The argument is neither a pseudonym nor a result's object key."""


@dataclass(frozen=True, slots=True)
class Match:
    matched: str  # "source_id" or "record_id"
    record: dict[str, Any]  # the outcome record, without the result body
    outcome_key: str


def parse_id(text: str) -> str:
    """A source_id or record_id, or a result's object key (its file name is the record id)."""
    text = text.strip()
    if pseudonyms.PSEUDONYM.match(text):
        return text
    found = _RESULT_NAME.search(text)
    if found:
        return found.group(1)
    raise NotAnId("give a source_id or record_id (32 hex digits) or a result's object key "
                  "(training/.../<record_id>.jsonl)")


def _ids(record: dict[str, Any], key: bytes) -> tuple[str, str]:
    """The record's (source_id, record_id): as stored, else recomputed under ``key``."""
    binding = _dict(record.get("binding"))
    source = record.get("source_id") or pseudonyms.source_id(
        key, str(binding.get("bucket", "")), str(binding.get("key", "")))
    rid = record.get("record_id") or pseudonyms.record_id(
        key, str(record.get("idempotency_key", "")))
    return str(source), str(rid)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _read(storage: Storage, settings: Settings, key: str) -> dict[str, Any] | None:
    """One outcome record; None if it is gone (a release deleted it meanwhile) or is not
    a record. Any other failure (access denied, the store down) is raised: "not found"
    must mean not found."""
    try:
        record = orjson.loads(storage.get(settings.bucket, key))
    except orjson.JSONDecodeError:
        return None
    except PermanentError as exc:
        if exc.reason == "object_missing":
            return None
        raise
    return record if isinstance(record, dict) else None


def _outcome_keys(storage: Storage, settings: Settings) -> Iterator[str]:
    return (k for k in storage.list_keys(settings.bucket, settings.outcome_prefix)
            if k.endswith(".json"))


def find(storage: Storage, settings: Settings, ident: str) -> list[Match]:
    """Every outcome record whose input has ``ident`` as its source_id or record_id."""
    key = settings.lineage_key.get_secret_value().encode()
    keys = list(_outcome_keys(storage, settings))
    found: list[Match] = []
    with ThreadPoolExecutor(READERS) as pool:
        for okey, record in zip(keys, pool.map(lambda k: _read(storage, settings, k), keys),
                                strict=True):
            if record is None:
                continue
            source, rid = _ids(record, key)
            if ident in (source, rid):
                slim = {k: v for k, v in record.items() if k != "body"}
                found.append(Match("source_id" if ident == source else "record_id", slim, okey))
    return sorted(found, key=lambda m: str(m.record.get("decided_at", "")))


def describe(match: Match, *, reveal: bool) -> dict[str, Any]:
    """What an operator needs to trace the input; user ids masked unless ``reveal``."""
    r = match.record
    binding = _dict(r.get("binding"))
    out = {
        "matched": match.matched,
        "source_id": r.get("source_id"),
        "record_id": r.get("record_id"),
        "outcome": r.get("kind"),
        "reason": r.get("reason"),
        "bucket": binding.get("bucket"),
        "key": binding.get("key"),
        "record_type": binding.get("record_type"),
        "content_hash": binding.get("content_hash"),
        "idempotency_key": r.get("idempotency_key"),
        "message_id": r.get("message_id"),
        "result_key": r.get("result_key") or r.get("quarantine_key"),
        "decided_at": r.get("decided_at"),
        "processor_version": r.get("processor_version"),
        "outcome_record": match.outcome_key,
    }
    if reveal:
        return out
    user = display.upload_user(str(out["key"] or ""))
    return dict(display.mask(out, {user} if user else set()))
