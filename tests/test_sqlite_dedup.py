"""SQLite dedup specifics the contract suite cannot see (issue 15, hole 9): calls run off
the event loop, a failed statement rolls its transaction back, expired rows are deleted.

The contract (``tests/contract/test_dedup_contract.py``) holds the semantics; here a second
connection, as another process on the host would, holds locks and counts rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from etl_engine.adapters.dedup import SqliteDedup


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dedup.sqlite3"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteDedup]:
    s = SqliteDedup(str(path), busy_timeout_s=5.0, purge_interval_s=0.2)
    await s.ping()  # opens the file (on the store's thread)
    yield s
    await s.close()


@pytest.fixture
def other(path: Path, store: SqliteDedup) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the same file."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    yield db
    db.close()


def _rows(db: sqlite3.Connection) -> dict[str, int]:
    return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("dedup", "outcomes")}


async def _max_loop_gap(until: asyncio.Future[Any]) -> float:
    """The longest the event loop went without running this task, while ``until`` runs."""
    gap, last = 0.0, time.perf_counter()
    while not until.done():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    return gap


async def test_a_lock_wait_never_blocks_the_event_loop(store: SqliteDedup,
                                                       other: sqlite3.Connection) -> None:
    other.execute("BEGIN EXCLUSIVE")  # another process writing for a second
    asyncio.get_running_loop().call_later(1.0, other.execute, "COMMIT")
    started = time.perf_counter()
    claim = asyncio.ensure_future(store.claim("k", "a", 5000))
    gap = await _max_loop_gap(claim)
    assert claim.result().state == "acquired"
    assert time.perf_counter() - started >= 0.9, "the claim did wait for the lock"
    assert gap < 0.25, f"the event loop stalled {gap:.2f} s"


async def test_a_lock_held_past_the_timeout_fails_that_call_only(path: Path) -> None:
    store = SqliteDedup(str(path), busy_timeout_s=0.2)
    await store.ping()  # creates the file
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError):
            await store.claim("k", "a", 5000)
        other.execute("COMMIT")
        assert (await store.claim("k", "a", 5000)).state == "acquired"  # not stuck
    finally:
        other.close()
        await store.close()


async def test_a_failed_statement_rolls_the_whole_call_back(store: SqliteDedup,
                                                            other: sqlite3.Connection) -> None:
    """finish writes the done marker, then the outcome record; if the second fails, the
    first must not stay committed (it used to COMMIT in a ``finally``)."""
    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON outcomes WHEN NEW.message_id='bad'"
                  " BEGIN SELECT RAISE(ABORT, 'refused'); END")
    assert (await store.claim("k", "a", 60_000)).state == "acquired"
    with pytest.raises(sqlite3.IntegrityError):
        await store.finish("k", "a", "processed", 60, message_id="bad")
    assert (await store.claim("k", "b", 5000)).state == "busy"  # a's lease, no done marker
    assert not other.execute("SELECT 1 FROM dedup WHERE outcome IS NOT NULL").fetchall()
    await store.finish("k", "a", "processed", 60, message_id="good")  # the store goes on
    assert (await store.claim("k", "b", 5000)).outcome == "processed"
    assert await store.outcomes(["good", "bad"]) == {"good": "processed"}


async def test_expired_rows_are_deleted(store: SqliteDedup, other: sqlite3.Connection) -> None:
    for i in range(20):
        assert (await store.claim(f"k{i}", "a", 300)).state == "acquired"
        await store.finish(f"k{i}", "a", "processed", 1)
    await store.record_outcomes({f"r{i}": "dead_letter" for i in range(40)}, 1)
    assert (await store.claim("lease", "a", 300)).state == "acquired"
    await store.release("lease", "a")  # a released lease leaves no row behind
    assert _rows(other) == {"dedup": 20, "outcomes": 40}
    await asyncio.sleep(1.3)
    await store.ping()  # any call purges once the interval has passed
    assert _rows(other) == {"dedup": 0, "outcomes": 0}


async def test_an_expired_outcome_is_deleted_when_read(path: Path) -> None:
    store = SqliteDedup(str(path), purge_interval_s=3600)  # no purge in this test
    await store.record_outcomes({"old": "processed"}, 1)
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        await store.record_outcomes({"new": "processed"}, 60)
        await asyncio.sleep(1.2)
        assert await store.outcomes(["old", "new"]) == {"new": "processed"}
        assert [r[0] for r in other.execute("SELECT message_id FROM outcomes")] == ["new"]
    finally:
        other.close()
        await store.close()


async def test_every_call_runs_on_the_store_thread(store: SqliteDedup,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    seen: set[str] = set()
    real = SqliteDedup._write

    def spy(self: SqliteDedup, fn):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real(self, fn)

    monkeypatch.setattr(SqliteDedup, "_write", spy)
    await store.claim("k", "a", 5000)
    await store.renew(["k"], "a", 5000)
    await store.finish("k", "a", "processed", 60, message_id="m")
    await store.record_outcomes({"n": "processed"}, 60)
    await store.outcomes(["m", "n"])
    await store.release("k", "a")
    await store.forget("k")
    await store.ping()
    assert len(seen) == 1 and next(iter(seen)).startswith("dedup-sqlite")
    assert threading.current_thread().name not in seen
