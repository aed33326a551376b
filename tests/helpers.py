"""Test helpers: run workers (in-process or as processes), publish, inspect results."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from etl_engine.adapters.publisher import Publisher, Upload, upload_file
from etl_engine.adapters.storage import Storage, make_client
from etl_engine.domain.lineage import record_id
from etl_engine.runtime.hooks import PipelineObserver
from etl_engine.runtime.worker import Worker
from etl_engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def start_s3_server(log: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Our local S3 server (etl_devtools.dev_s3, keep-alive like MinIO) in its own process;
    returns it and its URL once it answers."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl_devtools.dev_s3", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"S3 server did not start: {log.read_text()[-2000:]}"
                                   ) from None
            time.sleep(0.1)


def storage_for(settings: Settings) -> Storage:
    return Storage(make_client(settings))


def sample_files() -> list[tuple[str, Path]]:
    from etl_engine.ops.sample_files import iter_sample_files

    return iter_sample_files(SAMPLES)


def new_user() -> str:
    """A user of its own: the upload service's key is per (user, file), so each upload by a
    fresh user is a distinct input even for the same bytes."""
    import uuid

    return f"user-{uuid.uuid4().hex[:12]}"


def upload(settings: Settings, record_type: str, path: Path, run: str = "",
           user_id: str = "") -> Upload:
    """``path`` uploaded as the upload service does (key layout, idempotency key)."""
    return upload_file(storage_for(settings), settings, record_type, path,
                       user_id=user_id or new_user(), run_id=run)


UPLOAD_WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_UPLOADS = itertools.count()  # a user's second upload gets a later time, so its own key


def labelled_user(base: str, name: str) -> str:
    """A user id that carries a test file's label (``base-label``), so the key, which must
    follow the upload service's layout, still says which case it is."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", Path(name).stem).strip("-")[:60]
    return f"{base}-{stem}" if stem else base


def upload_key(settings: Settings, record_type: str, user_id: str) -> str:
    """The upload service's key for a test upload (a new time for each)."""
    from etl_engine.adapters.publisher import raw_key

    return raw_key(settings, record_type, user_id,
                   UPLOAD_WHEN + timedelta(microseconds=next(_UPLOADS)))


def upload_bytes(settings: Settings, record_type: str, name: str, data: bytes,
                 user_id: str = "") -> Upload:
    """``data`` uploaded as the upload service would store and describe it, by a fresh user
    named after ``name`` (a hostile file keeps a readable label in its key)."""
    from etl_engine.adapters.publisher import describe_upload

    user = user_id or labelled_user(new_user(), name)
    key = upload_key(settings, record_type, user)
    storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    return describe_upload(settings, record_type, key, data, user)


def sealed(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the idempotency key the upload service derives from its user and hash
    (a test that changes the claimed hash keeps a well-formed message)."""
    from etl_engine.domain.messages import upload_idempotency_key

    digest = body.get("content_hash") or body.get("file_hash")
    hashes = {k: digest for k in ("content_hash", "file_hash") if k in body}  # both agree
    return {**body, **hashes,
            "idempotency_key": upload_idempotency_key(body["user_id"], digest)}


async def publish(settings: Settings, *bodies: dict[str, Any] | bytes, **kw: Any) -> None:
    async with Publisher(settings) as pub:
        for body in bodies:
            await pub.publish(body, **kw)


class Consuming(PipelineObserver):
    """Set once the worker consumes (after every (re)connect)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def consuming(self) -> None:
        self.event.set()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    consuming = Consuming()
    worker = Worker(settings, observers=[consuming])
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(consuming.event.wait(), 15)
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


def keys(settings: Settings, prefix: str) -> list[str]:
    return sorted(storage_for(settings).list_keys(settings.bucket, prefix))


def rid(settings: Settings, idempotency_key: str) -> str:
    """An input's record id: its result's file name (a keyed pseudonym of its key)."""
    return record_id(settings.lineage_key.get_secret_value().encode(), idempotency_key)


def results(settings: Settings) -> list[str]:
    return keys(settings, settings.training_prefix)


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_outcomes(settings: Settings, message_ids: list[str], timeout: float = 30.0
                        ) -> dict[str, str]:
    from etl_engine.adapters.publisher import wait_for_outcomes

    seen, _ = await wait_for_outcomes(settings, message_ids, timeout_s=timeout)
    assert len(seen) == len(message_ids), f"settled {len(seen)}/{len(message_ids)}: {seen}"
    return seen


async def drain_dlq(settings: Settings) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    out = []
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(settings.dlq_name, passive=True)
        while (msg := await q.get(fail=False, no_ack=True)) is not None:
            out.append(msg)
    return out


async def queue_counts(settings: Settings, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue."""
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(name, passive=True)
        return q.declaration_result.message_count, q.declaration_result.consumer_count


async def delete_topology(settings: Settings) -> None:
    from etl_devtools.topology_cleanup import delete_all

    with contextlib.suppress(Exception):
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with conn:
            await delete_all(await conn.channel(), settings)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, from /proc/<pid>/stat."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _is_forkserver(pid: int) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from each process's parent in /proc/<pid>/stat: a
    child forked from one of its threads (the forkserver a helper thread starts) counts
    too, which /proc/<pid>/task/<pid>/children (the main thread's) misses."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in _process_table().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found.extend(kids)
        frontier.extend(kids)
    return found


def decode_children(pid: int) -> list[int]:
    """The live decode children of process ``pid`` (a worker, or this test process).

    Seen from outside, as an operator sees them: the package keeps no list of them for
    tests. The pool forks them from a multiprocessing forkserver, itself a child of
    ``pid``, so they are the descendants whose parent is a forkserver (the forkserver and
    the resource tracker are not decode children). A zombie counts as gone.
    """
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for child, (parent, state) in _process_table().items():
        children.setdefault(parent, []).append(child)
        states[child] = state
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = children.get(parent, [])
        frontier.extend(kids)
        if parent != pid and _is_forkserver(parent):
            found.extend(k for k in kids if states[k] != "Z")
    return sorted(found)


FAULTY_WORKER = ROOT / "tests" / "chaos" / "faulty_worker.py"


class WorkerProcess:
    """``etl-engine worker`` as a real process (for signals), ready when /ready says so.

    ``fault_point``: run it with a crash point instead (tests/chaos/faulty_worker.py, which
    documents the format), e.g. ``after_write@<idempotency key>``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, *, fault_point: str = "",
                 **overrides: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        full = {**os.environ, **env, **overrides, "ETL_SIDECAR_PORT": str(self.port),
                "ETL_SIDECAR_HOST": "127.0.0.1"}
        command = [sys.executable, "-m", "etl_engine.ops.cli", "worker"]
        if fault_point:
            full["CHAOS_FAULT_POINT"] = fault_point
            command = [sys.executable, str(FAULTY_WORKER)]
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(command, env=full, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.get("/ready")[0] == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not exit: {self.log_path.read_text()[-3000:]}"
                                     f"\n{self.stacks()}")
            await asyncio.sleep(0.05)
        self._log.close()
        return self.proc.returncode

    def stacks(self) -> str:
        """Where the process is stuck: every thread's stack (py-spy, from the dev extras)."""
        try:
            spy = str(Path(sys.executable).with_name("py-spy"))
            dump = subprocess.run([spy, "dump", "--pid", str(self.proc.pid)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(no stack dump: {exc!r})"
        return dump.stdout[-6000:] + dump.stderr[-1000:]

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        self._log.close()

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out


def varint(n: int) -> bytes:
    """Avro's zig-zag varint, for building hostile container files by hand."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def avro_bytes(b: bytes) -> bytes:
    return varint(len(b)) + b


def flat_items(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every (innermost key, leaf value) of nested statistics."""
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in flat_items(v, k)]
    if isinstance(value, list):
        return [kv for v in value for kv in flat_items(v, key)]
    return [(key, value)]
