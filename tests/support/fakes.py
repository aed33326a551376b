"""In-memory fakes of the runtime's ports: ``MemoryObjectStore`` and ``MemoryDedup``.

Why: the pipeline's logic (claim, verify, write once, quarantine, settle) is tested
without a network, quickly and deterministically (leases expire on a clock the test
moves). The fakes are only worth that if they behave like the real adapters, so
``tests/contract/`` runs the same test bodies against them and against S3 (obstore and
boto3), Redis and SQLite: the same answers, the same error classes and reasons.

Test-side extras, outside the ports: seeding and reading objects (``put_object``, ``get``,
``head``, ``keys``), ``fail_next`` fault injection and the ``calls`` log.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from etl_engine.adapters.ports import OUTCOME_TTL_S, Claim, Download
from etl_engine.adapters.storage import safe_metadata
from etl_engine.errors import PermanentError

__all__ = ["ManualClock", "MemoryDedup", "MemoryObjectStore", "StoredObject"]


class ManualClock:
    """A monotonic clock that moves only when told (``advance``), for lease expiry."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        self.now += seconds


class _Faults:
    """``fail_next(operation, exc)``: that operation's next call raises ``exc``; every call
    is logged in ``calls`` (e.g. to show a path never touched storage)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._faults: dict[str, list[BaseException]] = {}

    def fail_next(self, operation: str, exc: BaseException, *, times: int = 1) -> None:
        self._faults.setdefault(operation, []).extend([exc] * times)

    async def _enter(self, operation: str) -> None:
        """Yield to the loop first (calls interleave as real I/O would), then fail if told.
        Everything after this runs without a suspension point: each call is atomic."""
        await asyncio.sleep(0)
        self.calls.append(operation)
        pending = self._faults.get(operation)
        if pending:
            raise pending.pop(0)


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: bytes
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


class MemoryObjectStore(_Faults):
    """A ``ports.ObjectStore`` in a dict, with the real adapters' answers and errors:
    a bucket must exist (``create_bucket``), else ``storage_rejected``; a missing object is
    ``object_missing``, one over ``max_bytes`` ``object_too_large`` (never truncated);
    ``put_if_absent`` never overwrites; ``copy`` of a missing source is False."""

    def __init__(self, *buckets: str) -> None:
        super().__init__()
        self._buckets: dict[str, dict[str, StoredObject]] = {b: {} for b in buckets}

    # --- test side ------------------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        self._buckets.setdefault(bucket, {})

    def put_object(self, bucket: str, key: str, body: bytes, *,
                   content_type: str = "binary/octet-stream") -> None:
        """Store an object as an uploader would (the upload service's PutObject)."""
        self._objects(bucket, "write")[key] = StoredObject(body, content_type)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object as an operator tool would (a release deletes the record)."""
        self._objects(bucket, "delete").pop(key, None)

    def head(self, bucket: str, key: str) -> StoredObject:
        found = self._objects(bucket, "head").get(key)
        if found is None:
            raise PermanentError("object_missing", stage="head")
        return found

    def get(self, bucket: str, key: str) -> bytes:
        """Like ``Storage.get``: the whole object, no cap."""
        found = self._objects(bucket, "get").get(key)
        if found is None:
            raise PermanentError("object_missing", stage="get")
        return found.body

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for k in self._objects(bucket, "list") if k.startswith(prefix))

    def close(self) -> None:
        """Nothing to release (``AsyncStorage.close``'s counterpart)."""

    def _objects(self, bucket: str, stage: str) -> dict[str, StoredObject]:
        objects = self._buckets.get(bucket)
        if objects is None:
            raise PermanentError("storage_rejected", "NoSuchBucket", stage=stage)
        return objects

    # --- the port -------------------------------------------------------------------------
    async def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        await self._enter("download")
        found = self._objects(bucket, "download").get(key)
        if found is None:
            raise PermanentError("object_missing", stage="download")
        if len(found.body) > max_bytes:
            raise PermanentError("object_too_large", stage="download")
        body = found.body
        return Download(body=body, size=len(body), sha256=hashlib.sha256(body).hexdigest())

    async def put_if_absent(self, bucket: str, key: str, body: bytes, *, content_type: str,
                            metadata: dict[str, str]) -> bool:
        headers = safe_metadata(metadata)  # the same ValueError for a bad metadata key
        await self._enter("put_if_absent")
        objects = self._objects(bucket, "write")
        if key in objects:
            return False
        objects[key] = StoredObject(body, content_type, headers)
        return True

    async def put(self, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
        await self._enter("put")
        self._objects(bucket, "write")[key] = StoredObject(body, content_type)

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        await self._enter("copy")
        source = self._objects(src_bucket, "quarantine").get(src_key)
        target = self._objects(bucket, "quarantine")
        if source is None:
            return False
        target[key] = source  # S3 copies the content type and metadata too
        return True

    async def exists(self, bucket: str, key: str) -> bool:
        await self._enter("exists")
        return key in self._buckets.get(bucket, {})  # HEAD: no bucket reads as a 404 too

    async def ping(self, bucket: str) -> None:
        await self._enter("ping")
        if bucket not in self._buckets:
            raise PermanentError("storage_rejected", "404", stage="ping")


@dataclass(slots=True)
class _Entry:
    value: str  # the lease's owner, or the done marker's / outcome record's outcome
    until: float  # on the store's clock


class MemoryDedup(_Faults):
    """A ``ports.DedupStore`` in dicts, with Redis's semantics (``dedup._CLAIM`` and co):
    a done marker wins over leases; a lease is taken only if none is live, even by the
    same owner; release and renew act only for the owner and only on a live lease; finish
    sets the done marker, drops the owner's lease and, given a message id, records the
    outcome. Time is ``clock`` (seconds, monotonic): a ``ManualClock`` moves it in tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.closed = False
        self._leases: dict[str, _Entry] = {}
        self._done: dict[str, _Entry] = {}
        self._outcomes: dict[str, _Entry] = {}

    def _live(self, table: dict[str, _Entry], key: str) -> _Entry | None:
        entry = table.get(key)
        if entry is not None and entry.until <= self.clock():
            del table[key]  # expired, as Redis drops the key
            return None
        return entry

    def _owned(self, key: str, owner: str) -> _Entry | None:
        lease = self._live(self._leases, key)
        return lease if lease is not None and lease.value == owner else None

    async def claim(self, key: str, owner: str, lease_ms: int) -> Claim:
        await self._enter("claim")
        done = self._live(self._done, key)
        if done is not None:
            return Claim("done", done.value)
        if self._live(self._leases, key) is not None:
            return Claim("busy")
        self._leases[key] = _Entry(owner, self.clock() + lease_ms / 1000)
        return Claim("acquired")

    async def finish(self, key: str, owner: str, outcome: str, done_ttl_s: int,
                     message_id: str | None = None) -> None:
        await self._enter("finish")
        now = self.clock()
        self._done[key] = _Entry(outcome, now + done_ttl_s)
        if self._owned(key, owner) is not None:
            del self._leases[key]
        if message_id:
            self._outcomes[message_id] = _Entry(outcome, now + OUTCOME_TTL_S)

    async def release(self, key: str, owner: str) -> None:
        await self._enter("release")
        if self._owned(key, owner) is not None:
            del self._leases[key]

    async def forget(self, key: str) -> None:
        await self._enter("forget")
        self._done.pop(key, None)
        self._leases.pop(key, None)

    async def renew(self, keys: list[str], owner: str, lease_ms: int) -> None:
        await self._enter("renew")
        for key in keys:
            lease = self._owned(key, owner)
            if lease is not None:
                lease.until = self.clock() + lease_ms / 1000

    async def record_outcomes(self, outcomes: dict[str, str], ttl_s: int) -> None:
        await self._enter("record_outcomes")
        until = self.clock() + ttl_s
        for message_id, outcome in outcomes.items():
            self._outcomes[message_id] = _Entry(outcome, until)

    async def outcomes(self, message_ids: list[str]) -> dict[str, str]:
        await self._enter("outcomes")
        found = {m: self._live(self._outcomes, m) for m in message_ids}
        return {m: e.value for m, e in found.items() if e is not None and e.value}

    async def ping(self) -> None:
        await self._enter("ping")

    async def close(self) -> None:
        self.closed = True

    def lease_owner(self, key: str) -> str | None:
        """Test side: who holds ``key``'s live lease."""
        lease = self._live(self._leases, key)
        return lease.value if lease is not None else None
