"""The ``DedupStore`` contract: one set of tests, run against the in-memory fake, Redis
and SQLite.

Why: the pipeline tests run on ``MemoryDedup``; they only prove something if it answers as
the real stores do. Time is the one difference allowed: the fake's clock is moved by
``advance``, the real stores' by sleeping, so every lease and TTL here is short and every
wait leaves a margin. Redis runs under a key prefix of the test's own, removed afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from conftest import REDIS_URL
from etl_engine.adapters.dedup import RedisDedup, SqliteDedup
from etl_engine.adapters.ports import DedupStore
from support.fakes import ManualClock, MemoryDedup


@dataclass(frozen=True)
class Subject:
    store: DedupStore
    advance: Callable[[float], Awaitable[None]]  # let this many seconds pass


async def _drop_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = ManualClock()

        async def move(seconds: float) -> None:
            clock.advance(seconds)

        yield Subject(MemoryDedup(clock), move)
        return
    prefix = f"test:contract:{uuid.uuid4().hex[:12]}"
    store: DedupStore = (RedisDedup(REDIS_URL, prefix) if request.param == "redis"
                         else SqliteDedup(str(tmp_path / "dedup.sqlite3")))
    try:
        yield Subject(store, asyncio.sleep)
    finally:
        await store.close()
        if request.param == "redis":
            await _drop_prefix(prefix)


async def _state(store: DedupStore, key: str, owner: str, lease_ms: int = 5000) -> str:
    return (await store.claim(key, owner, lease_ms)).state


async def test_a_lease_is_exclusive_even_for_its_owner(subject: Subject) -> None:
    store = subject.store
    assert await _state(store, "k", "a") == "acquired"
    assert await _state(store, "k", "a") == "busy"
    assert await _state(store, "k", "b") == "busy"
    await store.release("k", "b")  # not the owner: no effect
    assert await _state(store, "k", "b") == "busy"
    await store.release("k", "a")
    assert await _state(store, "k", "b") == "acquired"


async def test_a_lease_expires(subject: Subject) -> None:
    store = subject.store
    assert await _state(store, "k", "a", 300) == "acquired"
    await subject.advance(0.1)
    assert await _state(store, "k", "b", 300) == "busy"
    await subject.advance(0.4)
    assert await _state(store, "k", "b", 300) == "acquired"


async def test_only_the_owner_renews_and_only_a_live_lease(subject: Subject) -> None:
    store = subject.store
    assert await _state(store, "k", "a", 500) == "acquired"
    await subject.advance(0.3)
    await store.renew(["k", "unclaimed"], "a", 1000)  # until ~1.3 s
    await store.renew(["k"], "b", 60_000)  # not the owner: no effect
    await subject.advance(0.4)  # the first lease would have ended at 0.5 s
    assert await _state(store, "k", "c") == "busy"
    await subject.advance(0.8)
    assert await _state(store, "k", "c", 300) == "acquired"  # b's renewal did nothing
    await subject.advance(0.5)  # c's lease lapses ...
    await store.renew(["k"], "c", 60_000)  # ... and is not revived
    assert await _state(store, "k", "d") == "acquired"
    assert await _state(store, "unclaimed", "d") == "acquired"


async def test_the_done_marker_wins_and_carries_the_outcome(subject: Subject) -> None:
    store = subject.store
    assert await _state(store, "k", "a") == "acquired"
    await store.finish("k", "a", "quarantined", 60)
    for owner in ("a", "b"):
        claim = await store.claim("k", owner, 5000)
        assert (claim.state, claim.outcome) == ("done", "quarantined")
    await store.release("k", "a")  # nothing to release: still done
    assert (await store.claim("k", "b", 5000)).state == "done"
    await store.forget("k")
    assert await _state(store, "k", "b") == "acquired"
    await store.forget("never-claimed")  # no error


async def test_finish_releases_the_lease_and_the_marker_expires(subject: Subject) -> None:
    store = subject.store
    assert await _state(store, "k", "a", 60_000) == "acquired"
    await store.finish("k", "a", "processed", 1, message_id="m-done")
    await store.record_outcomes({"m-short": "dead_letter"}, 1)
    assert await store.outcomes(["m-done", "m-short"]) == {
        "m-done": "processed", "m-short": "dead_letter"}
    await subject.advance(1.3)
    # the marker is gone and so is a's lease (finish dropped it): free to claim
    assert await _state(store, "k", "b") == "acquired"
    assert await store.outcomes(["m-done", "m-short"]) == {"m-done": "processed"}


async def test_expired_state_is_gone_for_good(subject: Subject) -> None:
    """After its TTL a done marker, a lease and an outcome record are gone, and nothing
    brings them back: not a renewal, a release, a later finish of another key, or a read."""
    store = subject.store
    assert await _state(store, "k", "a", 60_000) == "acquired"
    await store.finish("k", "a", "processed", 1)
    await store.record_outcomes({"m-old": "processed"}, 1)
    assert await _state(store, "lease", "a", 500) == "acquired"
    await subject.advance(1.3)
    await store.renew(["lease"], "a", 60_000)  # lapsed: not revived
    await store.release("k", "a")
    assert await store.outcomes(["m-old"]) == {}
    assert await store.outcomes(["m-old"]) == {}  # a second read (SQLite deleted it)
    claim = await store.claim("k", "b", 5000)
    assert (claim.state, claim.outcome) == ("acquired", None)  # not done, no stale outcome
    assert await _state(store, "k", "c") == "busy"  # b's fresh lease
    assert await _state(store, "lease", "c") == "acquired"
    await store.finish("k", "b", "quarantined", 60)
    claim = await store.claim("k", "c", 5000)
    assert (claim.state, claim.outcome) == ("done", "quarantined")


async def test_outcomes_by_message_id(subject: Subject) -> None:
    store = subject.store
    assert await store.outcomes([]) == {}
    await store.record_outcomes({}, 60)
    await store.record_outcomes({"m1": "processed", "m2": "dead_letter"}, 60)
    await store.record_outcomes({"m2": "processed"}, 60)  # a later outcome replaces it
    assert await store.outcomes(["m1", "m2", "m3"]) == {"m1": "processed", "m2": "processed"}
    assert await _state(store, "k", "a") == "acquired"
    await store.finish("k", "a", "duplicate", 60)  # no message id: no outcome record
    await store.finish("k2", "a", "processed", 60, message_id="")
    assert await store.outcomes(["m1", ""]) == {"m1": "processed"}
    many = [f"m-{i}" for i in range(1200)]  # more than one SQLite chunk
    await store.record_outcomes(dict.fromkeys(many, "processed"), 60)
    assert len(await store.outcomes(many)) == 1200


async def test_only_one_of_many_concurrent_claims_wins(subject: Subject) -> None:
    results = await asyncio.gather(*(subject.store.claim("hot", f"o{i}", 5000)
                                     for i in range(50)))
    assert sum(r.state == "acquired" for r in results) == 1
    assert {r.state for r in results} == {"acquired", "busy"}


async def test_ping(subject: Subject) -> None:
    await subject.store.ping()
