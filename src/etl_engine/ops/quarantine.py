"""Quarantine tools: ``etl-engine quarantine list | show KEY | release KEY ...``.

A quarantined upload is a copy under ``quarantine/`` (per input: the pipeline's
``quarantine_key``) plus ``<copy>.reason.json`` (reason code, stage, quality report, and the
original message under ``"message"``), and the input's outcome record (kind
``quarantined``: the worker's commit point, which every later delivery obeys). Release,
after the cause was fixed (a late upload, a corrected threshold, a new processor):

    1. check that the dedup store is the workers' (it must know this input: the worker
       recorded it there; ``known_to_store``), 2. clear the input's done-marker there,
    3. put the raw object back if only the quarantine copy is left, 4. delete this
       quarantine's outcome record (only the version read) so the worker decides again,
    5. re-publish the original message (confirmed), 6. wait (bounded) until the new outcome
       exists: a new outcome record and its artefact (the result, a new reason file, the
       DLQ marker),
    7. only then, and only when the new outcome is a result or a dead-letter entry, delete
       the copy and the reason file, each only while it is still the version that was read
       (``If-Match`` on its ETag, re-checked with a HEAD).

So the evidence is never deleted before the new outcome exists, and never a newer
quarantine: a cause that is not fixed gives ``requarantined`` (the worker's new quarantine
is kept), no outcome in time gives ``timeout`` (everything kept; run it again: a run that
finds the input already processed only cleans up). A crash anywhere leaves the reason file,
so release can simply be run again; a second publish of the same idempotency key can only
produce a duplicate, never a second result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import orjson

from etl_engine.adapters.dedup import OUTCOME_TTL_S, open_store
from etl_engine.adapters.ports import DedupStore
from etl_engine.adapters.storage import Storage
from etl_engine.adapters.topology import RELEASED_HEADER
from etl_engine.domain import outcomes
from etl_engine.domain.messages import derive_message_id
from etl_engine.errors import PermanentError
from etl_engine.observability import telemetry
from etl_engine.ops import conditional, display
from etl_engine.settings import Settings

REASON_SUFFIX = ".reason.json"
# The outcome by message id a release leaves in the dedup store until the worker records
# the new one over it (so a ``duplicate`` answer is seen at once).
OUTCOME_PENDING = "release_pending"
RELEASE_WAIT_S = 120.0  # covers the retry tiers' delays (ETL_RETRY_DELAYS_MS) of one run
UNKNOWN_TO_STORE = ("the dedup store has no record of this input: is ETL_DEDUP_URL the "
                    "workers' store? (after a flush of the fleet's store: --skip-dedup-check)")


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


class ReleaseStatus(StrEnum):
    RELEASED = "released"  # the new outcome (a result or a DLQ entry) exists; copy deleted
    REQUARANTINED = "requarantined"  # quarantined again: the new evidence is kept
    TIMEOUT = "timeout"  # no new outcome within the wait: everything kept
    DUPLICATE = "duplicate"  # the worker answered duplicate: the quarantine is kept
    NOT_FOUND = "not found"
    NO_MESSAGE = "no message"
    REFUSED = "refused"  # the dedup store does not know this quarantine


@dataclass(frozen=True, slots=True)
class Released:
    """One key's result, as the operator named it."""

    key: str
    status: ReleaseStatus
    detail: str = ""


@dataclass(slots=True)
class _Pending:
    """A release on its way: the versions it acts on, then the input's new outcome."""

    named: str
    qkey: str
    reason_etag: str  # the version of the reason file this release acts on
    copy_etag: str | None
    reason: dict[str, Any]
    message: dict[str, Any]
    mid: str
    record_etag: str | None = None  # this quarantine's outcome record (deleted to release)
    new: dict[str, Any] | None = None  # the input's new outcome record
    complete: bool = False  # the new outcome's artefact exists (result, reason, DLQ marker)
    duplicate: bool = False  # the worker answered duplicate (its done-marker was not ours)

    @property
    def ikey(self) -> str:
        return str(self.message["idempotency_key"])


async def release(settings: Settings, storage: Storage, keys: list[str], *,
                  timeout_s: float = RELEASE_WAIT_S, check_dedup: bool = True,
                  poll_s: float = 0.25) -> list[Released]:
    """Release each key (see the module docstring); one result per key, in order."""
    results: list[Released | _Pending] = []
    store = open_store(settings.dedup_url, settings.dedup_prefix)
    try:
        for key in keys:
            results.append(await _prepare(storage, settings, store, key, check_dedup))
        pending = [r for r in results if isinstance(r, _Pending)]
        if pending:
            await _publish(settings, storage, store, pending)
            await _wait(storage, settings, store, pending, timeout_s, poll_s)
    finally:
        await store.close()
    return [r if isinstance(r, Released) else _settle(storage, settings, r, timeout_s)
            for r in results]


async def _prepare(storage: Storage, settings: Settings, store: DedupStore, key: str,
                   check_dedup: bool) -> Released | _Pending:
    """The reason file as read now (its ETag fences the deletes), or why not."""
    named = quarantine_key(settings, key)  # reported as the operator named it
    qkey = resolve_key(storage, settings, key)
    found = conditional.get(storage, settings.bucket, qkey + REASON_SUFFIX)
    if found is None:
        return Released(named, ReleaseStatus.NOT_FOUND, "no reason file")
    try:
        reason = orjson.loads(found[0])
    except orjson.JSONDecodeError:
        reason = None
    message = reason.get("message") if isinstance(reason, dict) else None
    if not isinstance(reason, dict) or not isinstance(message, dict) \
            or not message.get("idempotency_key"):
        return Released(named, ReleaseStatus.NO_MESSAGE, "reason file has no original message")
    ikey = str(message["idempotency_key"])
    mid = str(message.get("message_id") or derive_message_id(ikey))
    if check_dedup and not await known_to_store(store, ikey, mid):
        return Released(named, ReleaseStatus.REFUSED, UNKNOWN_TO_STORE)
    copy = conditional.head(storage, settings.bucket, qkey)
    pending = _Pending(named, qkey, found[1], copy.etag if copy else None, reason, message, mid)
    record = _record(storage, settings, ikey)
    if record is None:
        return pending
    doc, etag = record
    if not _bound(doc, message):
        return Released(named, ReleaseStatus.REFUSED, "the idempotency key's outcome belongs "
                        "to another upload (a key conflict): nothing to release; kept")
    if doc.get("kind") == "quarantined" and doc.get("quarantine_key") == qkey:
        pending.record_etag = etag  # this quarantine's: deleted, so a new one can be made
    else:
        pending.new = doc  # the input has moved on (an earlier release): only clean up
    return pending


def _bound(doc: dict[str, Any], message: dict[str, Any]) -> bool:
    """Whether an outcome record is this message's input (same bucket, key, type, hash)."""
    return doc.get("binding") == outcomes.binding(
        str(message.get("bucket")), str(message.get("key")), str(message.get("record_type")),
        message.get("content_hash"))


def _record(storage: Storage, settings: Settings, ikey: str
            ) -> tuple[dict[str, Any], str] | None:
    """The input's outcome record (the worker's commit point) and its ETag."""
    found = conditional.get(storage, settings.bucket, outcome_key(settings, ikey))
    if found is None:
        return None
    try:
        doc = orjson.loads(found[0])
    except orjson.JSONDecodeError:
        return None
    return (doc, found[1]) if isinstance(doc, dict) else None


async def known_to_store(store: DedupStore, ikey: str, mid: str) -> bool:
    """Whether this dedup store holds the quarantined input's record: its outcome by
    message id (a day) or its done-marker (ETL_DONE_TTL_S). A store the workers do not use
    (a fresh local SQLite file when ETL_DEDUP_URL is unset) has neither. Read with a
    one-second probe lease that is released at once when nothing is there."""
    if (await store.outcomes([mid])).get(mid):
        return True
    owner = f"etl-engine-release-{uuid.uuid4().hex[:12]}"
    claim = await store.claim(ikey, owner, 1000)
    if claim.state == "acquired":
        await store.release(ikey, owner)
        return False
    return True  # done (the marker) or busy (a worker holds it): the workers' store


async def _publish(settings: Settings, storage: Storage, store: DedupStore,
                   pending: list[_Pending]) -> None:
    """Per key: forget the done-marker, put the raw object back if needed, delete this
    quarantine's outcome record (only that version), then re-publish the message."""
    from etl_engine.adapters.publisher import Publisher

    async with Publisher(settings) as pub:
        for p in pending:
            if p.new is not None:
                continue
            with telemetry.span("etl-engine quarantine release",
                                attributes={"etl.reason": str(p.reason.get("reason"))}):
                await store.forget(p.ikey)
                _restore_raw(storage, settings, p.qkey, p.message, p.reason)
                if p.record_etag is not None and conditional.delete(
                        storage, settings.bucket, outcome_key(settings, p.ikey),
                        p.record_etag) is conditional.Deleted.CHANGED:
                    continue  # another release got there first: its outcome is awaited
                await store.record_outcomes({p.mid: OUTCOME_PENDING}, OUTCOME_TTL_S)
                await pub.publish(p.message, headers={RELEASED_HEADER: 1})


async def _wait(storage: Storage, settings: Settings, store: DedupStore,
                pending: list[_Pending], timeout_s: float, poll_s: float) -> None:
    """Until each input's new outcome is complete (or answered duplicate), or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = [p for p in pending if not p.complete and not p.duplicate]
        if not waiting or time.monotonic() >= deadline:
            return
        seen = await store.outcomes([p.mid for p in waiting])
        for p in waiting:
            record = _record(storage, settings, p.ikey)
            if record is None:
                p.duplicate = seen.get(p.mid) == "duplicate"
            elif record[1] != p.record_etag and _bound(record[0], p.message):
                p.new = record[0]
                p.complete = _complete(storage, settings, p)
        await asyncio.sleep(poll_s)


def _complete(storage: Storage, settings: Settings, p: _Pending) -> bool:
    """Whether the new outcome's artefact exists: the result, the new reason file (another
    version, or at another path), or the DLQ marker (the DLQ confirmed the entry)."""
    assert p.new is not None
    kind = p.new.get("kind")
    if kind == "processed":
        return storage.exists(settings.bucket, str(p.new.get("result_key")))
    if kind == "dead_letter":
        marker = outcomes.dlq_marker_key(settings.outcome_prefix, p.ikey,
                                         str(p.new.get("outcome_id", "")))
        return storage.exists(settings.bucket, marker)
    qkey = str(p.new.get("quarantine_key"))
    found = conditional.head(storage, settings.bucket, qkey + REASON_SUFFIX)
    return found is not None and (qkey != p.qkey or found.etag != p.reason_etag)


def _settle(storage: Storage, settings: Settings, p: _Pending, timeout_s: float) -> Released:
    """Delete the released evidence only once a result or a DLQ entry replaced it."""
    kind = p.new.get("kind") if p.new is not None else None
    if kind == "quarantined":
        return _requarantined(storage, settings, p)
    if kind in ("processed", "dead_letter") and p.complete:
        return _remove(storage, settings, p, str(kind))
    if p.duplicate:
        return Released(p.named, ReleaseStatus.DUPLICATE, "the worker answered duplicate "
                        "(its done-marker was still set): the quarantine is kept")
    waited = f" ({kind} recorded, not complete yet)" if kind else ""
    return Released(p.named, ReleaseStatus.TIMEOUT, f"no new outcome within {timeout_s:g} s"
                    f"{waited}; the quarantine is kept (run release again)")


def _remove(storage: Storage, settings: Settings, p: _Pending, kind: str) -> Released:
    """Copy first, the reason file (the marker) last, each only as the version read."""
    if p.copy_etag is not None and conditional.delete(
            storage, settings.bucket, p.qkey, p.copy_etag) is conditional.Deleted.CHANGED:
        return Released(p.named, ReleaseStatus.REQUARANTINED, "a newer copy appeared; kept")
    if conditional.delete(storage, settings.bucket, p.qkey + REASON_SUFFIX,
                          p.reason_etag) is conditional.Deleted.CHANGED:
        return Released(p.named, ReleaseStatus.REQUARANTINED, "a newer reason file appeared; kept")
    return Released(p.named, ReleaseStatus.RELEASED, f"new outcome: {kind}")


def _requarantined(storage: Storage, settings: Settings, p: _Pending) -> Released:
    """The worker quarantined it again. At the same path its new copy and reason file are
    the evidence now (kept); at another path (the layout changed), the old pair is stale
    once the new reason file is there."""
    assert p.new is not None
    new_key = str(p.new.get("quarantine_key"))
    if new_key == p.qkey or not p.complete:
        return Released(p.named, ReleaseStatus.REQUARANTINED,
                        "the cause is not fixed: the new quarantine is kept")
    if p.copy_etag is not None:
        conditional.delete(storage, settings.bucket, p.qkey, p.copy_etag)
    conditional.delete(storage, settings.bucket, p.qkey + REASON_SUFFIX, p.reason_etag)
    return Released(p.named, ReleaseStatus.REQUARANTINED,
                    f"quarantined again under {new_key}; the old copy removed")


def outcome_key(settings: Settings, ikey: str) -> str:
    """The input's outcome record (where the pipeline writes it)."""
    return outcomes.outcome_key(settings.outcome_prefix, ikey)


def worker_quarantine_key(settings: Settings, message: dict[str, Any]) -> str | None:
    """Where a worker puts this message's quarantine (the pipeline's own function)."""
    from etl_engine.domain.messages import HealthDataMessage
    from etl_engine.runtime.pipeline import quarantine_key as pipeline_key

    try:
        msg = HealthDataMessage.model_validate(message)
    except ValueError:
        return None
    return pipeline_key(settings, msg)


def _restore_raw(storage: Storage, settings: Settings, qkey: str, message: dict[str, Any],
                 reason: dict[str, Any]) -> None:
    """If the raw object is gone but we hold a copy, put it back where the message points."""
    bucket, key = str(message.get("bucket") or ""), str(message.get("key") or "")
    if not bucket or not key or not reason.get("raw_copied"):
        return
    if not storage.exists(bucket, key) and storage.exists(settings.bucket, qkey):
        storage.copy(settings.bucket, qkey, bucket, key)
