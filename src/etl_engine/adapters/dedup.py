"""Idempotency state: a short lease per key and a done marker with a retention TTL.

This saves work; it is not what makes results exactly-once (the conditional write in
``storage`` is). So a store that is down or was flushed costs only repeated work.
Redis (``redis://``) for a fleet, SQLite (``sqlite:///path``) embedded for one host; both
are a ``ports.DedupStore`` with the same semantics (``tests/contract/``), expiry included:
Redis expires keys itself, SQLite deletes expired rows when read and in a periodic purge.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

from etl_engine.adapters.ports import OUTCOME_TTL_S, Claim, DedupStore

__all__ = ["OUTCOME_TTL_S", "Claim", "DedupStore", "RedisDedup", "SqliteDedup", "open_store"]

# One round trip for the hot path: done? else try the lease.
_CLAIM = """
local done = redis.call('GET', KEYS[1])
if done then return 'done:' .. done end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'acquired' end
return 'busy'
"""
# Mark done and release our own lease (compare-and-delete) atomically; and, given a third
# key, record the delivery's outcome too (one round trip instead of two per message).
_FINISH = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4]) end
return 1
"""
# How long a per-delivery outcome stays readable (publishers waiting for their messages).
_RENEW = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]); n = n + 1 end
end
return n
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDedup:
    def __init__(self, url: str, prefix: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
        )
        self._prefix = prefix
        self._claim = self._redis.register_script(_CLAIM)
        self._finish = self._redis.register_script(_FINISH)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}:done:{key}", f"{self._prefix}:lease:{key}"]

    async def claim(self, key: str, owner: str, lease_ms: int) -> Claim:
        res = await self._claim(keys=self._keys(key), args=[owner, lease_ms])
        text = res.decode() if isinstance(res, bytes) else str(res)
        if text.startswith("done:"):
            return Claim("done", text[5:])
        return Claim(text)

    async def finish(self, key: str, owner: str, outcome: str, done_ttl_s: int,
                     message_id: str | None = None) -> None:
        """Done marker + lease release; with ``message_id``, also its outcome record."""
        keys = self._keys(key)
        if message_id:
            keys.append(f"{self._prefix}:outcome:{message_id}")
        await self._finish(keys=keys, args=[owner, outcome, done_ttl_s, OUTCOME_TTL_S])

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=self._keys(key)[1:], args=[owner])

    async def forget(self, key: str) -> None:
        await self._redis.delete(*self._keys(key))

    async def renew(self, keys: list[str], owner: str, lease_ms: int) -> None:
        if keys:
            await self._renew(keys=[self._keys(k)[1] for k in keys], args=[owner, lease_ms])

    async def record_outcomes(self, outcomes: dict[str, str], ttl_s: int) -> None:
        """Per-delivery outcome by message id, so publishers can wait for their messages."""
        if not outcomes:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message_id, outcome in outcomes.items():
            pipe.set(f"{self._prefix}:outcome:{message_id}", outcome, ex=ttl_s)
        await pipe.execute()

    async def outcomes(self, message_ids: list[str]) -> dict[str, str]:
        if not message_ids:
            return {}
        values = await self._redis.mget([f"{self._prefix}:outcome:{m}" for m in message_ids])
        return {m: v.decode() if isinstance(v, bytes) else str(v)
                for m, v in zip(message_ids, values, strict=True) if v}

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


_T = TypeVar("_T")
# Rows deleted per table and purge, so one purge holds the write lock only briefly.
_PURGE_BATCH = 5000
# A row's expiry: a row is either a lease (lease_until) or a done marker (done_until).
_EXPIRY = "COALESCE(done_until, lease_until, 0)"


class SqliteDedup:
    """Embedded store for a single host; several processes may share the file.

    Why a thread: SQLite calls block (a write waits up to ``busy_timeout_s`` for another
    process's lock), so every call runs on one dedicated thread with its own connection,
    never on the event loop; one thread also serialises this process's calls. Writes are
    ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error. Expired rows go when
    read (a claim replaces them, ``outcomes`` deletes them) and in a purge at most every
    ``purge_interval_s`` (run from any call, the worker's 5 s ping included).
    """

    def __init__(self, path: str, *, busy_timeout_s: float = 10.0,
                 purge_interval_s: float = 60.0) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._purge_interval_s = purge_interval_s
        self._next_purge = 0.0
        self._db: sqlite3.Connection | None = None  # opened and used on the thread only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup-sqlite")

    # --- on the thread --------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=self._busy_timeout_s,
                                 isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, owner TEXT,"
                       " lease_until REAL, outcome TEXT, done_until REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS outcomes (message_id TEXT PRIMARY KEY,"
                       " outcome TEXT, until REAL)")
            db.execute(f"CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup({_EXPIRY})")
            db.execute("CREATE INDEX IF NOT EXISTS outcomes_expiry ON outcomes(until)")
            self._db = db
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection, float], _T]) -> _T:
        """``fn(db, now)`` in one write transaction: committed, or rolled back on error."""
        db = self._conn()
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_interval_s
            self._tx(db, lambda d: self._purge(d, now))
        return self._tx(db, lambda d: fn(d, now))

    @staticmethod
    def _tx(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _purge(self, db: sqlite3.Connection, now: float) -> int:
        """Delete a batch of expired rows; the next call purges again if there were more."""
        deleted = 0
        for table, expiry in (("dedup", _EXPIRY), ("outcomes", "until")):
            deleted += db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
                f" WHERE {expiry} <= ? LIMIT ?)", (now, _PURGE_BATCH)).rowcount
        if deleted >= _PURGE_BATCH:
            self._next_purge = now
        return deleted

    async def _run(self, fn: Callable[[sqlite3.Connection, float], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._write, fn)

    # --- the port -------------------------------------------------------------------------
    async def claim(self, key: str, owner: str, lease_ms: int) -> Claim:
        return await self._run(lambda db, now: _claim(db, now, key, owner, lease_ms))

    async def finish(self, key: str, owner: str, outcome: str, done_ttl_s: int,
                     message_id: str | None = None) -> None:
        def finish(db: sqlite3.Connection, now: float) -> None:
            db.execute(
                "INSERT INTO dedup(key, owner, lease_until, outcome, done_until)"
                " VALUES(?,NULL,NULL,?,?) ON CONFLICT(key) DO UPDATE SET owner=NULL,"
                " lease_until=NULL, outcome=excluded.outcome, done_until=excluded.done_until",
                (key, outcome, now + done_ttl_s))
            if message_id:
                db.execute(
                    "INSERT OR REPLACE INTO outcomes(message_id, outcome, until) VALUES(?,?,?)",
                    (message_id, outcome, now + OUTCOME_TTL_S))

        await self._run(finish)

    async def release(self, key: str, owner: str) -> None:
        """Drop our lease row (a row is a lease or a done marker, never both)."""
        await self._run(lambda db, now: db.execute(
            "DELETE FROM dedup WHERE key=? AND owner=? AND outcome IS NULL", (key, owner)))

    async def forget(self, key: str) -> None:
        await self._run(lambda db, now: db.execute("DELETE FROM dedup WHERE key=?", (key,)))

    async def renew(self, keys: list[str], owner: str, lease_ms: int) -> None:
        """Extend our live leases; a lapsed one stays lapsed, as in Redis (its key expired),
        so another worker may already be claiming it."""
        if keys:
            await self._run(lambda db, now: db.executemany(
                "UPDATE dedup SET lease_until=? WHERE key=? AND owner=? AND lease_until>?",
                [(now + lease_ms / 1000.0, k, owner, now) for k in keys]))

    async def record_outcomes(self, outcomes: dict[str, str], ttl_s: int) -> None:
        if outcomes:
            await self._run(lambda db, now: db.executemany(
                "INSERT OR REPLACE INTO outcomes(message_id, outcome, until) VALUES(?,?,?)",
                [(m, o, now + ttl_s) for m, o in outcomes.items()]))

    async def outcomes(self, message_ids: list[str]) -> dict[str, str]:
        if not message_ids:
            return {}
        return await self._run(lambda db, now: _outcomes(db, now, message_ids))

    async def ping(self) -> None:
        await self._run(lambda db, now: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, close)
        finally:
            self._thread.shutdown(wait=False)


def _claim(db: sqlite3.Connection, now: float, key: str, owner: str, lease_ms: int) -> Claim:
    """Done? else busy? else take the lease (replacing an expired row: delete on read)."""
    row = db.execute("SELECT owner, lease_until, outcome, done_until FROM dedup WHERE key=?",
                     (key,)).fetchone()
    if row and row[2] and (row[3] or 0) > now:
        return Claim("done", row[2])
    if row and row[0] and (row[1] or 0) > now:
        return Claim("busy")
    db.execute(
        "INSERT INTO dedup(key, owner, lease_until, outcome, done_until)"
        " VALUES(?,?,?,NULL,NULL) ON CONFLICT(key) DO UPDATE SET owner=excluded.owner,"
        " lease_until=excluded.lease_until, outcome=NULL, done_until=NULL",
        (key, owner, now + lease_ms / 1000.0))
    return Claim("acquired")


def _outcomes(db: sqlite3.Connection, now: float, message_ids: list[str]) -> dict[str, str]:
    """Live outcomes of ``message_ids``; the expired ones among them are deleted."""
    out: dict[str, str] = {}
    for i in range(0, len(message_ids), 500):
        chunk = message_ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.execute(f"SELECT message_id, outcome, until FROM outcomes"
                          f" WHERE message_id IN ({marks})", chunk).fetchall()
        out.update((m, o) for m, o, until in rows if until > now and o)
        expired = [(m,) for m, _, until in rows if until <= now]
        if expired:
            db.executemany("DELETE FROM outcomes WHERE message_id=?", expired)
    return out


def open_store(url: str, prefix: str) -> DedupStore:
    if url.startswith("sqlite:///"):
        return SqliteDedup(url[len("sqlite:///"):])
    return RedisDedup(url, prefix)
