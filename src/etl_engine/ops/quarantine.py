"""Quarantine tools: ``etl-engine quarantine list | show KEY | release KEY ...``.

A quarantined upload is a copy under ``quarantine/`` plus ``<copy>.reason.json`` (reason
code, stage, quality report, and the original message under ``"message"``). Release, after
the cause was fixed (a late upload, a corrected threshold, a new processor):

    1. clear the dedup done-marker of the idempotency key (else the worker skips it as a
       duplicate), 2. put the raw object back if only the quarantine copy is left,
    3. re-publish the original message (confirmed), 4. delete the copy, then the reason.

A crash anywhere leaves the reason file, so release can simply be run again; a second
publish of the same idempotency key can only produce a duplicate, never a second result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from etl_engine.adapters.dedup import open_store
from etl_engine.adapters.storage import Storage
from etl_engine.errors import PermanentError
from etl_engine.observability import telemetry
from etl_engine.ops import display
from etl_engine.settings import Settings

REASON_SUFFIX = ".reason.json"
RELEASED_HEADER = "x-etl-released"


@dataclass(frozen=True, slots=True)
class Quarantined:
    key: str
    reason: str
    stage: str
    record_type: str
    message_id: str | None
    quarantined_at: str
    raw_copied: bool
    quality_score: float | None


def quarantine_key(settings: Settings, key: str) -> str:
    """Accept ``quarantine/...``, a path relative to it, or the reason file's key."""
    key = key.removesuffix(REASON_SUFFIX)
    return key if key.startswith(settings.quarantine_prefix) else settings.quarantine_prefix + key


def load_reason(storage: Storage, settings: Settings, key: str) -> dict[str, Any]:
    qkey = quarantine_key(settings, key)
    try:
        data = orjson.loads(storage.get(settings.bucket, qkey + REASON_SUFFIX))
    except PermanentError:
        raise KeyError(qkey) from None
    if not isinstance(data, dict):
        raise KeyError(qkey)
    return data


def _reason_keys(storage: Storage, settings: Settings) -> list[str]:
    return [k.removesuffix(REASON_SUFFIX)
            for k in storage.list_keys(settings.bucket, settings.quarantine_prefix)
            if k.endswith(REASON_SUFFIX)]


def resolve_key(storage: Storage, settings: Settings, key: str) -> str:
    """The real quarantine key for a key as given, also the masked form ``list`` prints
    (so an operator can show and release without ``--reveal``)."""
    qkey = quarantine_key(settings, key)
    if display.HASH_PREFIX not in key:
        return qkey
    for real in _reason_keys(storage, settings):
        if real == qkey or _masked_key(storage, settings, real) == qkey:
            return real
    return qkey


def _masked_key(storage: Storage, settings: Settings, qkey: str) -> str:
    try:
        users = display.user_ids_in(load_reason(storage, settings, qkey))
    except (KeyError, orjson.JSONDecodeError):
        users = set()
    return str(display.mask({"key": qkey}, users)["key"])


def list_quarantined(storage: Storage, settings: Settings, *, reveal: bool = False
                     ) -> list[Quarantined]:
    """Every quarantined upload with its reason; keys and ids masked unless ``reveal``."""
    out = []
    for qkey in _reason_keys(storage, settings):
        try:
            data = load_reason(storage, settings, qkey)
        except (KeyError, orjson.JSONDecodeError):
            continue
        report = data.get("quality_report") or {}
        item = Quarantined(
            key=qkey,
            reason=str(data.get("reason") or "unknown"),
            stage=str(data.get("stage") or ""),
            record_type=str(data.get("record_type") or ""),
            message_id=data.get("message_id"),
            quarantined_at=str(data.get("quarantined_at") or ""),
            raw_copied=bool(data.get("raw_copied")),
            quality_score=report.get("quality_score") if isinstance(report, dict) else None,
        )
        out.append(item if reveal else Quarantined(
            **display.mask(asdict(item), display.user_ids_in(data))))
    return sorted(out, key=lambda q: q.quarantined_at)


def masked(reason: dict[str, Any]) -> dict[str, Any]:
    """The reason file for display: the user id, and the user part of every key (the
    message's, the source's, an idempotency key made from it), as the keyed pseudonym."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(reason))
    return dict(display.mask(data, display.user_ids_in(data)))


async def release(settings: Settings, storage: Storage, keys: list[str]
                  ) -> list[tuple[str, str]]:
    """Release each key; returns (quarantine key, "released" or why not)."""
    from etl_engine.adapters.publisher import Publisher

    results: list[tuple[str, str]] = []
    store = open_store(settings.dedup_url, settings.dedup_prefix)
    try:
        async with Publisher(settings) as pub:
            for key in keys:
                named = quarantine_key(settings, key)  # reported as the operator named it
                qkey = resolve_key(storage, settings, key)
                try:
                    reason = load_reason(storage, settings, qkey)
                except (KeyError, orjson.JSONDecodeError):
                    results.append((named, "not found (no reason file)"))
                    continue
                message = reason.get("message")
                if not isinstance(message, dict) or not message.get("idempotency_key"):
                    results.append((named, "reason file has no original message"))
                    continue
                with telemetry.span("etl-engine quarantine release",
                                    attributes={"etl.reason": str(reason.get("reason"))}):
                    await store.forget(str(message["idempotency_key"]))
                    _restore_raw(storage, settings, qkey, message, reason)
                    await pub.publish(message, headers={RELEASED_HEADER: 1})
                storage.delete(settings.bucket, qkey)
                storage.delete(settings.bucket, qkey + REASON_SUFFIX)  # last: the marker
                results.append((named, "released"))
    finally:
        await store.close()
    return results


def _restore_raw(storage: Storage, settings: Settings, qkey: str, message: dict[str, Any],
                 reason: dict[str, Any]) -> None:
    """If the raw object is gone but we hold a copy, put it back where the message points."""
    bucket, key = str(message.get("bucket") or ""), str(message.get("key") or "")
    if not bucket or not key or not reason.get("raw_copied"):
        return
    if not storage.exists(bucket, key) and storage.exists(settings.bucket, qkey):
        storage.copy(settings.bucket, qkey, bucket, key)
