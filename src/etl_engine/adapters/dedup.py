"""Idempotency state: a short lease per key and a done marker with a retention TTL.

This saves work; it is not what makes results exactly-once (the conditional write in
``storage`` is). So a store that is down or was flushed costs only repeated work.
Redis (``redis://``) for a fleet, SQLite (``sqlite:///path``) embedded for one host; both
are a ``ports.DedupStore`` with the same semantics (``tests/contract/``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import redis.asyncio as aioredis

from etl_engine.adapters.ports import Claim, DedupStore

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
OUTCOME_TTL_S = 24 * 3600
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


class SqliteDedup:
    """Embedded store for a single host; several processes may share the file."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, owner TEXT,"
            " lease_until REAL, outcome TEXT, done_until REAL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outcomes (message_id TEXT PRIMARY KEY, outcome TEXT,"
            " until REAL)"
        )
        self._lock = asyncio.Lock()

    def _claim_sync(self, key: str, owner: str, lease_ms: int) -> Claim:
        now = time.time()
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute(
                "SELECT owner, lease_until, outcome, done_until FROM dedup WHERE key=?", (key,)
            ).fetchone()
            if row and row[2] and (row[3] or 0) > now:
                return Claim("done", row[2])
            if row and row[0] and (row[1] or 0) > now:
                return Claim("busy")
            cur.execute(
                "INSERT INTO dedup(key, owner, lease_until, outcome, done_until)"
                " VALUES(?,?,?,NULL,NULL) ON CONFLICT(key) DO UPDATE SET owner=excluded.owner,"
                " lease_until=excluded.lease_until, outcome=NULL, done_until=NULL",
                (key, owner, now + lease_ms / 1000.0),
            )
            return Claim("acquired")
        finally:
            cur.execute("COMMIT")

    async def claim(self, key: str, owner: str, lease_ms: int) -> Claim:
        async with self._lock:
            return self._claim_sync(key, owner, lease_ms)

    async def finish(self, key: str, owner: str, outcome: str, done_ttl_s: int,
                     message_id: str | None = None) -> None:
        async with self._lock:
            now = time.time()
            self._db.execute(
                "INSERT INTO dedup(key, owner, lease_until, outcome, done_until)"
                " VALUES(?,NULL,NULL,?,?) ON CONFLICT(key) DO UPDATE SET owner=NULL,"
                " lease_until=NULL, outcome=excluded.outcome, done_until=excluded.done_until",
                (key, outcome, now + done_ttl_s),
            )
            if message_id:
                self._db.execute(
                    "INSERT OR REPLACE INTO outcomes(message_id, outcome, until) VALUES(?,?,?)",
                    (message_id, outcome, now + OUTCOME_TTL_S))

    async def release(self, key: str, owner: str) -> None:
        async with self._lock:
            self._db.execute(
                "UPDATE dedup SET owner=NULL, lease_until=NULL WHERE key=? AND owner=?",
                (key, owner),
            )

    async def forget(self, key: str) -> None:
        async with self._lock:
            self._db.execute("DELETE FROM dedup WHERE key=?", (key,))

    async def renew(self, keys: list[str], owner: str, lease_ms: int) -> None:
        """Extend our live leases; a lapsed one stays lapsed, as in Redis (its key expired),
        so another worker may already be claiming it."""
        async with self._lock:
            now = time.time()
            until = now + lease_ms / 1000.0
            self._db.executemany(
                "UPDATE dedup SET lease_until=? WHERE key=? AND owner=? AND lease_until>?",
                [(until, k, owner, now) for k in keys],
            )

    async def record_outcomes(self, outcomes: dict[str, str], ttl_s: int) -> None:
        async with self._lock:
            until = time.time() + ttl_s
            self._db.executemany(
                "INSERT OR REPLACE INTO outcomes(message_id, outcome, until) VALUES(?,?,?)",
                [(m, o, until) for m, o in outcomes.items()],
            )

    async def outcomes(self, message_ids: list[str]) -> dict[str, str]:
        async with self._lock:
            out: dict[str, str] = {}
            now = time.time()
            for i in range(0, len(message_ids), 500):
                chunk = message_ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT message_id, outcome FROM outcomes WHERE until > ?"
                    f" AND message_id IN ({marks})", (now, *chunk)).fetchall()
                out.update(dict(rows))
            return out

    async def ping(self) -> None:
        self._db.execute("SELECT 1")

    async def close(self) -> None:
        self._db.close()


def open_store(url: str, prefix: str) -> DedupStore:
    if url.startswith("sqlite:///"):
        return SqliteDedup(url[len("sqlite:///"):])
    return RedisDedup(url, prefix)
