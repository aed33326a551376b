"""What the runtime needs from object storage and the dedup store, as small protocols.

Why: the pipeline's logic (claim, verify, write once, quarantine) does not depend on S3 or
Redis. Typed against these protocols it runs on in-memory fakes in tests, and one contract
suite (``tests/contract/``) holds every implementation, real or fake, to the semantics
written here. Both are structural (``typing.Protocol``): an adapter satisfies one by its
methods, without importing this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# How long the final outcome per message id is kept (status and the tools read it).
OUTCOME_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Download:
    """An object's bytes with their size and SHA-256 (hex), for the message's checks."""

    body: bytes
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Claim:
    """``state`` is 'acquired', 'busy' or 'done'; ``outcome`` is set when done."""

    state: str
    outcome: str | None = None


class ObjectStore(Protocol):
    """The object-storage calls the pipeline and the worker make (async, never blocking).

    Failures use the error taxonomy (``etl_engine.errors``), the same reason for every
    implementation: ``PermanentError("object_missing")`` for a missing object,
    ``PermanentError("object_too_large")`` over a cap, ``PermanentError("storage_rejected")``
    for a request the server refuses (e.g. no such bucket), ``TransientError`` with
    ``storage_unavailable``, ``storage_access_denied`` or ``storage_conflict`` for what a
    retry may fix. The ``stage`` is the call's: download, write, quarantine (copy), head,
    ping.
    """

    async def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        """The whole object; over ``max_bytes`` it is refused, never truncated."""
        ...

    async def put_if_absent(self, bucket: str, key: str, body: bytes, *, content_type: str,
                            metadata: dict[str, str]) -> bool:
        """Create ``key`` unless it exists: True created, False another writer got there
        first (the object is left as it was). This is what makes results exactly-once.
        A metadata key that is not a lower-case token is a ``ValueError``."""
        ...

    async def put(self, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
        """Create or overwrite ``key``."""
        ...

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        """Server-side copy; False when the source object does not exist."""
        ...

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether ``key`` exists (False too when the bucket does not)."""
        ...

    async def ping(self, bucket: str) -> None:
        """Raise unless ``bucket`` is reachable (the readiness check)."""
        ...


class DedupStore(Protocol):
    """A short lease per key, a done marker with a retention TTL, outcomes by message id.

    A lease is taken only when there is neither a live done marker nor a live lease (not
    even by the same owner); only its owner can release or renew it, and an expired lease
    is not revived by a renewal. A done marker wins over any lease until its TTL ends.
    """

    async def claim(self, key: str, owner: str, lease_ms: int) -> Claim: ...
    async def finish(self, key: str, owner: str, outcome: str, done_ttl_s: int,
                     message_id: str | None = None) -> None: ...
    async def release(self, key: str, owner: str) -> None: ...
    async def forget(self, key: str) -> None: ...
    async def renew(self, keys: list[str], owner: str, lease_ms: int) -> None: ...
    async def record_outcomes(self, outcomes: dict[str, str], ttl_s: int) -> None: ...
    async def outcomes(self, message_ids: list[str]) -> dict[str, str]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...
