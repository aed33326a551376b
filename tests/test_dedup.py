"""Dedup stores (Redis and SQLite) behave the same: leases, done markers, outcomes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import REDIS_URL
from etl_engine.adapters.dedup import DedupStore, open_store


@pytest.fixture(params=["redis", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DedupStore]:
    if request.param == "redis":
        s = open_store(REDIS_URL, f"test:{uuid.uuid4().hex[:8]}")
    else:
        s = open_store(f"sqlite:///{tmp_path}/dedup.sqlite3", "unused")
    yield s
    await s.close()


async def test_lease_is_exclusive_until_released(store: DedupStore) -> None:
    assert (await store.claim("k", "a", 5000)).state == "acquired"
    assert (await store.claim("k", "b", 5000)).state == "busy"
    await store.release("k", "b")  # not the owner: no effect
    assert (await store.claim("k", "b", 5000)).state == "busy"
    await store.release("k", "a")
    assert (await store.claim("k", "b", 5000)).state == "acquired"


async def test_lease_expires_and_renewal_extends_it(store: DedupStore) -> None:
    assert (await store.claim("k", "a", 300)).state == "acquired"
    await asyncio.sleep(0.2)
    await store.renew(["k"], "a", 600)
    await asyncio.sleep(0.2)
    assert (await store.claim("k", "b", 300)).state == "busy"
    await asyncio.sleep(0.5)
    assert (await store.claim("k", "b", 300)).state == "acquired"


async def test_done_marker_wins_over_leases_and_records_outcome(store: DedupStore) -> None:
    assert (await store.claim("k", "a", 5000)).state == "acquired"
    await store.finish("k", "a", "quarantined", 60)
    claim = await store.claim("k", "b", 5000)
    assert (claim.state, claim.outcome) == ("done", "quarantined")
    await store.forget("k")
    assert (await store.claim("k", "b", 5000)).state == "acquired"


async def test_outcomes_by_message_id(store: DedupStore) -> None:
    await store.record_outcomes({"m1": "processed", "m2": "dead_letter"}, 60)
    assert await store.outcomes(["m1", "m2", "m3"]) == {"m1": "processed", "m2": "dead_letter"}
    assert await store.outcomes([]) == {}


async def test_finish_records_the_outcome_in_the_same_call(store: DedupStore) -> None:
    assert (await store.claim("k", "a", 5000)).state == "acquired"
    await store.finish("k", "a", "processed", 60, message_id="m9")
    assert await store.outcomes(["m9"]) == {"m9": "processed"}
    assert (await store.claim("k", "b", 5000)).outcome == "processed"
    await store.finish("k2", "a", "duplicate", 60)  # no message id: no outcome record
    assert await store.outcomes(["m9", ""]) == {"m9": "processed"}


async def test_only_one_of_many_concurrent_claims_wins(store: DedupStore) -> None:
    results = await asyncio.gather(*(store.claim("hot", f"o{i}", 5000) for i in range(50)))
    assert sum(r.state == "acquired" for r in results) == 1
