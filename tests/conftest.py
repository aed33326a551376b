"""Shared fixtures: real RabbitMQ and Redis on localhost, a moto S3 server per session.

Every test gets its own exchange, queues, bucket and Redis key prefix, so a stack running
on the same machine is never disturbed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import start_s3_server

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
AMQP_URL = os.environ.get("ETL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# `etl-engine` reads .env from its working directory (here the repository root, where the
# stack scripts write one): the commands the tests run see only the environment the tests
# give them (tests/test_cli.py checks the .env reading itself).
os.environ["ETL_ENV_FILE"] = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def _services_up() -> None:
    missing = [name for name, port in (("RabbitMQ", 5672), ("Redis", 6379))
               if not _reachable("127.0.0.1", port)]
    if missing:
        pytest.exit(f"{', '.join(missing)} not reachable on 127.0.0.1: start them "
                    "(./scripts/manage-etl-stack.sh start) and re-run", returncode=3)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory, _services_up: None) -> Iterator[str]:
    """A moto S3 server (etl_devtools.dev_s3: keep-alive) in its own process, like MinIO."""
    proc, url = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log", _free_port())
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # busy with a large store (the chaos soak)
        proc.kill()
        proc.wait(10)


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def test_env(s3_endpoint: str, run_id: str) -> dict[str, str]:
    """ETL_* variables naming this test's own queue, exchange, bucket and key prefix."""
    return {
        "ETL_AMQP_URL": AMQP_URL,
        "ETL_EXCHANGE": f"test.{run_id}.exchange",
        "ETL_QUEUE": f"test.{run_id}.work",
        "ETL_RETRY_DELAYS_MS": "200,500,1000",
        "ETL_MAX_ATTEMPTS": "3",
        "ETL_S3_ENDPOINT_URL": s3_endpoint,
        "ETL_S3_ACCESS_KEY_ID": "test",
        "ETL_S3_SECRET_ACCESS_KEY": "test",
        "ETL_BUCKET": f"test-{run_id}",
        "ETL_DEDUP_URL": REDIS_URL,
        "ETL_DEDUP_PREFIX": f"test:{run_id}",
        "ETL_SIDECAR_PORT": "0",
        "ETL_DECODE_PROCESSES": "0",
        "ETL_CONCURRENCY": "4",
        "ETL_SHUTDOWN_GRACE_S": "10",
        "ETL_LOG_LEVEL": "INFO",
        "ETL_AMQP_HEARTBEAT_S": "5",
        "ETL_LEASE_TTL_S": "3",
        "ETL_USER_ID_HASH_KEY": f"test-hash-key-{run_id}",
        "ETL_LINEAGE_KEY": f"test-lineage-key-{run_id}",
    }


@pytest.fixture
def settings(test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.settings import load_settings

    for k, v in test_env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    Storage(make_client(s)).ensure_bucket(s.bucket)
    return s


@pytest.fixture
async def clean_topology(settings):  # type: ignore[no-untyped-def]
    """Delete this test's exchanges and queues afterwards."""
    from helpers import delete_topology

    yield
    await delete_topology(settings)


@pytest.fixture
async def pipeline(settings):  # type: ignore[no-untyped-def]
    """A Pipeline on the real S3 server and Redis, decoding in a thread, no broker."""
    from etl_engine.adapters.dedup import open_store
    from etl_engine.adapters.storage import AsyncStorage, Storage, make_client, make_hot_path
    from etl_engine.runtime.compute import ComputePool
    from etl_engine.runtime.pipeline import Pipeline

    storage = AsyncStorage(Storage(make_client(settings)), threads=2,
                           hot=make_hot_path(settings))
    dedup = open_store(settings.dedup_url, settings.dedup_prefix)
    compute = ComputePool(0, 512, 30)
    yield Pipeline(settings, storage, dedup, compute, owner="test-owner")
    compute.close()
    storage.close()
    await dedup.close()
