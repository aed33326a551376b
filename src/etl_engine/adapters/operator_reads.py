"""Read-only views of the DLQ and the quarantine, shared by the operator tools
(``ops/dlq.py``, ``ops/quarantine.py``) and the sidecar's admin API (``runtime/admin.py``).

Nothing here changes what it looks at. The DLQ is read with ``basic.get`` *without* ack on
a connection of its own, closed afterwards: the broker puts every fetched message back
(also when this process dies halfway). Each look is a redelivery of what it fetched (the
quorum queue counts it in ``x-delivery-count``), so callers bound how many they fetch and
how often (the admin API caches its answers).

What comes out carries no personal data unless the operator tools ask to ``reveal`` it:
user ids and the user part of object keys become the keyed pseudonym of the logs
(``observability/masking.py``); quarantine statistics are counts by reason code and
record type only.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from etl_engine.adapters.storage import Storage
from etl_engine.adapters.topology import (
    ATTEMPT_HEADER,
    REASON_HEADER,
    REPLAYED_HEADER,
    STAGE_HEADER,
    connect,
)
from etl_engine.domain import outcomes
from etl_engine.domain.messages import routing_key as make_routing_key
from etl_engine.errors import EtlError
from etl_engine.observability import masking
from etl_engine.observability.metrics import reason_label
from etl_engine.settings import Settings

ROUTING_PREFIX = "health.processing."
DEAD_LETTERED_AT_HEADER = "x-etl-dead-lettered-at"


# --- the DLQ ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message, described without its personal fields."""

    id: str
    message_id: str | None
    reason: str
    stage: str
    attempts: int
    record_type: str | None
    routing_key: str  # where a replay sends it
    dead_lettered_at: int | None
    worker: str | None
    size: int
    replayed: int


def message_key(message: AbstractIncomingMessage) -> str:
    """The id operators select by: the message id, else a digest of the body."""
    return message.message_id or "sha-" + hashlib.sha256(message.body).hexdigest()[:16]


def body_of(message: AbstractIncomingMessage) -> dict[str, Any] | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(message.body)
        return data if isinstance(data, dict) else None
    return None


def int_of(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def str_of(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def replay_routing_key(message: AbstractIncomingMessage) -> str:
    """The original topic routing key, else one built from the body, else a catch-all."""
    headers = message.headers or {}
    original = str_of(headers.get("x-etl-original-routing-key")) or ""
    if original.startswith(ROUTING_PREFIX):
        return original
    deaths = headers.get("x-death")  # dead-lettered by the broker itself
    for death in deaths if isinstance(deaths, list) else []:
        keys = death.get("routing-keys") if isinstance(death, dict) else None
        for key in keys if isinstance(keys, list) else []:
            if (text := str_of(key) or "").startswith(ROUTING_PREFIX):
                return text
    body = body_of(message)
    if body and isinstance(body.get("record_type"), str):
        priority = body.get("priority")
        return make_routing_key(body["record_type"],
                                priority if priority in ("low", "normal", "high") else "normal")
    return ROUTING_PREFIX + "unknown"


def dead_lettered_at(message: AbstractIncomingMessage) -> int | None:
    """When it was dead-lettered (epoch seconds): our header, else the broker's x-death."""
    headers = message.headers or {}
    ours = int_of(headers.get(DEAD_LETTERED_AT_HEADER), 0)
    if ours:
        return ours
    deaths = headers.get("x-death")
    for death in deaths if isinstance(deaths, list) else []:
        when = death.get("time") if isinstance(death, dict) else None
        if isinstance(when, datetime):
            return int(when.timestamp())
    return None


def describe(message: AbstractIncomingMessage, *, reveal: bool = False) -> DeadLetter:
    """The list row of a message; the body's user id masked wherever it shows, unless
    ``reveal`` (a publisher may have put it into the message id or a header)."""
    headers = message.headers or {}
    body = body_of(message) or {}
    if not reveal:
        return DeadLetter(**masking.mask(asdict(describe(message, reveal=True)),
                                         masking.user_ids_in(body)))
    reason = str_of(headers.get(REASON_HEADER)) or str_of(headers.get("x-first-death-reason"))
    attempts = int_of(headers.get(ATTEMPT_HEADER), 0) or int_of(headers.get("x-delivery-count"),
                                                                 0)
    record_type = body.get("record_type")
    return DeadLetter(
        id=message_key(message),
        message_id=message.message_id,
        reason=reason or "unknown",
        stage=str_of(headers.get(STAGE_HEADER)) or "",
        attempts=attempts or 1,
        record_type=record_type if isinstance(record_type, str) else None,
        routing_key=replay_routing_key(message),
        dead_lettered_at=dead_lettered_at(message),
        worker=str_of(headers.get("x-etl-worker")),
        size=len(message.body),
        replayed=int_of(headers.get(REPLAYED_HEADER), 0),
    )


@contextlib.asynccontextmanager
async def open_dlq(settings: Settings, *, url: str = "", confirms: bool = False
                   ) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue, int]]:
    """The DLQ (passively: nobody creates queues here) and its ready count, on a
    connection of its own (``url``, else ETL_AMQP_URL).

    Closing the connection on the way out returns every fetched, unacked message.
    """
    conn = await connect(url or settings.amqp_url.get_secret_value())
    try:
        channel = await conn.channel(publisher_confirms=confirms, on_return_raises=confirms)
        queue = await channel.declare_queue(settings.dlq_name, passive=True)
        count = queue.declaration_result.message_count or 0
        yield channel, queue, count
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def fetch(queue: AbstractQueue, limit: int) -> list[AbstractIncomingMessage]:
    """Up to ``limit`` messages, unacked (they return when the connection closes)."""
    out: list[AbstractIncomingMessage] = []
    while len(out) < limit:
        msg = await queue.get(no_ack=False, fail=False, timeout=10)
        if msg is None:
            break
        out.append(msg)
    return out


def dlq_stats(depth: int, rows: Iterable[DeadLetter], *, now: float | None = None
              ) -> dict[str, Any]:
    """Depth, the age of the oldest message looked at and counts by reason code (clipped
    like the metrics' reason label). ``scanned`` < ``depth``: the counts are of the first
    ``scanned`` messages (the oldest ones: the queue is first in, first out)."""
    now = time.time() if now is None else now
    rows = list(rows)
    stamps = [r.dead_lettered_at for r in rows if r.dead_lettered_at]
    return {
        "depth": depth,
        "scanned": len(rows),
        "complete": len(rows) >= depth,
        "oldest_age_s": round(max(0.0, now - min(stamps)), 1) if stamps else None,
        "by_reason": dict(Counter(reason_label(r.reason) for r in rows).most_common()),
    }


# --- the quarantine -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuarantineScan:
    """Bounds of one quarantine statistics run."""

    since: float  # epoch seconds: reason files written at or after this are counted
    max_listed: int = 100_000  # keys listed under the prefix before giving up (truncated)
    max_read: int = 2_000  # outcome records read (one small GET each)
    threads: int = 4


def quarantine_stats(storage: Storage, settings: Settings, scan: QuarantineScan
                     ) -> dict[str, Any]:
    """Counts of the uploads quarantined since ``scan.since``, by reason and record type.

    Each quarantined input is a copy plus ``<copy>.reason.json`` under
    ``{prefix}{RecordType}/{key name}/``; the record type comes from that path and the
    reason from the input's outcome record (``outcomes/{key name}.json``, the commit point),
    which the worker's own role may read (the reason file is operator-only). No key, id or
    value leaves this function: counts only.
    """
    recent, listed, truncated = _recent_reason_files(storage, settings, scan)
    read = recent[: scan.max_read]
    with ThreadPoolExecutor(max_workers=scan.threads, thread_name_prefix="etl-admin-q") as ex:
        reasons = list(ex.map(lambda k: _quarantine_reason(storage, settings, k), read))
    pairs = Counter(zip(reasons, (_record_type(settings, k) for k in read), strict=True))
    by_reason: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    for (reason, record_type), n in pairs.items():
        by_reason[reason] += n
        by_type[record_type] += n
    return {
        "total": len(recent),
        "counted": len(read),
        "listed": listed,
        "complete": not truncated and len(read) == len(recent),
        "by_reason": dict(by_reason.most_common()),
        "by_record_type": dict(by_type.most_common()),
        "by_reason_and_record_type": [
            {"reason": r, "record_type": t, "count": n} for (r, t), n in pairs.most_common()],
    }


def _recent_reason_files(storage: Storage, settings: Settings, scan: QuarantineScan
                         ) -> tuple[list[str], int, bool]:
    recent: list[str] = []
    listed = 0
    for key, modified in storage.list_modified(settings.bucket, settings.quarantine_prefix):
        listed += 1
        if listed > scan.max_listed:
            return recent, listed - 1, True
        if key.endswith(outcomes.REASON_SUFFIX) and modified.timestamp() >= scan.since:
            recent.append(key)
    return recent, listed, False


def _record_type(settings: Settings, reason_key: str) -> str:
    return reason_key[len(settings.quarantine_prefix):].split("/", 1)[0][:64] or "unknown"


def _quarantine_reason(storage: Storage, settings: Settings, reason_key: str) -> str:
    """The reason code of the quarantine: from the input's outcome record."""
    parts = reason_key[len(settings.quarantine_prefix):].split("/")
    if len(parts) < 3:
        return "unknown"
    try:
        record = orjson.loads(storage.get(settings.bucket,
                                          f"{settings.outcome_prefix}{parts[1]}.json"))
    except (EtlError, orjson.JSONDecodeError):
        return "unknown"  # released meanwhile, or unreadable
    if not isinstance(record, dict) or record.get("kind") != outcomes.OutcomeKind.QUARANTINED:
        return "unknown"
    return reason_label(str_of(record.get("reason")))
