"""The chaos harness: a fleet of real worker processes, the ledger, per-scenario summaries.

``ETL_CHAOS_LONG=1`` (``scripts/chaos.sh --long``) scales the message counts up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl_engine.adapters.publisher import Publisher, Upload, describe_upload, upload_file
from etl_engine.adapters.storage import Storage, make_client
from etl_engine.domain.messages import upload_idempotency_key
from etl_engine.settings import Settings, load_settings
from helpers import WorkerProcess, descendants, labelled_user, sample_files, upload_key

from .ledger import Ledger, Verdict, render, write_summary

LONG = os.environ.get("ETL_CHAOS_LONG", "") not in ("", "0")


def scale(ci: int, long: int) -> int:
    """Message counts: small for CI, larger with ``--long`` (ETL_CHAOS_LONG=1)."""
    return long if LONG else ci


class Fleet:
    """Worker processes started by one test; every one is killed at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.workers: dict[str, WorkerProcess] = {}
        self.started: list[WorkerProcess] = []
        self._children: dict[int, list[int]] = {}
        self.kills = 0
        self.restarts = 0

    def start(self, name: str = "w", *, fault_point: str = "", **overrides: str
              ) -> WorkerProcess:
        """A worker process; ``fault_point`` gives it a crash point (faulty_worker.py)."""
        n = sum(1 for w in self.started if w.log_path.name.startswith(f"{name}-"))
        if name in self.workers:
            self.restarts += 1
        w = WorkerProcess(self.env, self.log_dir / f"{name}-{n}.log", fault_point=fault_point,
                          **overrides)
        self.workers[name] = w
        self.started.append(w)
        return w

    async def wait_consuming(self, w: WorkerProcess, timeout: float = 30.0) -> bool:
        """True once the worker consumes; False if it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if w.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError):
                _, body = w.get("/health")
                if orjson.loads(body).get("components", {}).get("consumer") == "up":
                    self._children[w.proc.pid] = descendants(w.proc.pid)
                    return True
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker not consuming: {w.log_path.read_text()[-3000:]}")

    async def up(self, name: str = "w", **overrides: str) -> WorkerProcess:
        w = self.start(name, **overrides)
        assert await self.wait_consuming(w), w.log_path.read_text()[-3000:]
        return w

    def health(self, w: WorkerProcess) -> dict[str, Any]:
        try:
            return dict(orjson.loads(w.get("/health")[1]))
        except Exception:
            return {}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal a worker; returns how many messages it had in flight just before."""
        w = self.workers[name]
        self._children[w.proc.pid] = descendants(w.proc.pid)
        in_flight = int(self.health(w).get("in_flight") or 0)
        w.signal(sig)
        if sig == signal.SIGKILL:
            self.kills += 1
            with contextlib.suppress(Exception):
                w.proc.wait(10)
            self._reap(w)
        return in_flight

    def _reap(self, w: WorkerProcess) -> None:
        """Decode children of a killed worker go with it (as in a container)."""
        for pid in self._children.pop(w.proc.pid, []) + descendants(w.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def stop_all(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every live worker and wait; returns exit codes by log name."""
        codes: dict[str, int | None] = {}
        live = [w for w in self.started if w.proc.poll() is None]
        for w in live:
            self._children[w.proc.pid] = descendants(w.proc.pid)
            w.signal(signal.SIGCONT)
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in live:
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            codes[w.log_path.stem] = w.proc.poll()
        self.kill_all()
        return codes

    def kill_all(self) -> None:
        for w in self.started:
            if w.proc.poll() is None:
                self._children[w.proc.pid] = descendants(w.proc.pid)
                w.signal(signal.SIGCONT)
                w.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    w.proc.wait(10)
            self._reap(w)
            with contextlib.suppress(Exception):
                w._log.close()

    def events(self, event: str | None = None, *, worker: WorkerProcess | None = None
               ) -> list[dict[str, Any]]:
        """JSON log events of every worker started (or of one)."""
        out: list[dict[str, Any]] = []
        for w in [worker] if worker is not None else self.started:
            with contextlib.suppress(OSError):
                for line in w.log_path.read_bytes().splitlines():
                    with contextlib.suppress(orjson.JSONDecodeError):
                        item = orjson.loads(line)
                        if isinstance(item, dict) and (event is None
                                                       or item.get("event") == event):
                            out.append(item)
        return out

    def reconnect_s(self, since_wall: float) -> list[float]:
        """Per live worker: seconds from ``since_wall`` (time.time()) to its first
        ``consuming`` log event after it, i.e. back on the broker with a consumer."""
        out = []
        for w in self.workers.values():
            times = [_ts(e) for e in self.events("consuming", worker=w)]
            later = [t for t in times if t >= since_wall]
            if later:
                out.append(round(min(later) - since_wall, 2))
        return out

    def figures(self) -> dict[str, Any]:
        settled = self.events("message_settled")
        return {
            "worker_processes_started": len(self.started),
            "sigkills": self.kills,
            "restarts": self.restarts,
            "settled_by_outcome": dict(Counter(str(e.get("outcome")) for e in settled)),
            "redeliveries_seen": len(self.events("message_redelivered")),
        }


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


class Chaos:
    """One scenario: its settings, fleet, ledger, and the report at the end."""

    def __init__(self, name: str, test_env: dict[str, str], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = name
        self.base_env = test_env
        self.tmp = tmp_path
        self.mp = monkeypatch
        self.env: dict[str, str] = {}
        self._settings: Settings | None = None
        self._fleet: Fleet | None = None
        self._ledger: Ledger | None = None
        self.figures: dict[str, Any] = {}
        self.faults = 0
        self.fault_counters: list[Callable[[], int]] = []  # read at the end (proxy cuts)
        self._supervisors: list[asyncio.Task[None]] = []
        self.verdict: Verdict | None = None
        self.summary: dict[str, Any] = {}
        self.t0 = time.monotonic()

    def mark_start(self) -> None:
        """Start of the measured run (after set-up): ``elapsed_s`` counts from here."""
        self.t0 = time.monotonic()

    def setup(self, **env: str) -> Settings:
        """Settings for this scenario (the topology arguments must match every party)."""
        self.env = {**self.base_env, "ETL_LOG_LEVEL": "INFO", **env}
        for k, v in self.env.items():
            self.mp.setenv(k, v)
        s = load_settings()
        storage = Storage(make_client(s))
        storage.ensure_bucket(s.bucket)
        storage.client.put_bucket_versioning(
            Bucket=s.bucket, VersioningConfiguration={"Status": "Enabled"})
        self._settings = s
        self._fleet = Fleet(self.env, self.tmp)
        self._ledger = Ledger(s)
        return s

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "call chaos.setup() first"
        return self._settings

    @property
    def fleet(self) -> Fleet:
        assert self._fleet is not None, "call chaos.setup() first"
        return self._fleet

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "call chaos.setup() first"
        return self._ledger

    @property
    def storage(self) -> Storage:
        return self.ledger.storage

    # --- inputs ------------------------------------------------------------------------
    def upload_samples(self, max_bytes: int = 40_000, run: str = "") -> list[Upload]:
        """Every bundled sample up to ``max_bytes``, uploaded once."""
        run = run or uuid.uuid4().hex[:8]
        return [upload_file(self.storage, self.settings, rt, p, user_id="chaos", run_id=run)
                for rt, p in sample_files() if p.stat().st_size <= max_bytes]

    def upload_bytes(self, record_type: str, name: str, data: bytes) -> Upload:
        """``data`` as a fresh user's upload (the user named after ``name``, the upload
        service's key layout and idempotency key)."""
        user = labelled_user(f"chaos-{uuid.uuid4().hex[:12]}", name)
        key = upload_key(self.settings, record_type, user)
        self.storage.client.put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        return describe_upload(self.settings, record_type, key, data, user)

    def bodies(self, uploads: list[Upload], n: int, prefix: str = "") -> list[dict[str, Any]]:
        """``n`` distinct inputs cycling over ``uploads``: the upload service's messages, each
        a user of its own with a server-side copy of the file (the idempotency key is per
        user and file), plus a message id to track it by. Copies run 16 at a time."""
        prefix = prefix or uuid.uuid4().hex[:8]
        out = []
        copies = []
        for i in range(n):
            u = uploads[i % len(uploads)]
            user = f"{prefix}-{i:05d}"
            key = upload_key(self.settings, u.record_type, user)
            copies.append((key, u))
            out.append({**u.message(), "user_id": user, "key": key,
                        "idempotency_key": upload_idempotency_key(user, u.sha256),
                        "message_id": str(uuid.uuid4()), "correlation_id": f"c-{prefix}-{i}"})

        def copy(item: tuple[str, Upload]) -> None:
            key, u = item
            self.storage.client.copy_object(Bucket=self.settings.bucket, Key=key,
                                            CopySource={"Bucket": u.bucket, "Key": u.key})

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(copy, copies))
        return out

    async def publish(self, bodies: list[dict[str, Any]], *,
                      expect: str | tuple[str, ...] = "processed",
                      reason: str | tuple[str, ...] | None = None) -> None:
        for b in bodies:
            self.ledger.add(b, expect=expect, reason=reason)
        async with Publisher(self.settings) as pub:
            await pub.publish_many(bodies)

    async def publish_raw(self, body: dict[str, Any] | bytes, *, message_id: str,
                          expect: str, reason: str | None, label: str,
                          routing: str | None = None) -> None:
        self.ledger.add(body, expect=expect, reason=reason, label=label, message_id=message_id,
                        input_id=label)
        async with Publisher(self.settings) as pub:
            await pub.publish(body, routing=routing or "health.processing.stepsrecord.normal",
                              message_id=message_id)

    def supervise(self, name: str, *, fault_point: str = "", **overrides: str) -> None:
        """Restart worker ``name`` whenever it dies (until the scenario finishes)."""

        async def loop() -> None:
            while True:
                w = self.fleet.workers.get(name)
                if w is None or w.proc.poll() is not None:
                    if w is not None:
                        self.fleet.kills += w.proc.returncode == -signal.SIGKILL
                        self.fleet._reap(w)
                    w = self.fleet.start(name, fault_point=fault_point, **overrides)
                    await self.fleet.wait_consuming(w)
                await asyncio.sleep(0.1)

        self._supervisors.append(asyncio.create_task(loop()))

    async def _stop_supervisors(self) -> None:
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()

    # --- the end -------------------------------------------------------------------------
    def amend(self, **figures: Any) -> None:
        """Add figures known only after ``finish`` to the printed and saved summary."""
        self.summary.update(figures)
        for k, v in figures.items():
            print(f"  {k}: {v}")
        assert self.verdict is not None, "amend() after finish()"
        write_summary(self.name, self.verdict, self.summary)

    async def finish(self, *, drain_timeout: float = 120.0, outcomes: bool = True,
                     exact: bool = True, stop: bool = True,
                     repeated_dead_letters: bool = False) -> Verdict:
        """Drain, classify, print and save the summary, then assert the promise.
        ``repeated_dead_letters``: the scenario holds confirms up, so a second DLQ copy of
        one outcome is expected (counted, not a second outcome); otherwise it fails."""
        drain_s = await self.ledger.drain(drain_timeout, outcomes=outcomes)
        verdict = await self.ledger.classify()
        verdict.repeats_allowed = repeated_dead_letters
        await self._stop_supervisors()
        if stop:
            self.figures["exit_codes"] = await self.fleet.stop_all()
        elapsed = time.monotonic() - self.t0
        faults = self.faults + sum(count() for count in self.fault_counters)
        figures = {"faults_injected": faults, "time_to_drain_s": drain_s,
                   "elapsed_s": round(elapsed, 2),
                   "throughput_msg_s": round(self.ledger.messages / elapsed, 1),
                   "drained": self.ledger.drained, **self.fleet.figures(),
                   "quarantine_reason_overwrites": self.ledger.reason_overwrites,
                   "outcomes_missing": self.ledger.outcomes_missing if outcomes else None,
                   **self.figures}
        self.verdict, self.summary = verdict, figures
        print("\n" + render(self.name, verdict, figures))
        write_summary(self.name, verdict, figures)
        assert self.ledger.drained, f"not drained in {drain_timeout}s"
        assert verdict.passed, render(self.name, verdict, figures)
        if exact:
            assert verdict.mismatches == [], verdict.mismatches
        return verdict
