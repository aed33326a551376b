"""Restart the local RabbitMQ and Redis (the disruptive scenarios), always bringing them back."""

from __future__ import annotations

import contextlib
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
