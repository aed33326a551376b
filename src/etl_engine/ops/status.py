"""``etl-engine status``: queue depths from the broker and per-worker figures from sidecars.

Queue depths and consumer counts come from passive declares (no management plugin
needed); worker figures from each sidecar's ``/health`` and ``/metrics``. Rates are
deltas between two samples: the deliver rate is what the workers settled, the publish
rate is that plus the growth of the work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import orjson
from prometheus_client.parser import text_string_to_metric_families

from etl_engine.ops.display import safe
from etl_engine.settings import Settings

LOCAL_SIDECAR = "http://127.0.0.1:8004"
_CLEAR = "\x1b[H\x1b[2J"


@dataclass(slots=True)
class QueueFigures:
    role: str
    name: str
    messages: int | None  # None: the queue does not exist (or the broker is unreachable)
    consumers: int | None


@dataclass(slots=True)
class WorkerFigures:
    url: str
    error: str | None = None
    worker_id: str = "-"
    status: str = "-"
    uptime_s: float = 0.0
    in_flight: float = 0.0
    outcomes: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    @property
    def settled(self) -> float:
        return sum(self.outcomes.values())


@dataclass(slots=True)
class Snapshot:
    at: float
    queues: list[QueueFigures]
    workers: list[WorkerFigures]
    broker_error: str | None = None


# --- collection ---------------------------------------------------------------------------
def queue_names(settings: Settings) -> list[tuple[str, str]]:
    retry = [(f"retry {d}ms", settings.retry_queue_name(i))
             for i, d in enumerate(settings.retry_delays)]
    return [("work", settings.queue), *retry, ("dead letters", settings.dlq_name)]


async def queue_figures(settings: Settings) -> tuple[list[QueueFigures], str | None]:
    import aio_pika

    names = queue_names(settings)
    try:
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=5)
    except Exception as exc:
        return [QueueFigures(r, n, None, None) for r, n in names], type(exc).__name__
    out = []
    async with conn:
        for role, name in names:
            try:
                # A passive declare of a missing queue closes the channel: one per queue.
                channel = await conn.channel()
                q = await channel.declare_queue(name, passive=True)
                res = q.declaration_result
                out.append(QueueFigures(role, name, res.message_count, res.consumer_count))
                await channel.close()
            except Exception:
                out.append(QueueFigures(role, name, None, None))
    return out, None


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:  # /health answers 503 with a body when degraded
        return bytes(exc.read())


def scrape(url: str, timeout: float = 3.0) -> WorkerFigures:
    base = url.rstrip("/")
    figures = WorkerFigures(url=base)
    try:
        health = orjson.loads(_get(base + "/health", timeout))
        text = _get(base + "/metrics", timeout).decode()
    except (OSError, ValueError) as exc:
        figures.error = type(exc).__name__
        return figures
    figures.worker_id = str(health.get("worker_id", "-"))
    figures.status = str(health.get("status", "-"))
    figures.uptime_s = float(health.get("uptime_s") or 0.0)
    parse_metrics(text, figures)
    return figures


def parse_metrics(text: str, figures: WorkerFigures) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "etl_messages_total":
                outcome = sample.labels.get("outcome", "?")
                figures.outcomes[outcome] = figures.outcomes.get(outcome, 0.0) + sample.value
            elif sample.name == "etl_messages_in_flight":
                figures.in_flight = sample.value
            elif sample.name == "etl_processing_duration_seconds_bucket":
                le = float(sample.labels["le"])
                figures.buckets[le] = figures.buckets.get(le, 0.0) + sample.value


async def snapshot(settings: Settings, sidecars: list[str]) -> Snapshot:
    queues_task = asyncio.create_task(queue_figures(settings))
    workers = await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in sidecars))
    queues, broker_error = await queues_task
    return Snapshot(time.time(), queues, list(workers), broker_error)


# --- figures ------------------------------------------------------------------------------
def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' estimate from cumulative buckets (linear within the bucket)."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound is the best guess
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return ordered[-1][0]


def _delta_buckets(now: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    delta = {le: now[le] - before.get(le, 0.0) for le in now}
    return delta if delta and max(delta.values()) > 0 else now


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def render(current: Snapshot, previous: Snapshot | None) -> str:
    dt = current.at - previous.at if previous else 0.0
    lines = [f"etl-engine status   {time.strftime('%Y-%m-%d %H:%M:%S')}"
             + (f"   (rates over {dt:.1f} s)" if dt else ""), ""]
    if current.broker_error:
        lines.append(f"broker unreachable ({current.broker_error})")
    lines.append(f"{'queue':<14} {'name':<44} {'ready':>8} {'consumers':>10}")
    for q in current.queues:
        ready = "absent" if q.messages is None else str(q.messages)
        consumers = "-" if q.consumers is None else str(q.consumers)
        lines.append(f"{q.role:<14} {q.name:<44} {ready:>8} {consumers:>10}")
    deliver = publish = None
    if previous and dt > 0:
        before = {w.url: w for w in previous.workers if not w.error}
        settled = [w.settled - before[w.url].settled for w in current.workers
                   if not w.error and w.url in before]
        if settled:
            deliver = max(0.0, sum(settled)) / dt
            work_now = current.queues[0].messages
            work_before = previous.queues[0].messages
            if work_now is not None and work_before is not None:
                publish = max(0.0, deliver + (work_now - work_before) / dt)
    lines += ["", f"deliver rate (settled by workers) {_rate(deliver)}   "
                  f"publish rate (est.) {_rate(publish)}", ""]
    lines.append(f"{'worker':<28} {'status':<9} {'proc/s':>7} {'in-flight':>9} {'processed':>9} "
                 f"{'dup':>6} {'quar':>6} {'dlq':>6} {'p50':>8} {'p95':>8}")
    prev_by_url = {w.url: w for w in previous.workers} if previous else {}
    for w in current.workers:
        if w.error:
            lines.append(f"{w.url:<28} unreachable ({w.error})")
            continue
        last = prev_by_url.get(w.url)
        rate: float | None
        if last and not last.error and dt > 0:
            rate = (w.outcomes.get("processed", 0) - last.outcomes.get("processed", 0)) / dt
            buckets = _delta_buckets(w.buckets, last.buckets)
        else:
            rate = w.outcomes.get("processed", 0) / w.uptime_s if w.uptime_s else None
            buckets = w.buckets
        dead = w.outcomes.get("dead_lettered", 0) + w.outcomes.get("rejected", 0)
        lines.append(
            f"{w.worker_id[:28]:<28} {w.status:<9} {_rate(rate).removesuffix('/s'):>7} "
            f"{w.in_flight:>9.0f} {w.outcomes.get('processed', 0):>9.0f} "
            f"{w.outcomes.get('duplicate', 0):>6.0f} {w.outcomes.get('quarantined', 0):>6.0f} "
            f"{dead:>6.0f} {_ms(histogram_quantile(0.5, buckets)):>8} "
            f"{_ms(histogram_quantile(0.95, buckets)):>8}")
    if not current.workers:
        lines.append("(no sidecars given)")
    # Worker ids, statuses and URLs come from the sidecars: nothing reaches the terminal raw.
    return "\n".join(safe(line) for line in lines)


async def run(settings: Settings, sidecars: list[str], *, once: bool, interval: float,
              window: float = 1.0) -> int:
    """``once``: two samples ``window`` apart, one report. Else refresh until Ctrl-C."""
    if once:
        first = await snapshot(settings, sidecars)
        await asyncio.sleep(window)
        second = await snapshot(settings, sidecars)
        print(render(second, first))
        return 0 if second.broker_error is None else 1
    previous: Snapshot | None = None
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        while True:
            current = await snapshot(settings, sidecars)
            out = render(current, previous)
            sys.stdout.write((_CLEAR if sys.stdout.isatty() else "") + out + "\n")
            sys.stdout.flush()
            previous = current
            await asyncio.sleep(interval)
    return 0
