"""Dead-letter queue tools: ``etl-engine dlq list | show ID | replay [ID ...|--all]``.

Nothing is lost by looking: messages are fetched with ``basic.get`` *without* ack and the
connection is closed afterwards, so the broker puts every one of them back, also when
this process dies halfway. Replay publishes a copy to the work exchange with publisher
confirms and acks the DLQ copy only once the broker confirmed the copy; a crash in
between leaves both, and the idempotency key (kept, like ``traceparent``) turns the
second one into a duplicate. So replaying twice is safe.

The copy is the same message: its body bytes (idempotency key, user, content hash: the
binding the worker checks), message id and correlation id are kept; only the failure
headers are dropped and the attempt reset. The input's outcome record says
``dead_letter``, and a worker obeys a record (it would answer ``duplicate`` and the input
would end with no outcome once the DLQ copy is acked), so before publishing, replay
deletes that record (only the version read, and only when it is bound to this very
message: a key-conflict newcomer never reopens the first input's outcome) and its DLQ
marker. A crash after that leaves the DLQ copy unacked: the input still has its entry.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry.trace import SpanKind

from etl_engine.adapters.operator_reads import (  # noqa: F401  (names the tools import)
    ROUTING_PREFIX,
    DeadLetter,
    describe,
    fetch,
    message_key,
    open_dlq,
    replay_routing_key,
)
from etl_engine.adapters.operator_reads import body_of as _body
from etl_engine.adapters.operator_reads import int_of as _int
from etl_engine.adapters.publisher import ConfirmGate, PublishFailed
from etl_engine.adapters.storage import Storage, make_client
from etl_engine.adapters.topology import (
    ATTEMPT_HEADER,
    LEASE_WAIT_HEADER,
    REASON_HEADER,
    REPLAYED_HEADER,
    STAGE_HEADER,
    copy_message,
)
from etl_engine.domain import outcomes, registry
from etl_engine.domain.messages import HealthDataMessage, parse_message
from etl_engine.errors import PoisonMessage
from etl_engine.observability import telemetry
from etl_engine.ops import conditional, display
from etl_engine.settings import Settings

# Headers describing the failure: dropped from a replayed copy (it starts afresh).
_FAILURE_HEADERS = frozenset({
    ATTEMPT_HEADER, LEASE_WAIT_HEADER, REASON_HEADER, STAGE_HEADER, "x-etl-worker",
    "x-etl-original-routing-key", "x-etl-dead-lettered-at", "x-etl-outcome-id", "x-death",
    "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
    "x-delivery-count", "x-etl-failed-deliveries",
})


def masked_body(message: AbstractIncomingMessage) -> Any:
    """The body for display: user id and key user part as pseudonyms (``--reveal``: the
    operator's call). An unparseable body is not shown at all unless revealed."""
    body = _body(message)
    if body is None:
        return {"unparseable_body_bytes": len(message.body)}
    return display.mask(body, display.user_ids_in(body))


class QueueAbsent(Exception):
    """The DLQ does not exist yet: no worker has declared the topology, so nothing can
    have been dead-lettered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the dead-letter queue {name} does not exist yet (a worker "
                         "declares it when it starts): nothing has been dead-lettered")
        self.name = name


@contextlib.asynccontextmanager
async def _dlq(settings: Settings, *, confirms: bool = False
               ) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue, int]]:
    """The DLQ and its ready count (``operator_reads.open_dlq``, shared with the sidecar's
    admin API); the tools' seam. QueueAbsent when no worker has declared it yet."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            opened = await stack.enter_async_context(open_dlq(settings, confirms=confirms))
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueAbsent(settings.dlq_name) from None
        yield opened


_fetch = fetch


async def list_dead_letters(settings: Settings, *, limit: int = 1000, reveal: bool = False
                            ) -> tuple[list[DeadLetter], int]:
    """(described messages, total ready in the DLQ); the queue is left as it was."""
    async with _dlq(settings) as (_, queue, count):
        messages = await _fetch(queue, min(limit, count))
        return [describe(m, reveal=reveal) for m in messages], count


def show_document(msg: AbstractIncomingMessage, *, reveal: bool = False) -> dict[str, Any]:
    """What ``dlq show`` prints: the list row, the headers and the body, user ids masked
    everywhere unless ``reveal`` (then the body as sent, parsed if it is JSON)."""
    doc = {
        **asdict(describe(msg, reveal=True)),
        "headers": {k: _plain(v) for k, v in (msg.headers or {}).items()},
        "body": _body(msg) or msg.body.decode("utf-8", "replace"),
    }
    if reveal:
        return doc
    doc["body"] = masked_body(msg)
    return dict(display.mask(doc, display.user_ids_in(_body(msg) or {})))


def selected(msg: AbstractIncomingMessage, wanted: set[str]) -> bool:
    """Named by its id, its message id, or the masked id that ``dlq list`` printed."""
    return bool({message_key(msg), msg.message_id, describe(msg).id} & wanted)


async def show(settings: Settings, wanted: str, *, reveal: bool = False
               ) -> dict[str, Any] | None:
    async with _dlq(settings) as (_, queue, count):
        for msg in await _fetch(queue, count):
            if selected(msg, {wanted}):
                return show_document(msg, reveal=reveal)
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def replay_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """Failure bookkeeping dropped, attempt reset; traceparent and the rest kept."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _FAILURE_HEADERS}
    headers[ATTEMPT_HEADER] = 1
    headers[REPLAYED_HEADER] = _int((message.headers or {}).get(REPLAYED_HEADER), 0) + 1
    return headers


def _parsed(settings: Settings, message: AbstractIncomingMessage) -> HealthDataMessage | None:
    """The body as the worker parses it (same checks); None for a message it refuses."""
    try:
        return parse_message(
            message.body, amqp_message_id=message.message_id,
            allowed_buckets=settings.allowed_bucket_set, supported_types=registry.names(),
            raw_prefix=settings.raw_prefix, max_bytes=settings.max_message_bytes,
            amqp_correlation_id=message.correlation_id,
            require_hash=settings.require_content_hash, scheme=settings.idempotency_scheme)
    except PoisonMessage:
        return None


class Reopen(enum.Enum):
    """What ``reopen`` did with the input's outcome record."""

    REOPENED = "reopened"  # this message's dead_letter record (and marker) deleted
    NO_RECORD = "no_record"  # nothing recorded for it: the copy is decided afresh
    KEPT = "kept"  # a record the tool may not reopen: replaying would be acked unprocessed


def reopen(storage: Storage, settings: Settings, message: AbstractIncomingMessage) -> Reopen:
    """Delete the input's ``dead_letter`` outcome record and DLQ marker, if the record is
    bound to this message (see the module docstring)."""
    msg = _parsed(settings, message)
    if msg is None:
        # The tool's settings may not parse what the fleet's did (another scheme, bucket
        # list, prefix): a record under the body's own key must not be left behind.
        return Reopen.KEPT if _recorded_under_body_key(storage, settings, message) else (
            Reopen.NO_RECORD)
    key = outcomes.outcome_key(settings.outcome_prefix, msg.idempotency_key)
    found = conditional.get(storage, settings.bucket, key)
    if found is None:
        return Reopen.NO_RECORD
    with contextlib.suppress(orjson.JSONDecodeError):
        record = orjson.loads(found[0])
        bound = outcomes.binding(msg.bucket, msg.key, msg.record_type, msg.content_hash)
        if not isinstance(record, dict) or record.get("binding") != bound:
            return Reopen.NO_RECORD  # another input's record: this copy conflicts again
        if record.get("kind") != "dead_letter":
            return Reopen.NO_RECORD  # its outcome (a result, a quarantine) stands: a duplicate
        if conditional.delete(storage, settings.bucket, key,
                              found[1]) is conditional.Deleted.CHANGED:
            return Reopen.KEPT
        storage.delete(settings.bucket, outcomes.dlq_marker_key(
            settings.outcome_prefix, msg.idempotency_key, str(record.get("outcome_id", ""))))
        return Reopen.REOPENED
    return Reopen.KEPT


def _recorded_under_body_key(storage: Storage, settings: Settings,
                             message: AbstractIncomingMessage) -> bool:
    try:
        body = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return False
    ikey = body.get("idempotency_key") if isinstance(body, dict) else None
    if not isinstance(ikey, str) or not ikey:
        return False
    found = conditional.get(storage, settings.bucket,
                            outcomes.outcome_key(settings.outcome_prefix, ikey))
    if found is None:
        return False
    try:
        record = orjson.loads(found[0])
    except orjson.JSONDecodeError:
        return True
    bound = record.get("binding") if isinstance(record, dict) else None
    # the fleet recorded this very upload (same object): not a conflicting newcomer
    return isinstance(bound, dict) and (bound.get("bucket"), bound.get("key")) == (
        body.get("bucket"), body.get("key"))


async def replay(settings: Settings, ids: list[str] | None, storage: Storage | None = None
                 ) -> list[tuple[str, str]]:
    """Replay the messages named by ``ids`` (``None``: all). Returns (id as named, else as
    ``list`` shows it, routing key).

    Only the messages ready when it starts are considered, so a message that fails again
    and comes back to the DLQ while this runs is not replayed a second time.
    """
    wanted = set(ids or [])
    done: list[tuple[str, str]] = []
    kept: list[str] = []
    left: list[tuple[str, str]] = []  # (key, why) once a copy was not confirmed
    storage = storage or Storage(make_client(settings))
    gate = ConfirmGate(settings.publish_confirm_timeout_s)
    async with _dlq(settings, confirms=True) as (channel, queue, count):
        exchange = await channel.get_exchange(settings.exchange, ensure=True)
        fetched = await _fetch(queue, count)
        for at, msg in enumerate(fetched):
            key = message_key(msg)
            if ids is not None and not selected(msg, wanted):
                continue  # left unacked: returns to the DLQ when the connection closes
            rk = replay_routing_key(msg)
            headers = replay_headers(msg)
            if reopen(storage, settings, msg) is Reopen.KEPT:
                kept.append(key)
                continue  # left unacked: a replay now would be answered "duplicate"
            with telemetry.span(
                f"publish {settings.exchange}", kind=SpanKind.PRODUCER,
                parent=telemetry.extract(headers),
                attributes={**telemetry.messaging_attributes(
                    "publish", settings.exchange, routing_key=rk,
                    message_id=msg.message_id), "etl.replay": True},
            ):
                try:
                    await gate.publish(exchange, copy_message(msg, headers), rk)
                except PublishFailed as exc:
                    # left unacked (back to the DLQ); the broker is in trouble: stop here
                    left.append((key, UNCONFIRMED_ROUTE.format(exc.failure.value)))
                    left += [(message_key(m), NOT_ATTEMPTED_ROUTE) for m in fetched[at + 1:]
                             if ids is None or selected(m, wanted)]
                    break
            await msg.ack()  # only now: the copy is safely in the work queue
            shown = describe(msg).id  # masked if the publisher put a user id into it
            done.append((next((w for w in (key, msg.message_id) if w in wanted), shown), rk))
    return done + [(key, KEPT_ROUTE) for key in kept] + left


KEPT_ROUTE = "(kept in the DLQ: its outcome record could not be reopened; check ETL_* "
"settings match the fleet's)"
# Within ETL_PUBLISH_CONFIRM_TIMEOUT_S (a memory alarm must not hang the tool). A copy
# whose confirm was lost may still have reached the work queue and be decided afresh (its
# dead-letter record was reopened): the entry left here then stands beside that outcome
# until the next replay, which is answered "duplicate" and acks it (or, had the copy
# failed again, finds its new DLQ entry beside this one).
UNCONFIRMED_ROUTE = ("(left in the DLQ: the broker did not confirm the copy ({}); the "
                     "replay stopped here. Run it again once the broker is well)")
NOT_ATTEMPTED_ROUTE = "(left in the DLQ: not attempted, the replay stopped before it)"


def was_kept(route: str) -> bool:
    """A route ``replay`` gives for a message it left in the DLQ."""
    return route in (KEPT_ROUTE, NOT_ATTEMPTED_ROUTE) or route.startswith(
        UNCONFIRMED_ROUTE[:20])


def age(ts: int | None) -> str:
    if not ts:
        return "-"
    secs = max(0, int(time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"
