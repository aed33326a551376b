"""A validated hot reload of the configuration: ``POST /admin/config/reload`` and SIGHUP.

The candidate is built exactly as at start (``load_settings``: ETL_CONFIG_FILE over the
environment over a dotenv file over the defaults) and validated by the same rules; an
invalid one changes nothing. Of a valid one only the operational settings are swapped in,
all at once: they never change a result or the broker topology. Everything else differs
only with a restart and is refused with the reason, never silently ignored: the same input
must give the same outcome whenever (and by whichever worker) it is processed.

    swapped in   ETL_LOG_LEVEL, ETL_LOG_FORMAT, ETL_CONCURRENCY (up to the prefetch the
                 broker granted at start), ETL_TRACE_SAMPLE_RATIO, ETL_ADMIN_TOKEN
    refused      the rest (outputs and outcomes, queues and retries, connections)

ETL_CONFIG_FILE may set only the swapped-in settings (``settings.RELOADABLE``): any other
name there is an invalid candidate (at start, a refusal to start), so a restart-only
setting cannot reach the fleet one pod start at a time. What is refused here can then only
come from a dotenv file the worker reads, or a concurrency above the granted prefetch.

The answer: ``{ok, config_version, changed, refused: [{setting, reason}]}`` (``error``
for an invalid candidate, or one that could not be applied); ``ok`` is true when the
running configuration now is the candidate. ``config_version`` starts at 1 and counts the
reloads that changed something. The change is applied first and committed (version,
current configuration) only once that worked: a failed apply is undone and changes
nothing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from etl_engine.observability import metrics
from etl_engine.observability.logs import get_logger
from etl_engine.settings import ENV_PREFIX, RELOADABLE, ConfigError, Settings

log = get_logger("etl.config")

# What an input gives (its outcome, its record's bytes, where they go): the fleet must
# agree on these, so they change with a restart of every worker.
OUTPUTS = frozenset({
    "quality_threshold", "max_future_skew_s", "origin_priority", "idempotency_scheme",
    "require_content_hash", "bucket", "allowed_buckets", "raw_prefix", "training_prefix",
    "quarantine_prefix", "outcome_prefix", "compacted_prefix", "max_message_bytes",
    "max_object_bytes", "max_records", "max_decompressed_bytes", "message_timeout_s",
    "lineage_key", "full_lineage",
})
# Which queues exist, what they are declared with, and how a failure travels through them.
TOPOLOGY = frozenset({
    "exchange", "queue", "dlq", "retry_delays_ms", "delivery_limit", "max_attempts",
    "prefetch",
})
WHY = {
    "outputs": "changes outcomes or outputs: the same input must give the same outcome "
               "whenever it is processed; restart every worker",
    "topology": "changes the broker topology or the retry path: restart",
    "start": "read at start only (a connection, a process resource): restart",
}

# (the new configuration, the fields that changed, the config_version it will have)
Apply = Callable[[Settings, list[str], int], None]


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def differences(current: Settings, candidate: Settings) -> list[str]:
    """The settings (field names, declaration order) whose values differ."""
    return [name for name in type(current).model_fields
            if _plain(getattr(current, name)) != _plain(getattr(candidate, name))]


def refusal(field: str, candidate: Settings, granted_prefetch: int) -> str | None:
    """Why ``field`` may not change without a restart; None when it may."""
    if field == "concurrency":
        if candidate.concurrency > granted_prefetch:
            return (f"above the prefetch the broker granted at start ({granted_prefetch}; "
                    "ETL_PREFETCH): restart")
        return None
    if field in RELOADABLE:
        return None
    if field in OUTPUTS:
        return WHY["outputs"]
    if field in TOPOLOGY:
        return WHY["topology"]
    return WHY["start"]


class Reloader:
    """Holds the running configuration and its version; one reload at a time."""

    def __init__(self, settings: Settings, *, load: Callable[[], Settings], apply: Apply,
                 granted_prefetch: int) -> None:
        self.current = settings
        self.version = 1
        self._load = load
        self._apply = apply
        self._granted = granted_prefetch
        self._lock = asyncio.Lock()
        metrics.CONFIG_VERSION.set(self.version)

    async def reload(self, trigger: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer): 200 applied or unchanged, 409 something needs a restart
        (the rest was applied), 422 invalid, 500 the apply failed (nothing changed either
        way)."""
        async with self._lock:
            started = time.perf_counter()
            try:
                # reads the file (and a dotenv file): off the event loop
                candidate = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                return self._answer("invalid", trigger, started, error=str(exc))
            except Exception as exc:  # a loader's bug: still nothing changes
                return self._answer("invalid", trigger, started, error=type(exc).__name__)
            changed, refused = self._sort(candidate)
            if changed:
                new = self.current.model_copy(
                    update={f: getattr(candidate, f) for f in changed})
                try:  # synchronous: no delivery sees half of it
                    self._apply(new, changed, self.version + 1)
                except Exception as exc:
                    self._undo(changed)
                    return self._answer("failed", trigger, started,
                                        error=type(exc).__name__)
                self.version += 1  # committed only once applied
                self.current = new
                metrics.CONFIG_VERSION.set(self.version)
            result = "refused" if refused else "applied" if changed else "unchanged"
            return self._answer(result, trigger, started,
                                changed=[env_name(f) for f in changed], refused=refused)

    def _sort(self, candidate: Settings) -> tuple[list[str], list[dict[str, str]]]:
        """The differing fields: (to swap in, [{setting, reason}] refused)."""
        changed, refused = [], []
        for field in differences(self.current, candidate):
            why = refusal(field, candidate, self._granted)
            if why is None:
                changed.append(field)
            else:
                refused.append({"setting": env_name(field), "reason": why})
        return changed, refused

    def _undo(self, changed: list[str]) -> None:
        """Put back what a failed apply may have swapped in already (best effort: the
        running configuration is still ``current``, whatever the apply got to)."""
        try:
            self._apply(self.current, changed, self.version)
        except Exception as exc:
            log.error("config_reload_undo_failed", error=type(exc).__name__,
                      changed=[env_name(f) for f in changed])

    def _answer(self, result: str, trigger: str, started: float, *,
                changed: list[str] | None = None, refused: list[dict[str, str]] | None = None,
                error: str | None = None) -> tuple[int, dict[str, Any]]:
        metrics.CONFIG_RELOADS.labels(result).inc()
        body: dict[str, Any] = {
            "ok": result in ("applied", "unchanged"), "result": result,
            "config_version": self.version, "changed": changed or [],
            "refused": refused or [],
        }
        if error is not None:
            body["error"] = error
        event = {"invalid": log.warning, "refused": log.warning,
                 "failed": log.error}.get(result, log.info)
        event("config_reload", trigger=trigger, result=result, config_version=self.version,
              changed=body["changed"], refused=[r["setting"] for r in body["refused"]],
              error=error, duration_ms=round((time.perf_counter() - started) * 1000, 2))
        status = {"invalid": 422, "refused": 409, "failed": 500}.get(result, 200)
        return status, body


class ConcurrencyLimit:
    """At most ``limit`` deliveries processed at once; ``set`` changes it at run time.

    The broker's prefetch (granted at connect) bounds what the worker holds; this bounds
    what it works on. Raising the limit starts waiting deliveries at once; lowering it lets
    the running ones finish. The fast path (below the limit, nobody waiting) never
    suspends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)
