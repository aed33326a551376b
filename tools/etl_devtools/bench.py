"""Benchmark harness: prints figures side by side, it is not a pass/fail test.

    etl-engine bench [--quick]          (or scripts/benchmark.sh [--quick])

One run measures, on this machine and against real RabbitMQ and Redis plus an S3 server
(``etl_devtools.dev_s3``: moto behind a keep-alive server, started on a free port, unless
``--s3-endpoint`` is given; ``--s3-server moto`` starts plain ``moto.server`` instead):

1. **decode floor** - plain ``fastavro.reader`` over the sample mix, in process;
2. **storage ceiling** - GET of an input + conditional PUT of an output with boto3 (the
   worker's own ``Storage``), same concurrency, from one and from two client processes;
3. **the fleet** - ``etl-engine worker`` processes (1 and 2; decode mode ``1``: the
   default, ordinary files on the worker's thread, or ``1c``: every file in a decode child,
   ``ETL_DECODE_INLINE_MAX_BYTES=0``; ``0``: no children at all) consuming
   N messages with unique idempotency keys over the generated sample mix:
   messages/s from first publish to last settle, CPU seconds per message from
   ``/proc/PID/stat`` (worker plus its decode children), peak RSS (``VmHWM``), latency
   publish -> settled at saturation and at about half that rate, exactly-once check;
4. **ratios** against the floor and the ceiling;
5. **growth** - large files (1M CGM readings, 1M heart-rate samples and 10k/100k steps),
   decode+validate+statistics against the decode floor of the same file, each in a fresh
   subprocess so peak RSS is that of one file.

Everything the run creates uses its own names (exchange, queues, buckets, Redis prefix),
so a stack running on the same machine is not disturbed; they are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Large files are generated once (deterministic seed) and reused from here.
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "etl-bench"
# generate_large() starts on 2026-11-01; a 1M-reading CGM export spans ~9.5 years and a
# 1M-record steps export ~38: validate them as of after the exports' end, not today.
GROWTH_NOW = datetime(2100, 1, 1, tzinfo=UTC)


# --- /proc ---------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (its own, not its children's)."""
    try:
        f = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_sys_cpu(pid: int) -> float:
    """System (kernel) CPU seconds of one process."""
    try:
        return int(_stat_fields(pid)[12]) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0


def proc_status(pid: int, field_name: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (VmHWM, VmRSS) in kB; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _all_parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry)] = int(_stat_fields(int(entry))[1])
    return out


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... (forkserver pool workers are grandchildren)."""
    parents = _all_parents()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        cur = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == cur]
        found.extend(kids)
        frontier.extend(kids)
    return found


def pids_named(*names: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() in names:
                    out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


# --- small helpers ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pctl(values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def say(text: str = "") -> None:
    print(text, flush=True)


def _parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class MotoServer:
    """An S3 server of our own: moto behind a keep-alive HTTP server (etl_devtools.dev_s3)."""

    def __init__(self, log_path: Path, server: str = "dev") -> None:
        import urllib.request

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server" if server == "moto" else "etl_devtools.dev_s3",
             "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not start: {log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


# --- configuration -----------------------------------------------------------------------------
@dataclass
class Plan:
    quick: bool
    messages: int
    workers: list[int]
    decode_modes: list[str]  # "0", "1" (the default routing), "1c" (every file in a child)
    concurrency: int
    paced_seconds: float
    growth_sizes: list[int]
    growth_large: bool
    floor_seconds: float
    ceiling_pairs: int
    profile: bool = False
    instructions: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    return Plan(
        quick=quick,
        messages=args.messages or (600 if quick else 5000),
        workers=[int(w) for w in (args.workers or ("1" if quick else "1,2")).split(",")],
        decode_modes=[_decode_mode(d) for d in (
            args.decode_processes or ("1" if quick else "1,1c")).split(",")],
        concurrency=args.concurrency,
        paced_seconds=args.paced_seconds or (6.0 if quick else 20.0),
        growth_sizes=[10_000, 100_000] if quick else [10_000, 100_000, 1_000_000],
        growth_large=not args.no_growth,
        floor_seconds=1.0 if quick else 3.0,
        ceiling_pairs=args.ceiling_pairs or (300 if quick else 1200),
        profile=bool(args.profile),
        instructions=args.instructions,
    )


def _decode_mode(text: str) -> str:
    mode = text.strip()
    if not (mode.isdigit() or (mode.endswith("c") and mode[:-1].isdigit() and mode != "0c")):
        raise SystemExit(f"etl-engine bench: --decode-processes: {text!r} is not N or Nc")
    return mode


def decode_env(mode: str) -> dict[str, str]:
    """``N``: N decode children for big files (default routing); ``Nc``: every file."""
    if mode.endswith("c"):
        return {"ETL_DECODE_PROCESSES": mode[:-1], "ETL_DECODE_INLINE_MAX_BYTES": "0"}
    return {"ETL_DECODE_PROCESSES": mode}


def base_env(plan: Plan, s3_url: str, amqp: str, redis_url: str) -> dict[str, str]:
    rid = plan.run_id
    return {
        "ETL_AMQP_URL": amqp,
        "ETL_EXCHANGE": f"bench.{rid}.exchange",
        "ETL_QUEUE": f"bench.{rid}.work",
        "ETL_S3_ENDPOINT_URL": s3_url,
        "ETL_S3_ACCESS_KEY_ID": "test",
        "ETL_S3_SECRET_ACCESS_KEY": "test",
        "ETL_BUCKET": f"bench-{rid}-in",
        "ETL_ALLOWED_BUCKETS": f"bench-{rid}-in",
        "ETL_DEDUP_URL": redis_url,
        "ETL_DEDUP_PREFIX": f"bench:{rid}",
        "ETL_CONCURRENCY": str(plan.concurrency),
        "ETL_LOG_LEVEL": "INFO",
        "ETL_LOG_FORMAT": "json",
        "ETL_OTLP_ENDPOINT": "",
        "ETL_USER_ID_HASH_KEY": "bench",
        "ETL_LINEAGE_KEY": "bench-lineage",
        "ETL_SIDECAR_HOST": "127.0.0.1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# --- 1. decode floor ---------------------------------------------------------------------------
def floor_pass(files: list[tuple[str, bytes]]) -> None:
    """The floor: plain fastavro iterating every record of every file."""
    import fastavro

    for _, data in files:
        for _rec in fastavro.reader(io.BytesIO(data)):
            pass


def stages_pass(files: list[tuple[str, bytes]]) -> None:
    """The worker's CPU stages (decode + validate + statistics + narrative) over the mix."""
    from etl_engine.domain.model import DomainConfig, Lineage
    from etl_engine.runtime.compute import Limits, run_cpu_stages

    limits = Limits(2_000_000, 512 * 1024 * 1024)
    config = DomainConfig()
    now = datetime.now(UTC)
    for rt, data in files:
        lin = Lineage("b", "raw/x.avro", "m", "c", rt, "bench")
        out = run_cpu_stages(data, lin, limits, config, now)
        if out.output is None:
            raise RuntimeError(f"sample did not pass: {out.quarantine_reason}")


def decode_floor(files: list[tuple[str, bytes]], seconds: float) -> dict[str, Any]:
    """Plain fastavro over the mix; also the worker's CPU stages over the same bytes."""

    def timed(fn: Any) -> float:
        """CPU per file: the best of five rounds (other load on the machine only adds)."""
        fn(files)  # warm
        best = float("inf")
        for _ in range(5):
            loops = 0
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            while loops < 2 or time.perf_counter() - t0 < seconds / 5:
                fn(files)
                loops += 1
            best = min(best, (time.thread_time() - cpu0) / (loops * len(files)))
        return best

    floor = timed(floor_pass)
    stages = timed(stages_pass)
    return {"files": len(files), "floor_ms_per_file": floor * 1000,
            "floor_files_per_s": 1 / floor, "stages_ms_per_file": stages * 1000}


# --- 2. storage ceiling ------------------------------------------------------------------------
def _ceiling_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process: ``pairs`` GET+PUT pairs on ``concurrency`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    settings = load_settings()
    store = Storage(make_client(settings, pool=spec["concurrency"]))
    keys: list[str] = spec["keys"]
    body = b"x" * spec["out_bytes"]
    tag = spec["tag"]

    def pair(i: int) -> None:
        store.download(settings.bucket, keys[i % len(keys)],
                       max_bytes=settings.max_object_bytes)
        store.put_if_absent(spec["out_bucket"], f"training/ceiling/{tag}-{i}.jsonl", body,
                            content_type="application/x-ndjson",
                            metadata={"message-id": str(i), "record-type": "bench"})

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        list(pool.map(pair, range(min(20, spec["pairs"]))))  # warm the connection pool
        while time.time() < spec["start_at"]:
            time.sleep(0.005)
        cpu0 = proc_cpu(os.getpid())
        t0 = time.time()
        list(pool.map(pair, range(20, 20 + spec["pairs"])))
        t1 = time.time()
    return {"start": t0, "end": t1, "pairs": spec["pairs"],
            "cpu_s": proc_cpu(os.getpid()) - cpu0}


def storage_ceiling(env: dict[str, str], keys: list[str], out_bucket: str, out_bytes: int,
                    concurrency: int, processes: int, pairs: int,
                    moto_pid: int | None) -> dict[str, Any]:
    start_at = time.time() + 3.0
    procs = []
    for p in range(processes):
        spec = {"keys": keys, "out_bucket": out_bucket, "out_bytes": out_bytes,
                "concurrency": concurrency, "pairs": pairs, "start_at": start_at,
                "tag": f"{processes}-{p}-{uuid.uuid4().hex[:6]}"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "etl_devtools.bench", "_ceiling", json.dumps(spec)],
            env={**os.environ, **env}, stdout=subprocess.PIPE, text=True))
    moto0 = proc_cpu(moto_pid) if moto_pid else 0.0
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError("storage ceiling client failed")
        results.append(json.loads(out.strip().splitlines()[-1]))
    moto_cpu = (proc_cpu(moto_pid) - moto0) if moto_pid else 0.0
    total = sum(r["pairs"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"processes": processes, "concurrency": concurrency, "pairs": total,
            "pairs_per_s": total / wall,
            "client_cpu_ms_per_pair": 1000 * sum(r["cpu_s"] for r in results) / total,
            "server_cpu_ms_per_pair": 1000 * moto_cpu / total if moto_pid else None}


# --- 3. the fleet ------------------------------------------------------------------------------
@dataclass
class Input:
    record_type: str
    key: str
    size: int
    sha256: str


class WorkerProc:
    def __init__(self, env: dict[str, str], log_path: Path,
                 prefix: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._offset = 0
        self._settled: dict[str, tuple[float, str]] = {}
        self.events: Counter[str] = Counter()  # every settle, redeliveries included
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "etl_engine.ops.cli", "worker"],
            env={**os.environ, **env, "ETL_SIDECAR_PORT": str(self.port)},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.port}/ready"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def tree(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def settled(self) -> dict[str, tuple[float, str]]:
        """message id -> (first settle time, outcome), read from the worker's JSON log as it
        grows (the log, not Redis, is the harness's record: it survives a Redis restart)."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            if b'"message_settled"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ev = json.loads(line)
                self.events[ev["outcome"]] += 1
                self._settled.setdefault(ev["message_id"],
                                         (_parse_ts(ev["timestamp"]), ev["outcome"]))
        return self._settled


def _message(inp: Input, bucket: str, user: str, key: str) -> dict[str, Any]:
    """The upload service's message for ``inp`` uploaded by ``user`` at ``key``."""
    from etl_engine.domain.messages import derive_message_id, upload_idempotency_key

    ikey = upload_idempotency_key(user, inp.sha256)
    return {
        "bucket": bucket,
        "key": key,
        "user_id": user,
        "record_type": inp.record_type,
        "upload_timestamp_utc": datetime.now(UTC).isoformat(),
        "correlation_id": derive_message_id(ikey),
        "file_size_bytes": inp.size,
        "file_hash": inp.sha256,
        "idempotency_key": ikey,
    }


def _idempotency_key(inputs: list[Input], tag: str, i: int) -> str:
    """The key (and result name) of a batch's ``i``-th message, as ``_bodies`` makes it."""
    from etl_engine.domain.messages import upload_idempotency_key

    return upload_idempotency_key(f"{tag}-{i:06d}", inputs[i % len(inputs)].sha256)


def _bodies(env: dict[str, str], inputs: list[Input], bucket: str, tag: str, n: int
            ) -> list[dict[str, Any]]:
    """``n`` distinct inputs: each a user of its own with a server-side copy of an input
    file (the upload service's idempotency key is per user and file). Made before the
    timed publish."""
    from concurrent.futures import ThreadPoolExecutor

    from etl_engine.adapters.storage import make_client
    from etl_engine.settings import load_settings

    client = make_client(load_settings(**{k[4:].lower(): v for k, v in env.items()
                                          if k.startswith("ETL_")}))

    def one(i: int) -> dict[str, Any]:
        inp = inputs[i % len(inputs)]
        user = f"{tag}-{i:06d}"
        folder = inp.key.rsplit("/", 1)[0]
        key = f"{folder}/{user}_20261101_120000_000000.avro"  # the upload service's name
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": inp.key})
        return _message(inp, bucket, user, key)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


class Fleet:
    """Publishes to, and watches, one set of workers."""

    def __init__(self, env: dict[str, str], inputs: list[Input], in_bucket: str) -> None:
        self.env = env
        self.inputs = inputs
        self.in_bucket = in_bucket

    async def publish(self, tag: str, n: int, rate: float | None) -> dict[str, float]:
        """Publish ``n`` messages (paced at ``rate``/s if given); message id -> send time."""
        import aio_pika

        from etl_engine.adapters.topology import declare
        from etl_engine.domain.messages import upload_routing_key
        from etl_engine.settings import load_settings

        settings = load_settings(**{k[4:].lower(): v for k, v in self.env.items()
                                    if k.startswith("ETL_") and k != "ETL_SIDECAR_PORT"})
        bodies = await asyncio.to_thread(_bodies, self.env, self.inputs, self.in_bucket, tag, n)
        sent: dict[str, float] = {}
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=10)
        async with conn:
            channel = await conn.channel(publisher_confirms=True)
            exchange = (await declare(channel, settings)).exchange
            window = asyncio.Semaphore(256)
            pending: set[asyncio.Task[None]] = set()

            async def one(body: dict[str, Any]) -> None:
                try:
                    await exchange.publish(
                        aio_pika.Message(
                            body=json.dumps(body).encode(), content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=body["correlation_id"]),
                        routing_key=upload_routing_key(body["record_type"]), mandatory=True)
                finally:
                    window.release()

            start = time.monotonic()
            for i in range(n):
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await window.acquire()
                body = bodies[i]
                mid = body["correlation_id"]  # the message id the worker derives
                sent[mid] = time.time()
                task = asyncio.create_task(one(body))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        return sent

    async def wait_settled(self, ids: list[str], timeout: float,
                           procs: list[WorkerProc]) -> dict[str, str]:
        """message id -> outcome, once every id was settled by some worker (or timeout)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            settled: dict[str, tuple[float, str]] = {}
            for p in procs:
                settled.update(p.settled())
            seen = {m: settled[m][1] for m in ids if m in settled}
            if len(seen) == len(ids) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.25)


def _results(env: dict[str, str], bucket: str) -> list[str]:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    settings = load_settings(s3_endpoint_url=env["ETL_S3_ENDPOINT_URL"],
                             s3_access_key_id="test", s3_secret_access_key="test")
    return list(Storage(make_client(settings)).list_keys(bucket, "training/"))


@dataclass
class _FleetRun:
    """One setting's workers, and the names its messages and results go under."""

    tag: str  # w{workers}d{decode mode}
    prefix: str  # of every batch's tag: {run id}-{tag}
    decode_mode: str
    env: dict[str, str]
    out_bucket: str
    fleet: Fleet
    procs: list[WorkerProc]

    def batch(self, name: str) -> str:
        """A batch's tag: message ids and result names derive from it."""
        return f"{self.prefix}-{name}"

    def settled(self) -> dict[str, tuple[float, str]]:
        """Every worker's settles so far: message id -> (first settle time, outcome)."""
        settled: dict[str, tuple[float, str]] = {}
        for p in self.procs:
            settled.update(p.settled())
        return settled


@dataclass
class _Saturation:
    """What the saturation run measured (CPU in seconds, latencies in ms)."""

    sent: dict[str, float]  # message id -> send time
    outcomes: dict[str, str]
    elapsed: float  # first publish to last settle
    throughput: float
    latency_ms: list[float]
    per_worker: list[dict[str, Any]]
    fleet_cpu: float  # workers and their children, user + system
    fleet_sys: float
    other_cpu: dict[str, float]  # RabbitMQ, Redis, the S3 server; NaN if restarted meanwhile
    harness_cpu: float
    profile: dict[str, Any] | None


@dataclass
class _Paced:
    """The run at about half the saturation rate."""

    rate: float
    messages: int
    outcomes: dict[str, str]
    latency_ms: list[float]


def _start_fleet(plan: Plan, env0: dict[str, str], inputs: list[Input], workdir: Path,
                 workers: int, decode_mode: str) -> _FleetRun:
    """Workers with an output bucket of their own: the exactly-once check counts it."""
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    tag = f"w{workers}d{decode_mode}"
    out_bucket = f"bench-{plan.run_id}-{tag}"
    env = {**env0, "ETL_BUCKET": out_bucket,
           "ETL_ALLOWED_BUCKETS": env0["ETL_BUCKET"],
           **decode_env(decode_mode)}
    settings = load_settings(s3_endpoint_url=env["ETL_S3_ENDPOINT_URL"],
                             s3_access_key_id="test", s3_secret_access_key="test")
    Storage(make_client(settings)).ensure_bucket(out_bucket)
    fleet = Fleet(env, inputs, env0["ETL_BUCKET"])
    procs = [WorkerProc(env, workdir / f"{tag}-worker-{i + 1}.log") for i in range(workers)]
    return _FleetRun(tag, f"{plan.run_id}-{tag}", decode_mode, env, out_bucket, fleet, procs)


def _warm_up(run: _FleetRun, n: int) -> None:
    """Imports, connections, decode children start here, not in the measured run."""
    warm = asyncio.run(run.fleet.publish(run.batch("warm"), n, None))
    got = asyncio.run(run.fleet.wait_settled(list(warm), 120, run.procs))
    if len(got) != len(warm) or set(got.values()) != {"processed"}:
        raise RuntimeError(f"warm-up: {Counter(got.values())} of {len(warm)}; see "
                           f"{run.procs[0].log_path}")


def _other_services(moto_pid: int | None) -> dict[str, list[int]]:
    """The processes whose CPU the fleet's messages also cost."""
    others = {"rabbitmq": pids_named("beam.smp"), "redis": pids_named("redis-server")}
    if moto_pid:
        others["s3 server"] = [moto_pid]
    return others


def _worker_figures(p: WorkerProc, tree: list[int], cpu0: dict[int, float],
                    cpu1: dict[int, float]) -> dict[str, Any]:
    """CPU of the worker and of its children, peak RSS of each and of the whole tree."""
    main_cpu = cpu1.get(p.pid, 0) - cpu0.get(p.pid, 0)
    kids = [x for x in tree if x != p.pid]
    kid_cpu = sum(cpu1.get(x, 0) - cpu0.get(x, 0) for x in kids)
    hwm_kids = [proc_status(x, "VmHWM") for x in kids]
    big_kids = [h for h in hwm_kids if h > 20_000]  # pool workers, not helpers
    return {
        "pid": p.pid,
        "main_cpu_s": main_cpu, "children_cpu_s": kid_cpu,
        "main_hwm_mb": proc_status(p.pid, "VmHWM") / 1024,
        "decode_child_hwm_mb": max(big_kids, default=0) / 1024,
        "tree_hwm_mb": (proc_status(p.pid, "VmHWM") + sum(hwm_kids)) / 1024,
        "children": len(kids),
    }


def _saturate(plan: Plan, run: _FleetRun, workdir: Path, moto_pid: int | None) -> _Saturation:
    """``plan.messages`` at once: throughput, and CPU from /proc around exactly that run."""
    procs, n = run.procs, plan.messages
    others = _other_services(moto_pid)
    cpu0 = {pid: proc_cpu(pid) for p in procs for pid in p.tree()}
    sys0 = {pid: proc_sys_cpu(pid) for p in procs for pid in p.tree()}
    oth0 = {k: sum(proc_cpu(x) for x in v) for k, v in others.items()}
    harness0 = proc_cpu(os.getpid())
    spies = [start_profile(p.pid, workdir / f"{run.tag}-worker-{i + 1}.pyspy.txt")
             for i, p in enumerate(procs)] if plan.profile else []
    sent = asyncio.run(run.fleet.publish(run.batch("sat"), n, None))
    outcomes = asyncio.run(run.fleet.wait_settled(list(sent), 120 + n / 2, procs))
    trees = {p.pid: p.tree() for p in procs}
    cpu1 = {pid: proc_cpu(pid) for p in procs for pid in trees[p.pid]}
    sys1 = {pid: proc_sys_cpu(pid) for p in procs for pid in trees[p.pid]}
    # a service restarted meanwhile (another suite on the machine) has no valid delta
    oth1 = {k: sum(proc_cpu(x) for x in v) if all(Path(f"/proc/{x}").exists()
                                                  for x in v) else float("nan")
            for k, v in others.items()}
    harness_cpu = proc_cpu(os.getpid()) - harness0
    profile = stop_profile(spies)
    settled = run.settled()
    sat_done = [settled[m][0] for m in sent if m in settled]
    first = min(sent.values())
    last = max(sat_done) if sat_done else time.time()
    per_worker = [_worker_figures(p, trees[p.pid], cpu0, cpu1) for p in procs]
    return _Saturation(
        sent=sent, outcomes=outcomes, elapsed=last - first,
        throughput=len(sat_done) / (last - first),
        latency_ms=[(settled[m][0] - t) * 1000 for m, t in sent.items() if m in settled],
        per_worker=per_worker,
        fleet_cpu=sum(w["main_cpu_s"] + w["children_cpu_s"] for w in per_worker),
        fleet_sys=sum(sys1.get(x, 0) - sys0.get(x, 0) for t in trees.values() for x in t),
        other_cpu={k: oth1[k] - oth0[k] for k in others},
        harness_cpu=harness_cpu, profile=profile,
    )


def _pace(plan: Plan, run: _FleetRun, throughput: float) -> _Paced:
    """About half the saturation rate: the latency of a fleet with headroom."""
    rate = max(1.0, throughput / 2)
    n_paced = max(20, int(rate * plan.paced_seconds))
    sent = asyncio.run(run.fleet.publish(run.batch("paced"), n_paced, rate))
    outcomes = asyncio.run(run.fleet.wait_settled(list(sent), 120, run.procs))
    settled = run.settled()
    latency = [(settled[m][0] - t) * 1000 for m, t in sent.items() if m in settled]
    return _Paced(rate, n_paced, outcomes, latency)


def _exactly_once(run: _FleetRun, batches: dict[str, int]) -> dict[str, int]:
    """One result object per accepted message, nothing else (``batches``: tag -> count)."""
    from etl_engine.domain.lineage import record_id

    keys = _results(run.env, run.out_bucket)
    stems = Counter(k.rsplit("/", 1)[-1].removesuffix(".jsonl") for k in keys)
    lineage_key = run.env["ETL_LINEAGE_KEY"].encode()  # results are named by record id
    expected = {record_id(lineage_key, _idempotency_key(run.fleet.inputs, tag, i))
                for tag, n in batches.items() for i in range(n)}
    lost = len(expected - set(stems))
    duplicated = sum(c - 1 for c in stems.values() if c > 1) + len(set(stems) - expected)
    return {"results": len(keys), "expected_results": len(expected),
            "lost": lost, "duplicated": duplicated}


def _fleet_report(plan: Plan, run: _FleetRun, sat: _Saturation, paced: _Paced,
                  checked: dict[str, int]) -> dict[str, Any]:
    """The setting's figures, per message where that is what compares across settings."""
    n = plan.messages
    all_out = Counter(sat.outcomes.values()) + Counter(paced.outcomes.values())
    return {
        "setting": run.tag, "workers": len(run.procs), "decode_mode": run.decode_mode,
        "concurrency": plan.concurrency, "messages": n, "paced_messages": paced.messages,
        "throughput_msg_s": sat.throughput, "elapsed_s": sat.elapsed,
        "cpu_ms_per_msg": 1000 * sat.fleet_cpu / n,
        "cpu_ms_per_msg_main": 1000 * sum(w["main_cpu_s"] for w in sat.per_worker) / n,
        "cpu_ms_per_msg_children": 1000 * sum(w["children_cpu_s"] for w in sat.per_worker) / n,
        "cpu_ms_per_msg_system": 1000 * sat.fleet_sys / n,
        "other_cpu_ms_per_msg": {k: 1000 * v / n for k, v in sat.other_cpu.items()},
        "harness_cpu_ms_per_msg": 1000 * sat.harness_cpu / n,
        "per_worker": sat.per_worker,
        "saturation_latency_ms": {"p50": pctl(sat.latency_ms, 50),
                                  "p95": pctl(sat.latency_ms, 95),
                                  "p99": pctl(sat.latency_ms, 99)},
        "paced_rate_msg_s": paced.rate,
        "paced_latency_ms": {"p50": pctl(paced.latency_ms, 50),
                             "p95": pctl(paced.latency_ms, 95),
                             "p99": pctl(paced.latency_ms, 99)},
        "outcomes": dict(all_out),
        "settle_events": dict(sum((p.events for p in run.procs), Counter())),
        **checked,
        "profile": sat.profile,
    }


def run_fleet(plan: Plan, env0: dict[str, str], inputs: list[Input], workdir: Path,
              workers: int, decode_mode: str, moto_pid: int | None) -> dict[str, Any]:
    """One setting: start the workers, warm up, saturate, pace at half rate, check."""
    run = _start_fleet(plan, env0, inputs, workdir, workers, decode_mode)
    n_warm = 4 * len(inputs)
    try:
        for p in run.procs:
            p.wait_ready()
        _warm_up(run, n_warm)
        sat = _saturate(plan, run, workdir, moto_pid)
        paced = _pace(plan, run, sat.throughput)
        for w, p in zip(sat.per_worker, run.procs, strict=True):
            w["main_hwm_mb"] = proc_status(p.pid, "VmHWM") / 1024
    finally:
        for p in run.procs:
            p.stop()
    checked = _exactly_once(run, {run.batch("sat"): plan.messages,
                                  run.batch("paced"): paced.messages,
                                  run.batch("warm"): n_warm})
    return _fleet_report(plan, run, sat, paced, checked)


# --- 6. instruction counts (valgrind) -------------------------------------------------------------
# Instructions executed do not depend on what else the host's CPUs are doing, so this ratio
# is repeatable where CPU seconds on a shared VM are not (they moved 40 % within an hour).
def _ir_child(mode: str, sample_dir: str, rounds: int) -> None:
    """Run under cachegrind by ``instruction_counts``: one warm pass over the mix (lazy
    imports, schema caches), then ``rounds`` passes."""
    from etl_engine.ops.sample_files import iter_sample_files

    files = [(rt, path.read_bytes()) for rt, path in iter_sample_files(Path(sample_dir))]
    fn = floor_pass if mode == "floor" else stages_pass
    for _ in range(rounds + 1):
        fn(files)


def _ir_summary(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def _ir_per_pass(mode: str, sample_dir: Path, workdir: Path, rounds: int = 3) -> float:
    """Instructions of one pass over the mix: (``rounds`` passes - 0 passes) / rounds."""
    counts = []
    for n in (0, rounds):
        out = workdir / f"ir-{mode}-{n}.cachegrind"
        subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={out}", sys.executable, "-m", "etl_devtools.bench",
             "_ir", mode, str(sample_dir), str(n)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts.append(_ir_summary(out))
    return (counts[1] - counts[0]) / rounds


def instruction_counts(plan: Plan, env0: dict[str, str], inputs: list[Input],
                       workdir: Path) -> dict[str, Any]:
    """User-space instructions (valgrind): the floor and the CPU stages per file, and one
    worker per message, counted between two callgrind dumps around ``n`` messages."""
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    n = plan.instructions
    sample_dir = workdir / "samples"
    floor = _ir_per_pass("floor", sample_dir, workdir) / len(inputs)
    stages = _ir_per_pass("stages", sample_dir, workdir) / len(inputs)

    out_bucket = f"bench-{plan.run_id}-instr"
    env = {**env0, "ETL_BUCKET": out_bucket, "ETL_ALLOWED_BUCKETS": env0["ETL_BUCKET"],
           **decode_env("1"), "ETL_MESSAGE_TIMEOUT_S": "600", "ETL_LEASE_TTL_S": "600"}
    settings = load_settings(s3_endpoint_url=env["ETL_S3_ENDPOINT_URL"],
                             s3_access_key_id="test", s3_secret_access_key="test")
    Storage(make_client(settings)).ensure_bucket(out_bucket)
    fleet = Fleet(env, inputs, env0["ETL_BUCKET"])
    dump = workdir / "instr-worker.callgrind"
    proc = WorkerProc(env, workdir / "instr-worker.log",
                      prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"])
    try:
        proc.wait_ready(timeout=900)
        warm = asyncio.run(fleet.publish(f"{plan.run_id}-instr-warm", 2 * len(inputs), None))
        got = asyncio.run(fleet.wait_settled(list(warm), 900, [proc]))
        if len(got) != len(warm):
            raise RuntimeError(f"instruction run: warm-up settled {len(got)} of {len(warm)}")
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        sent = asyncio.run(fleet.publish(f"{plan.run_id}-instr", n, None))
        got = asyncio.run(fleet.wait_settled(list(sent), 300 + 5 * n, [proc]))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        if len(got) != n or set(got.values()) != {"processed"}:
            raise RuntimeError(f"instruction run: {Counter(got.values())} of {n}")
    finally:
        proc.stop()
    worker = _ir_summary(Path(f"{dump}.1")) / n
    return {"messages": n, "floor_ir_per_file": floor, "stages_ir_per_file": stages,
            "worker_ir_per_msg": worker, "stages_ratio": stages / floor,
            "worker_ratio": worker / floor, "callgrind_dump": f"{dump}.1"}


# --- side by side: two worker configurations under the same noise -------------------------------
def _env_pairs(text: str) -> dict[str, str]:
    """``"ETL_X=1,ETL_Y=2"`` -> {"ETL_X": "1", "ETL_Y": "2"}; empty: the defaults."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.startswith("ETL_"):
            raise SystemExit(f"etl-engine bench --ab: {part!r} is not ETL_NAME=value")
        out[key] = value
    return out


@dataclass
class _SideBySide:
    """Workers A and B, one process each with its own queues and buckets."""

    envs: list[dict[str, str]]
    procs: list[WorkerProc]
    fleets: list[Fleet]

    async def publish(self, tag: str, n: int, pace: float | None) -> list[dict[str, float]]:
        """The same load to both at once, so the host's noise hits both alike."""
        return list(await asyncio.gather(*(f.publish(f"{tag}-{i}", n, pace)
                                           for i, f in enumerate(self.fleets))))

    def settle(self, sent: list[dict[str, float]], timeout: float) -> None:
        """A comparison of CPU per message means nothing unless every message was processed."""
        for f, p, ids in zip(self.fleets, self.procs, sent, strict=True):
            got = asyncio.run(f.wait_settled(list(ids), timeout, [p]))
            if len(got) != len(ids) or set(got.values()) != {"processed"}:
                raise RuntimeError(f"--ab: {Counter(got.values())} of {len(ids)}; see "
                                   f"{p.log_path}")


def _start_side_by_side(plan: Plan, env0: dict[str, str], inputs: list[Input], workdir: Path,
                        configs: tuple[dict[str, str], dict[str, str]]) -> _SideBySide:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    storage = Storage(make_client(load_settings(
        s3_endpoint_url=env0["ETL_S3_ENDPOINT_URL"], s3_access_key_id="test",
        s3_secret_access_key="test")))
    ab = _SideBySide([], [], [])
    for name, extra in zip("ab", configs, strict=True):
        rid = f"{plan.run_id}{name}"
        env = {**env0, "ETL_EXCHANGE": f"bench.{rid}.exchange", "ETL_QUEUE": f"bench.{rid}.work",
               "ETL_DEDUP_PREFIX": f"bench:{rid}", "ETL_BUCKET": f"bench-{rid}",
               "ETL_ALLOWED_BUCKETS": env0["ETL_BUCKET"], **extra}
        storage.ensure_bucket(env["ETL_BUCKET"])
        ab.envs.append(env)
        ab.procs.append(WorkerProc(env, workdir / f"ab-{name}.log"))
        ab.fleets.append(Fleet(env, inputs, env0["ETL_BUCKET"]))
    return ab


def _ab_round(plan: Plan, ab: _SideBySide, r: int, rate: float) -> dict[str, Any]:
    """One round: each worker's CPU per message over the same minutes, and its latency."""
    cpu0 = [proc_cpu(p.pid) for p in ab.procs]
    sent = asyncio.run(ab.publish(f"{plan.run_id}-ab{r}", plan.messages, rate))
    ab.settle(sent, 120 + plan.messages / rate)
    a, b = (1000 * (proc_cpu(p.pid) - c) / plan.messages
            for p, c in zip(ab.procs, cpu0, strict=True))
    lat = []
    for p, ids in zip(ab.procs, sent, strict=True):
        done = p.settled()
        ms = [(done[m][0] - t) * 1000 for m, t in ids.items() if m in done]
        lat.append({"p50": pctl(ms, 50), "p99": pctl(ms, 99)})
    say(f"  round {r + 1}: A {a:6.3f} ms/msg   B {b:6.3f} ms/msg   B/A {b / a:.3f}   "
        f"latency p50/p99 A {lat[0]['p50']:.1f}/{lat[0]['p99']:.1f} ms, "
        f"B {lat[1]['p50']:.1f}/{lat[1]['p99']:.1f} ms")
    return {"a_ms_per_msg": a, "b_ms_per_msg": b, "b_over_a": b / a,
            "a_latency_ms": lat[0], "b_latency_ms": lat[1]}


def compare(plan: Plan, env0: dict[str, str], inputs: list[Input], workdir: Path,
            configs: tuple[dict[str, str], dict[str, str]], rate: float,
            rounds: int) -> dict[str, Any]:
    """Worker A and worker B (one process each, own queues and buckets) consume the same
    paced load at the same time, so the host's noise, which moves CPU seconds by tens of
    per cent between runs, hits both alike; B/A is the figure. Run A/A to see its spread."""
    ab = _start_side_by_side(plan, env0, inputs, workdir, configs)
    results: list[dict[str, Any]] = []
    try:
        for p in ab.procs:
            p.wait_ready()
        ab.settle(asyncio.run(ab.publish(f"{plan.run_id}-abwarm", 4 * len(inputs), None)), 120)
        for r in range(rounds):
            results.append(_ab_round(plan, ab, r, rate))
    finally:
        for p in ab.procs:
            p.stop()
        for env in ab.envs:
            _cleanup(env, [])
    ratios = [float(x["b_over_a"]) for x in results]
    return {"a": configs[0], "b": configs[1], "rate_msg_s": rate,
            "messages": plan.messages, "rounds": results,
            "b_over_a_mean": sum(ratios) / len(ratios), "b_over_a_min": min(ratios),
            "b_over_a_max": max(ratios), "buckets": [e["ETL_BUCKET"] for e in ab.envs]}


# --- profiling (py-spy) -------------------------------------------------------------------------
# Where a worker's CPU goes, by the outermost library or module a sampled stack is in.
PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("decode (fastavro + avro.py)", ("fastavro", "etl_engine/domain/avro.py")),
    ("validate", ("etl_engine/domain/validation.py", "etl_engine/domain/checks.py")),
    # records/<type>.py holds a type's value checks too: they count here
    ("statistics + narrative", ("etl_engine/domain/records/", "etl_engine/domain/stats/",
                                "etl_engine/domain/transform.py", "etl_engine/domain/wording.py",
                                "etl_engine/domain/narratives.py")),
    ("process-pool IPC", ("concurrent/futures/process.py", "multiprocessing/")),
    ("S3 client (obstore, boto3)", ("obstore", "etl_engine/adapters/storage.py", "http/client.py",
                                    "botocore", "boto3", "urllib3", "s3transfer")),
    ("AMQP (aio-pika/aiormq/pamqp)", ("aio_pika", "aiormq", "pamqp")),
    ("Redis client", ("redis/",)),
    ("logging (structlog)", ("structlog", "etl_engine/observability/logs.py", "logging/")),
    ("metrics + tracing", ("prometheus_client", "opentelemetry",
                           "etl_engine/observability/telemetry.py",
                           "etl_engine/observability/metrics.py")),
    ("message parse (pydantic)", ("pydantic", "etl_engine/domain/messages.py")),
    ("result JSON (orjson)", ("orjson",)),
    ("pipeline/worker code", ("etl_engine/runtime/pipeline.py", "etl_engine/runtime/worker.py",
                              "etl_engine/runtime/compute.py", "etl_engine/adapters/storage.py",
                              "etl_engine/adapters/dedup.py")),
    ("event loop + threads", ("asyncio/", "threading.py", "concurrent/futures/thread.py",
                              "selectors.py")),
]


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return None
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
         "--rate", "250", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spies: list[subprocess.Popen[bytes] | None]) -> dict[str, Any] | None:
    import signal

    outs = []
    for spy in spies:
        if spy is None:
            continue
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
        outs.append(Path(str(spy.args[-1])))  # type: ignore[index]
    if not outs:
        return None
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for path in outs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            leaves[frames[-1]] += n
            buckets[_bucket(frames)] += n
    return {"samples": total, "files": [str(p) for p in outs],
            "by_area": {k: v / total for k, v in buckets.most_common()} if total else {},
            "top_leaves": {k: v / total for k, v in leaves.most_common(25)} if total else {}}


def _bucket(frames: list[str]) -> str:
    """The deepest frame that belongs to a known area decides (innermost library wins)."""
    for frame in reversed(frames):
        for name, needles in PROFILE_BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other"


# --- 5. growth ---------------------------------------------------------------------------------
GROWTH_FILES = [
    # (label, record type, records, samples per record, readings/samples)
    ("cgm", "BloodGlucoseRecord", 1, "readings"),
    ("heart_rate", "HeartRateRecord", 1000, "samples"),
    ("steps", "StepsRecord", 1, "records"),
]


def growth_file(cache: Path, record_type: str, n_items: int, per_record: int) -> Path:
    from etl_devtools.samples import generate_large

    cache.mkdir(parents=True, exist_ok=True)
    n_records = max(1, n_items // per_record)
    path = cache / f"{record_type}-{n_records}x{per_record}-seed7-null.avro"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        generate_large(tmp, record_type, n_records, seed=7, samples_per_record=per_record)
        tmp.rename(path)
    return path


def _growth_child(mode: str, record_type: str, path: str) -> dict[str, Any]:
    """In a fresh process: decode floor or the worker's CPU stages over one file."""
    import fastavro

    if mode != "floor":  # the floor process loads fastavro only
        from etl_engine.domain.model import DomainConfig, Lineage
        from etl_engine.runtime.compute import Limits, run_cpu_stages

    base = proc_status(os.getpid(), "VmHWM")  # interpreter + modules
    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    c0 = time.process_time()
    extra: dict[str, Any] = {}
    if mode == "floor":
        n = 0
        for _ in fastavro.reader(io.BytesIO(data)):
            n += 1
        extra["records"] = n
    else:
        lin = Lineage("b", "raw/x.avro", "m", "c", record_type, "bench")
        res = run_cpu_stages(data, lin, Limits(2_000_000, 512 * 1024 * 1024), DomainConfig(),
                             GROWTH_NOW)
        extra.update(records=res.records, passed=res.output is not None,
                     reason=res.quarantine_reason,
                     stages={k: round(v, 3) for k, v in res.timings.items()})
    return {"mode": mode, "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "file_mb": len(data) / 2**20,
            # VmHWM, not ru_maxrss: after fork+exec Linux carries the parent's peak into
            # ru_maxrss, and the parent here is the (larger) harness
            "hwm_mb": proc_status(os.getpid(), "VmHWM") / 1024,
            "hwm_modules_mb": base / 1024, **extra}


def growth_run(mode: str, record_type: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "etl_devtools.bench", "_growth", mode, record_type, str(path)],
        capture_output=True, text=True, timeout=1200, check=False)
    if out.returncode != 0:
        return {"mode": mode, "error": out.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def growth(plan: Plan, cache: Path) -> list[dict[str, Any]]:
    rows = []
    for label, rt, per_record, unit in GROWTH_FILES:
        for n in plan.growth_sizes:
            path = growth_file(cache, rt, n, per_record)
            floor = growth_run("floor", rt, path)
            full = growth_run("full", rt, path)
            rows.append({"file": label, "record_type": rt, "items": n, "unit": unit,
                         "floor": floor, "full": full})
            _print_growth_row(rows[-1])
    return rows


# --- reporting ---------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:,.{digits}f}"


def _print_growth_row(r: dict[str, Any]) -> None:
    fl, fu = r["floor"], r["full"]
    if "error" in fl or "error" in fu:
        say(f"  {r['file']:<11} {r['items']:>9,} {r['unit']:<8} error: "
            f"{fl.get('error') or fu.get('error')}")
        return
    ratio = fu["seconds"] / fl["seconds"] if fl["seconds"] else float("nan")
    status = "passed" if fu.get("passed") else f"quarantined:{fu.get('reason')}"
    cpu_ratio = fu["cpu_s"] / fl["cpu_s"] if fl["cpu_s"] else float("nan")
    say(f"  {r['file']:<11} {r['items']:>9,} {r['unit']:<8} file {fl['file_mb']:6.1f} MB | "
        f"floor {fl['seconds']:6.2f} s, peak {fl['hwm_mb']:4.0f} MB | "
        f"full {fu['seconds']:6.2f} s, peak {fu['hwm_mb']:4.0f} MB "
        f"(+{fu['hwm_mb'] - fu['hwm_modules_mb']:.0f} over modules) | "
        f"x{ratio:4.2f} wall, x{cpu_ratio:4.2f} CPU | {status}")


def print_fleet(r: dict[str, Any]) -> None:
    env = " ".join(f"{k}={v}" for k, v in decode_env(r["decode_mode"]).items())
    say(f"  [{r['setting']}] workers={r['workers']} {env} concurrency={r['concurrency']}")
    say(f"    throughput        {r['throughput_msg_s']:8.1f} msg/s   ({r['messages']} messages"
        f" in {r['elapsed_s']:.1f} s)")
    say(f"    worker CPU        {r['cpu_ms_per_msg']:8.2f} ms/msg  (main "
        f"{r['cpu_ms_per_msg_main']:.2f} + decode children {r['cpu_ms_per_msg_children']:.2f};"
        f" kernel {r['cpu_ms_per_msg_system']:.2f} of it)")
    other = "  ".join(f"{k} {v:.2f}" for k, v in r["other_cpu_ms_per_msg"].items())
    say(f"    other CPU ms/msg  {other}  harness {r['harness_cpu_ms_per_msg']:.2f}")
    for w in r["per_worker"]:
        say(f"    worker pid {w['pid']}: peak RSS main {w['main_hwm_mb']:.0f} MB, decode child "
            f"{w['decode_child_hwm_mb']:.0f} MB, whole tree {w['tree_hwm_mb']:.0f} MB")
    sl, pl = r["saturation_latency_ms"], r["paced_latency_ms"]
    say(f"    latency @sat      p50 {_f(sl['p50'], 0)} ms  p95 {_f(sl['p95'], 0)} ms  "
        f"p99 {_f(sl['p99'], 0)} ms")
    say(f"    latency @{r['paced_rate_msg_s']:.0f}/s     p50 {_f(pl['p50'])} ms  p95 "
        f"{_f(pl['p95'])} ms  p99 {_f(pl['p99'])} ms   ({r['paced_messages']} paced)")
    if r.get("profile"):
        prof = r["profile"]
        say(f"    profile ({prof['samples']} samples): " + ", ".join(
            f"{k} {v:.0%}" for k, v in prof["by_area"].items() if v >= 0.01))
    say(f"    outcomes          {r['outcomes']}  results {r['results']}/"
        f"{r['expected_results']}  lost {r['lost']}  duplicated {r['duplicated']}")
    if r.get("settle_events") and r["settle_events"] != r["outcomes"]:
        say(f"    settle events     {r['settle_events']}  (incl. warm-up and redeliveries)")


def summarise(report: dict[str, Any]) -> None:
    floor = report["decode_floor"]
    ceil = {c["processes"]: c for c in report["storage_ceiling"]}
    fleet = report["fleet"]
    say()
    say("== summary")
    say(f"  {'setting':<8} {'msg/s':>7} {'CPU ms/msg':>10} {'RSS MB':>7} {'p50@½':>7} "
        f"{'p99@½':>7} {'p50@sat':>8} {'p99@sat':>8} {'lost':>5} {'dup':>4}")
    for r in fleet:
        rss = max(w["tree_hwm_mb"] for w in r["per_worker"])
        pl, sl = r["paced_latency_ms"], r["saturation_latency_ms"]
        say(f"  {r['setting']:<8} {r['throughput_msg_s']:7.1f} {r['cpu_ms_per_msg']:10.2f} "
            f"{rss:7.0f} {_f(pl['p50']):>7} {_f(pl['p99']):>7} {_f(sl['p50'], 0):>8} "
            f"{_f(sl['p99'], 0):>8} {r['lost']:>5} {r['duplicated']:>4}")
    say()
    say("== ratios")
    for r in fleet:
        say(f"  worker CPU / decode floor      [{r['setting']}] {r['cpu_ms_per_msg']:.2f} / "
            f"{floor['floor_ms_per_file']:.2f} = "
            f"{r['cpu_ms_per_msg'] / floor['floor_ms_per_file']:.2f}x   (target <= 3x)")
    ir = report.get("instructions")
    if ir:
        say(f"  worker instructions / floor    [w1d1] {ir['worker_ir_per_msg'] / 1e6:.2f} M / "
            f"{ir['floor_ir_per_file'] / 1e6:.2f} M = {ir['worker_ratio']:.2f}x   "
            f"(CPU stages alone {ir['stages_ratio']:.2f}x; user space, valgrind)")
    for r in fleet:
        c = ceil.get(r["workers"])
        if c:
            say(f"  throughput / storage ceiling   [{r['setting']}] {r['throughput_msg_s']:.1f} /"
                f" {c['pairs_per_s']:.1f} = {r['throughput_msg_s'] / c['pairs_per_s']:.0%}"
                f"   (target >= 80% for one worker)")
    by = {(r["workers"], r["decode_mode"]): r for r in fleet}
    for d in sorted({r["decode_mode"] for r in fleet}):
        one, two = by.get((1, d)), by.get((2, d))
        if one and two:
            c1, c2 = ceil.get(1), ceil.get(2)
            allows = (f"; ceiling allows {c2['pairs_per_s'] / c1['pairs_per_s']:.2f}x"
                      if c1 and c2 else "")
            say(f"  2 workers / 1 worker           [d{d}] {two['throughput_msg_s']:.1f} / "
                f"{one['throughput_msg_s']:.1f} = "
                f"{two['throughput_msg_s'] / one['throughput_msg_s']:.2f}x   "
                f"(target >= 1.7x{allows})")
    for g in report.get("growth", []):
        fl, fu = g["floor"], g["full"]
        if "seconds" in fl and "seconds" in fu:
            say(f"  full / decode floor            [{g['file']} {g['items']:,}] "
                f"{fu['seconds']:.2f} s / {fl['seconds']:.2f} s = "
                f"{fu['seconds'] / fl['seconds']:.2f}x wall "
                f"({fu['cpu_s'] / fl['cpu_s']:.2f}x CPU), peak RSS {fu['hwm_mb']:.0f} MB"
                f"   (target <= 2x, <= 300 MB at 1M)")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
    with contextlib.suppress(Exception):
        import boto3
        import fastavro

        info["fastavro"] = fastavro.__version__
        info["boto3"] = boto3.__version__
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short",
                                         "HEAD"], capture_output=True, text=True,
                                        check=False).stdout.strip()
    return info


# --- main --------------------------------------------------------------------------------------
def _inputs(env: dict[str, str], workdir: Path) -> tuple[list[Input], list[tuple[str, bytes]]]:
    import hashlib

    from etl_devtools.samples import generate_samples
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops.sample_files import iter_sample_files
    from etl_engine.settings import load_settings

    sample_dir = workdir / "samples"
    generate_samples(sample_dir, seed=7, bad=False)
    settings = load_settings(s3_endpoint_url=env["ETL_S3_ENDPOINT_URL"],
                             s3_access_key_id="test", s3_secret_access_key="test")
    store = Storage(make_client(settings))
    bucket = env["ETL_BUCKET"]
    store.ensure_bucket(bucket)
    inputs, files = [], []
    for rt, path in iter_sample_files(sample_dir):
        data = path.read_bytes()
        key = f"raw/{rt}/2026/11/01/bench-{path.name}"
        store.client.put_object(Bucket=bucket, Key=key, Body=data)
        inputs.append(Input(rt, key, len(data), hashlib.sha256(data).hexdigest()))
        files.append((rt, data))
    return inputs, files


def _cleanup(env: dict[str, str], buckets: list[str]) -> None:
    async def broker() -> None:
        import aio_pika

        from etl_devtools.topology_cleanup import delete_all
        from etl_engine.settings import load_settings

        settings = load_settings(amqp_url=env["ETL_AMQP_URL"], exchange=env["ETL_EXCHANGE"],
                                 queue=env["ETL_QUEUE"])
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=10)
        async with conn:
            await delete_all(await conn.channel(), settings)

    async def redis() -> None:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(env["ETL_DEDUP_URL"])
        try:
            batch: list[bytes] = []
            async for key in r.scan_iter(match=env["ETL_DEDUP_PREFIX"] + ":*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await r.delete(*batch)
                    batch = []
            if batch:
                await r.delete(*batch)
        finally:
            await r.aclose()

    with contextlib.suppress(Exception):
        asyncio.run(broker())
    with contextlib.suppress(Exception):
        asyncio.run(redis())


def _measure_floor(plan: Plan, files: list[tuple[str, bytes]], report: dict[str, Any]) -> None:
    say("\n== 1. decode floor (fastavro.reader over the mix, in process)")
    floor = decode_floor(files, plan.floor_seconds)
    report["decode_floor"] = floor
    say(f"  {floor['floor_files_per_s']:8.0f} files/s  {floor['floor_ms_per_file']:6.2f} "
        f"ms/file   (worker CPU stages in process: {floor['stages_ms_per_file']:.2f} "
        f"ms/file)")


def _ceiling_for(plan: Plan, env: dict[str, str], inputs: list[Input], out_bucket: str,
                 processes: int, moto: MotoServer | None) -> dict[str, Any]:
    """The storage ceiling with ``processes`` clients, the fleet's concurrency each."""
    return storage_ceiling(env, [i.key for i in inputs], out_bucket, 3000,
                           plan.concurrency, processes, plan.ceiling_pairs,
                           moto.proc.pid if moto else None)


def _measure_ceiling(plan: Plan, env: dict[str, str], inputs: list[Input],
                     moto: MotoServer | None, out_bucket: str) -> list[dict[str, Any]]:
    """One ceiling per worker count of the plan, so each fleet has its own to compare to."""
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    say(f"\n== 2. storage ceiling (boto3 GET input + conditional PUT output, "
        f"{plan.concurrency} threads per client process)")
    ceiling = []
    Storage(make_client(load_settings())).ensure_bucket(out_bucket)
    for procs in sorted(set(plan.workers)):
        c = _ceiling_for(plan, env, inputs, out_bucket, procs, moto)
        ceiling.append(c)
        server = (f", server {c['server_cpu_ms_per_pair']:.2f}"
                  if c["server_cpu_ms_per_pair"] is not None else "")
        say(f"  {procs} client process(es): {c['pairs_per_s']:7.1f} GET+PUT/s  "
            f"(CPU ms/pair: client {c['client_cpu_ms_per_pair']:.2f}{server})")
    return ceiling


def _measure_ceiling_again(plan: Plan, env: dict[str, str], inputs: list[Input],
                           moto: MotoServer | None, out_bucket: str,
                           ceiling: list[dict[str, Any]]) -> None:
    """The machine's load varies: keep the higher of the two counts (in ``ceiling``)."""
    say("\n== 2b. storage ceiling again (the machine's load varies: the higher of the two "
        "counts)")
    for i, c in enumerate(ceiling):
        again = _ceiling_for(plan, env, inputs, out_bucket, c["processes"], moto)
        say(f"  {c['processes']} client process(es): {again['pairs_per_s']:7.1f} "
            f"GET+PUT/s (again, after the fleet)")
        if again["pairs_per_s"] > c["pairs_per_s"]:
            ceiling[i] = {**again, "first_pairs_per_s": c["pairs_per_s"]}
        else:
            c["again_pairs_per_s"] = again["pairs_per_s"]


def _measure_fleets(plan: Plan, env: dict[str, str], inputs: list[Input], workdir: Path,
                    moto: MotoServer | None, buckets: list[str],
                    report: dict[str, Any]) -> None:
    say(f"\n== 3. the fleet ({plan.messages} messages at saturation, then about half "
        f"that rate for {plan.paced_seconds:.0f} s)")
    report["fleet"] = []
    for d in plan.decode_modes:
        for w in plan.workers:
            r = run_fleet(plan, env, inputs, workdir, w, d,
                          moto.proc.pid if moto else None)
            buckets.append(f"bench-{plan.run_id}-{r['setting']}")
            report["fleet"].append(r)
            print_fleet(r)


def _measure_instructions(plan: Plan, env: dict[str, str], inputs: list[Input],
                          workdir: Path, buckets: list[str], report: dict[str, Any]) -> None:
    say(f"\n== 6. instructions (valgrind; the host's load does not change them): "
        f"1 worker, {plan.instructions} messages")
    if shutil.which("valgrind") is None:
        say("  skipped: valgrind is not installed")
        return
    ir = instruction_counts(plan, env, inputs, workdir)
    buckets.append(f"bench-{plan.run_id}-instr")
    report["instructions"] = ir
    say(f"  decode floor {ir['floor_ir_per_file'] / 1e6:8.2f} M/file   "
        f"CPU stages {ir['stages_ir_per_file'] / 1e6:6.2f} M/file   "
        f"worker {ir['worker_ir_per_msg'] / 1e6:6.2f} M/msg")


def _measure(plan: Plan, args: argparse.Namespace, env: dict[str, str], inputs: list[Input],
             files: list[tuple[str, bytes]], workdir: Path, moto: MotoServer | None,
             buckets: list[str], report: dict[str, Any]) -> None:
    """Sections 1-6 and the summary (the default run)."""
    cache = Path(args.cache_dir) if args.cache_dir else DEFAULT_CACHE
    _measure_floor(plan, files, report)
    out_bucket = f"bench-{plan.run_id}-ceiling"
    buckets.append(out_bucket)
    ceiling = _measure_ceiling(plan, env, inputs, moto, out_bucket)
    report["storage_ceiling"] = ceiling
    _measure_fleets(plan, env, inputs, workdir, moto, buckets, report)
    _measure_ceiling_again(plan, env, inputs, moto, out_bucket, ceiling)
    report["storage_ceiling"] = ceiling
    report["growth"] = []
    if plan.growth_large:
        say("\n== 5. growth (fresh subprocess per run; floor = fastavro.reader "
            "iterating the file)")
        report["growth"] = growth(plan, cache)
    if plan.instructions:
        _measure_instructions(plan, env, inputs, workdir, buckets, report)
    summarise(report)


def run(args: argparse.Namespace) -> int:
    if args.charts_from:
        return _charts(Path(args.charts_from), Path(args.charts or ROOT / "docs" / "img"))
    plan = make_plan(args)
    started = datetime.now(UTC)
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"etl-bench-{plan.run_id}-"))
    report: dict[str, Any] = {"started": started.isoformat(timespec="seconds"),
                              "machine": machine(), "quick": plan.quick,
                              "command": " ".join(["etl-engine bench", *sys.argv[2:]])
                              if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
                              "plan": plan.__dict__}
    say(f"etl-engine bench {'--quick ' if plan.quick else ''}run {plan.run_id}  "
        f"{started:%Y-%m-%d %H:%M} UTC  {report['machine'].get('cpu', '?')}, "
        f"{report['machine']['cpus']} CPUs, {report['machine'].get('memory_gb', '?')} GB")
    moto = None if args.s3_endpoint else MotoServer(workdir / "moto.log", args.s3_server)
    s3_url = args.s3_endpoint or (moto.url if moto else "")
    env = base_env(plan, s3_url, os.environ.get("ETL_AMQP_URL", DEFAULT_AMQP),
                   os.environ.get("ETL_BENCH_REDIS_URL", DEFAULT_REDIS))
    os.environ.update({k: v for k, v in env.items()})  # for load_settings in this process
    buckets = [env["ETL_BUCKET"]]
    try:
        inputs, files = _inputs(env, workdir)
        say(f"sample mix: {len(inputs)} files, {sum(i.size for i in inputs) / 1024:.0f} KiB, "
            f"types {len({i.record_type for i in inputs})}; S3 {s3_url} "
            f"({'own ' + args.s3_server + ' server' if moto else 'given'})")
        if args.ab is not None:
            a, b = (_env_pairs(x) for x in args.ab)
            say(f"== side by side: A {a or 'defaults'} / B {b or 'defaults'}; each "
                f"{plan.messages} messages a round at {args.ab_rate:g} msg/s, the same minutes")
            ab = compare(plan, env, inputs, workdir, (a, b), args.ab_rate, args.ab_rounds)
            buckets += ab.pop("buckets")
            report["ab"] = ab
            say(f"  B/A mean {ab['b_over_a_mean']:.3f} (min {ab['b_over_a_min']:.3f}, "
                f"max {ab['b_over_a_max']:.3f}) worker CPU per message")
        else:
            _measure(plan, args, env, inputs, files, workdir, moto, buckets, report)
    finally:
        _cleanup(env, buckets)
        if moto:
            moto.stop()
    report["elapsed_s"] = time.monotonic() - t_start
    say(f"\nelapsed {report['elapsed_s']:.0f} s; logs and samples in {workdir}")
    out = Path(args.json) if args.json else ROOT / ".run" / f"bench-{plan.run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    say(f"figures written to {out}")
    if args.charts:
        _charts(out, Path(args.charts))
    return 0


def _charts(figures: Path, out_dir: Path) -> int:
    """Draw a figures file's charts (``bench_charts``) and say where they went."""
    from etl_devtools.bench_charts import render_file

    for path in render_file(figures, out_dir):
        say(f"chart written to {path}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.add_argument("--messages", type=int, default=0, help="messages per setting (5000)")
    p.add_argument("--workers", default="", help="worker counts to run, e.g. 1,2")
    p.add_argument("--decode-processes", default="",
                   help="decode modes: N = ETL_DECODE_PROCESSES=N (ordinary files on the "
                        "worker's thread), Nc = every file in N children; e.g. 1,1c")
    p.add_argument("--concurrency", type=int, default=8, help="ETL_CONCURRENCY per worker")
    p.add_argument("--paced-seconds", type=float, default=0.0,
                   help="duration of the half-rate latency run")
    p.add_argument("--ceiling-pairs", type=int, default=0, help="GET+PUT pairs per client")
    p.add_argument("--profile", action="store_true",
                   help="sample the workers with py-spy during the saturation run")
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="also count instructions with valgrind: the floor and the CPU stages "
                        "per file, one worker per message over N messages (e.g. 150; slow)")
    p.add_argument("--ab", nargs=2, metavar=("A_ENV", "B_ENV"), default=None,
                   help="instead of the run: worker A and worker B side by side on the same "
                        "paced load, e.g. --ab ETL_DECODE_ON_LOOP_MAX_BYTES=0 '' (comma-"
                        "separated ETL_ settings; '' = defaults); prints B/A CPU per message")
    p.add_argument("--ab-rate", type=float, default=65.0,
                   help="messages/s to each of A and B (keep the sum under saturation)")
    p.add_argument("--ab-rounds", type=int, default=3, help="rounds of --messages each")
    p.add_argument("--no-growth", action="store_true", help="skip the large-file runs")
    p.add_argument("--s3-endpoint", default="", help="use this S3 server (MinIO, ...)")
    p.add_argument("--s3-server", choices=("dev", "moto"), default="dev",
                   help="the S3 server to start: dev = moto behind a keep-alive server "
                        "(etl_devtools.dev_s3), moto = plain moto.server (a connection per "
                        "request)")
    p.add_argument("--cache-dir", default="", help=f"large files cache ({DEFAULT_CACHE})")
    p.add_argument("--json", default="", help="write the figures here (.run/bench-ID.json)")
    p.add_argument("--charts", default="", metavar="DIR",
                   help="also draw the figures as SVG charts into DIR (docs/img for "
                        "docs/performance.md; etl_devtools.bench_charts)")
    p.add_argument("--charts-from", default="", metavar="FIGURES_JSON",
                   help="no run: draw the charts of a figures file written by --json (into "
                        "--charts DIR, default docs/img)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ceiling"]:
        print(json.dumps(_ceiling_child(json.loads(argv[1]))))
        return 0
    if argv[:1] == ["_ir"]:
        _ir_child(argv[1], argv[2], int(argv[3]))
        return 0
    if argv[:1] == ["_growth"]:
        print(json.dumps(_growth_child(argv[1], argv[2], argv[3])))
        return 0
    p = argparse.ArgumentParser(prog="etl-engine bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
