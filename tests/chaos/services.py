"""Restart the local RabbitMQ and Redis (the disruptive scenarios), always bringing them back."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator

import aio_pika

REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
               "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _run(*cmd: str, timeout: float = 120) -> None:
    subprocess.run(list(cmd), check=True, timeout=timeout, capture_output=True)


async def amqp_up(url: str) -> bool:
    try:
        conn = await aio_pika.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


def rabbitmq_stop() -> None:
    _run("rabbitmqctl", "stop_app")


def rabbitmq_start() -> None:
    """Start the app again; on failure restart the whole node."""
    try:
        _run("rabbitmqctl", "start_app")
    except subprocess.SubprocessError:
        with contextlib.suppress(subprocess.SubprocessError):
            _run("rabbitmqctl", "stop")
        subprocess.run(["rabbitmq-server", "-detached"], check=False, timeout=60)
        _run("rabbitmqctl", "await_startup", timeout=180)


def redis_ping() -> bool:
    try:
        out = subprocess.run(["redis-cli", "ping"], capture_output=True, text=True, timeout=5)
    except (subprocess.SubprocessError, OSError):
        return False
    return out.stdout.strip() == "PONG"


def redis_stop() -> None:
    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=30,
                   check=False)
    deadline = time.monotonic() + 20
    while port_open(6379) and time.monotonic() < deadline:
        time.sleep(0.05)


def redis_start() -> None:
    if not redis_ping():
        subprocess.run(REDIS_START, capture_output=True, timeout=30, check=False)
    deadline = time.monotonic() + 30
    while not redis_ping():
        if time.monotonic() > deadline:
            raise RuntimeError("redis did not come back")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_guard() -> Iterator[None]:
    """Whatever happens in the block, Redis is running after it."""
    try:
        yield
    finally:
        redis_start()


@contextlib.contextmanager
def rabbitmq_guard() -> Iterator[None]:
    try:
        yield
    finally:
        if not port_open(5672):
            rabbitmq_start()


# --- a test's own Redis keys -------------------------------------------------------------------
def redis_flush_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``{prefix}:`` (SCAN + DEL): the test's own dedup state, as a
    flush would lose it, without touching anyone else's keys (never FLUSHALL: the
    machine's Redis is shared). Returns how many keys went."""
    import redis

    client = redis.Redis.from_url(url)
    gone = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                gone += int(client.delete(*batch))
                batch.clear()
        if batch:
            gone += int(client.delete(*batch))
    finally:
        client.close()
    return gone


# --- a broker memory alarm -----------------------------------------------------------------------
def memory_watermark() -> list[str]:
    """The broker's ``vm_memory_high_watermark`` as ``set_vm_memory_high_watermark`` takes
    it: ``["0.4"]`` (a fraction) or ``["absolute", "1073741824"]``."""
    out = subprocess.run(["rabbitmqctl", "-q", "environment"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    found = re.search(r"\{vm_memory_high_watermark,\s*(\{absolute,\s*(\"?)([^}\"]+)\2\}|"
                      r"[0-9.]+)\}", out)
    if found is None:
        raise RuntimeError("rabbitmqctl environment: no vm_memory_high_watermark")
    if found.group(3) is not None:
        return ["absolute", found.group(3).strip()]
    return [found.group(1)]


@contextlib.contextmanager
def memory_alarm() -> Iterator[list[str]]:
    """The broker in a memory alarm (watermark 1 byte: every publishing connection is
    blocked) for the block; the watermark read before is restored exactly, whatever
    happens. Yields the saved value."""
    saved = memory_watermark()
    try:
        _run("rabbitmqctl", "set_vm_memory_high_watermark", "absolute", "1", timeout=60)
        yield saved
    finally:
        _run("rabbitmqctl", "set_vm_memory_high_watermark", *saved, timeout=60)


def memory_alarm_on() -> bool:
    """Whether the broker reports a memory alarm now."""
    out = subprocess.run(["rabbitmq-diagnostics", "-q", "alarms"], capture_output=True,
                         text=True, timeout=60, check=False).stdout
    return "memory" in out.lower()


# --- a skewed clock ------------------------------------------------------------------------------
def faketime_env(offset: str) -> dict[str, str] | None:
    """Environment that runs a process under libfaketime (Debian package ``faketime``),
    its wall clock shifted by ``offset`` (e.g. ``-6m``); monotonic time stays real so
    timers and timeouts behave. None when libfaketime is not installed."""
    import glob
    import shutil

    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
                  + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1"))
    if not libs or shutil.which("faketime") is None:
        return None
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}
