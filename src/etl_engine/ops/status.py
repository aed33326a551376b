"""``etl-engine status``: queue depths from the broker and per-worker figures from sidecars.

Queue depths and consumer counts come from passive declares (no management plugin
needed); worker figures from each sidecar's ``/health`` and ``/metrics``. Rates are
deltas between two samples: the deliver rate is what the workers settled, the publish
rate is that plus the growth of the work queue.

Without ``--targets`` the sidecars are found on this host: every port of the native
stack's range (8004 onwards, one per worker) that answers ``/health`` like a sidecar,
looked up again on every refresh, so a scaled fleet shows whole. ``check`` is
``etl-engine worker --check``: one probe of this host's sidecar, for health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from prometheus_client.parser import text_string_to_metric_families

from etl_engine.errors import ExitCode
from etl_engine.ops.display import safe, safe_data
from etl_engine.settings import Settings


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
    broker_exception: BaseException | None = None  # for the one line `--once` says


# --- collection ---------------------------------------------------------------------------
def queue_names(settings: Settings) -> list[tuple[str, str]]:
    retry = [(f"retry {d}ms", settings.retry_queue_name(i))
             for i, d in enumerate(settings.retry_delays)]
    return [("work", settings.queue), *retry, ("dead letters", settings.dlq_name)]


async def queue_figures(settings: Settings
                        ) -> tuple[list[QueueFigures], BaseException | None]:
    from etl_engine.adapters.topology import connect

    names = queue_names(settings)
    try:
        conn = await connect(settings.amqp_url.get_secret_value(), timeout=5)
    except Exception as exc:
        return [QueueFigures(r, n, None, None) for r, n in names], exc
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


# Sidecars are on this host or named by URL: never through $http_proxy (a proxy would
# answer for 127.0.0.1 itself, or refuse it).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What a port that is not a sidecar can make a probe raise: a refused or reset socket, a
# reply that is not HTTP, a body that is not the JSON or the metrics text expected.
PROBE_ERRORS = (OSError, ValueError, TypeError, http.client.HTTPException)


def _get(url: str, timeout: float, limit: int = 8 * 1024 * 1024) -> bytes:
    """The body (at most ``limit`` bytes) of a GET, also of an HTTP error answer."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return bytes(resp.read(limit))
    except urllib.error.HTTPError as exc:  # /health answers 503 with a body when degraded
        return bytes(exc.read(limit))


def scrape(url: str, timeout: float = 3.0) -> WorkerFigures:
    base = url.rstrip("/")
    figures = WorkerFigures(url=base)
    try:
        health = orjson.loads(_get(base + "/health", timeout))
        if not isinstance(health, dict):
            raise ValueError("/health is not a JSON object")
        text = _get(base + "/metrics", timeout).decode()
        figures.worker_id = str(health.get("worker_id", "-"))
        figures.status = str(health.get("status", "-"))
        figures.uptime_s = float(health.get("uptime_s") or 0.0)
        parse_metrics(text, figures)
    except PROBE_ERRORS as exc:
        return WorkerFigures(url=base, error=type(exc).__name__)
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
    queues, broker_exc = await queues_task
    return Snapshot(time.time(), queues, list(workers),
                    None if broker_exc is None else type(broker_exc).__name__, broker_exc)


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


def report(current: Snapshot, previous: Snapshot | None) -> dict[str, Any]:
    """The figures of one sample (rates from the previous one): what ``--json`` prints
    and the text view shows."""
    dt = current.at - previous.at if previous else 0.0
    return {
        "at": datetime.fromtimestamp(current.at, UTC).isoformat(timespec="seconds"),
        "interval_s": round(dt, 3) if dt else None,
        "broker_error": current.broker_error,
        "queues": [{"role": q.role, "name": q.name, "ready": q.messages,
                    "consumers": q.consumers} for q in current.queues],
        **_fleet_rates(current, previous, dt),
        "workers": [_worker_row(w, previous, dt) for w in current.workers],
    }


def _fleet_rates(current: Snapshot, previous: Snapshot | None, dt: float
                 ) -> dict[str, float | None]:
    deliver = publish = None
    if previous and dt > 0:
        before = {w.url: w for w in previous.workers if not w.error}
        settled = [w.settled - before[w.url].settled for w in current.workers
                   if not w.error and w.url in before]
        if settled:
            deliver = max(0.0, sum(settled)) / dt
            work_now = current.queues[0].messages if current.queues else None
            work_before = previous.queues[0].messages if previous.queues else None
            if work_now is not None and work_before is not None:
                publish = max(0.0, deliver + (work_now - work_before) / dt)
    return {"deliver_rate": deliver, "publish_rate": publish}


def _worker_row(w: WorkerFigures, previous: Snapshot | None, dt: float) -> dict[str, Any]:
    if w.error:
        return {"url": w.url, "error": w.error}
    last = next((p for p in previous.workers if p.url == w.url), None) if previous else None
    rate: float | None
    if last and not last.error and dt > 0:
        rate = (w.outcomes.get("processed", 0) - last.outcomes.get("processed", 0)) / dt
        buckets = _delta_buckets(w.buckets, last.buckets)
    else:
        rate = w.outcomes.get("processed", 0) / w.uptime_s if w.uptime_s else None
        buckets = w.buckets
    p50, p95 = histogram_quantile(0.5, buckets), histogram_quantile(0.95, buckets)
    return {
        "url": w.url, "error": None, "worker_id": w.worker_id, "status": w.status,
        "processed_per_s": rate, "in_flight": w.in_flight,
        "processed": w.outcomes.get("processed", 0),
        "duplicate": w.outcomes.get("duplicate", 0),
        "quarantined": w.outcomes.get("quarantined", 0),
        "dead_lettered": w.outcomes.get("dead_lettered", 0) + w.outcomes.get("rejected", 0),
        "p50_ms": None if p50 is None else p50 * 1000,
        "p95_ms": None if p95 is None else p95 * 1000,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def render(current: Snapshot, previous: Snapshot | None, *, discovered: bool = False,
           ports: range | None = None) -> str:
    doc = report(current, previous)
    dt = doc["interval_s"]
    lines = [f"etl-engine status   {time.strftime('%Y-%m-%d %H:%M:%S')}"
             + (f"   (rates over {dt:.1f} s)" if dt else ""), ""]
    if doc["broker_error"]:
        lines.append(f"broker unreachable ({doc['broker_error']})")
    lines.append(f"{'queue':<14} {'name':<44} {'ready':>8} {'consumers':>10}")
    for q in doc["queues"]:
        ready = "absent" if q["ready"] is None else str(q["ready"])
        consumers = "-" if q["consumers"] is None else str(q["consumers"])
        lines.append(f"{q['role']:<14} {q['name']:<44} {ready:>8} {consumers:>10}")
    lines += ["", f"deliver rate (settled by workers) {_rate(doc['deliver_rate'])}   "
                  f"publish rate (est.) {_rate(doc['publish_rate'])}", ""]
    lines.append(f"{'worker':<28} {'status':<9} {'proc/s':>7} {'in-flight':>9} {'processed':>9} "
                 f"{'dup':>6} {'quar':>6} {'dlq':>6} {'p50':>8} {'p95':>8}")
    for w in doc["workers"]:
        if w["error"]:
            lines.append(f"{w['url']:<28} unreachable ({w['error']})")
            continue
        lines.append(
            f"{w['worker_id'][:28]:<28} {w['status']:<9} "
            f"{_rate(w['processed_per_s']).removesuffix('/s'):>7} "
            f"{w['in_flight']:>9.0f} {w['processed']:>9.0f} {w['duplicate']:>6.0f} "
            f"{w['quarantined']:>6.0f} {w['dead_lettered']:>6.0f} {_ms(w['p50_ms']):>8} "
            f"{_ms(w['p95_ms']):>8}")
    if not doc["workers"]:
        searched = ports if ports is not None else DISCOVERY_PORTS
        lines.append("(no worker sidecar found on 127.0.0.1 ports "
                     f"{_port_text(searched)}; --ports FIRST-LAST, --targets URL,...)"
                     if discovered else "(no sidecars given)")
    # Worker ids, statuses and URLs come from the sidecars: nothing reaches the terminal raw.
    return "\n".join(safe(line) for line in lines)


def _port_text(ports: range) -> str:
    return str(ports.start) if len(ports) == 1 else f"{ports.start}-{ports.stop - 1}"


# --- discovery ------------------------------------------------------------------------------
# Native workers of scripts/manage-etl-stack.sh listen on SIDECAR_BASE_PORT (8004) + i - 1.
DISCOVERY_PORTS = range(8004, 8004 + 32)


def _is_sidecar(port: int, host: str, timeout: float) -> bool:
    """Whether ``host:port`` answers ``/health`` like a sidecar; anything else listening
    there (another service, a port that answers garbage) is just not one."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
        health = orjson.loads(_get(f"http://{host}:{port}/health", timeout, limit=64 * 1024))
    except PROBE_ERRORS:
        return False
    return isinstance(health, dict) and "worker_id" in health


async def discover(ports: range = DISCOVERY_PORTS, host: str = "127.0.0.1",
                   timeout: float = 0.5) -> list[str]:
    """Base URLs of the worker sidecars answering on ``host`` in ``ports``: anything
    listening there that does not answer ``/health`` like a sidecar is left out."""
    found = await asyncio.gather(*(asyncio.to_thread(_is_sidecar, p, host, timeout)
                                   for p in ports))
    return [f"http://{host}:{p}" for p, ok in zip(ports, found, strict=True) if ok]


# --- the command ----------------------------------------------------------------------------
Targets = Callable[[], Awaitable[list[str]]]


def fixed(urls: list[str]) -> Targets:
    async def given() -> list[str]:
        return urls
    return given


def _emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(safe_data(doc)).decode() + "\n")
    sys.stdout.flush()


async def run(settings: Settings, targets: Targets, *, once: bool, interval: float,
              window: float = 1.0, as_json: bool = False, discovered: bool = False,
              ports: range | None = None) -> int:
    """``once``: two samples ``window`` apart, one report, exit 69 (one line on stderr)
    when the broker could not be reached. Else refresh until Ctrl-C (``as_json``: one JSON
    document a line per refresh)."""
    if once:
        first = await snapshot(settings, await targets())
        await asyncio.sleep(window)
        second = await snapshot(settings, [w.url for w in first.workers] or await targets())
        if as_json:
            _emit_json(report(second, first))
        else:
            print(render(second, first, discovered=discovered, ports=ports))
        if second.broker_exception is None:
            return ExitCode.OK
        from etl_engine.ops import failures

        sys.stdout.flush()
        found = failures.unavailable(second.broker_exception)
        failures.say("status", str(found) if found else
                     f"RabbitMQ is unreachable ({second.broker_error}): check ETL_AMQP_URL")
        return ExitCode.UNAVAILABLE
    screen = Screen(sys.stdout, enabled=sys.stdout.isatty() and not as_json)
    previous: Snapshot | None = None
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError), screen:
        while True:
            current = await snapshot(settings, await targets())
            if as_json:
                _emit_json(report(current, previous))
            else:
                screen.draw(render(current, previous, discovered=discovered, ports=ports))
            previous = current
            await asyncio.sleep(interval)
    return 0


class Screen:
    """Redraw in place without flicker: the terminal's alternate screen, the cursor
    hidden, every frame written over the last (home, each line erased to its end, the
    rest below erased) instead of clearing first. The last frame stays on the normal
    screen afterwards. Not a terminal: each frame printed after the previous one."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.last = ""

    def __enter__(self) -> Screen:
        if self.enabled:
            self.stream.write("\x1b[?1049h\x1b[?25l")
        return self

    def draw(self, frame: str) -> None:
        self.last = frame
        if self.enabled:
            body = "".join(line + "\x1b[K\n" for line in frame.split("\n"))
            self.stream.write("\x1b[H" + body + "\x1b[J")
        else:
            self.stream.write(frame + "\n\n")
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stream.write("\x1b[?25h\x1b[?1049l")
            if self.last:
                self.stream.write(self.last + "\n")
            self.stream.flush()


# --- worker --check -------------------------------------------------------------------------
def probe_address(host: str) -> str:
    """Where this host reaches its own sidecar: a wildcard bind answers on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def check(host: str, port: int, path: str = "/ready", timeout: float = 4.0
          ) -> tuple[bool, str]:
    """(healthy, one line) for the sidecar at ETL_SIDECAR_HOST/PORT ``host``:``port``
    (``/ready`` or ``/live``); anything but a 200 from it is unhealthy, never an error."""
    if not port:
        return False, "ETL_SIDECAR_PORT=0 (any free port): no fixed port to probe"
    url = f"http://{probe_address(host)}:{port}{path}"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            body = resp.read(4096)
            return True, f"{url}: {resp.status} {body.decode('utf-8', 'replace').strip()}"
    except urllib.error.HTTPError as exc:
        body = exc.read(4096).decode("utf-8", "replace").strip()
        return False, f"{url}: {exc.code} {body}"
    except PROBE_ERRORS as exc:
        return False, f"{url}: unreachable ({type(exc).__name__})"
