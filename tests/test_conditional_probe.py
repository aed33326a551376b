"""The start-up probe: the worker runs only on a store that honours ``If-None-Match: *``
(issue 15, hole 2), unless ETL_UNSAFE_NO_CONDITIONAL_WRITES=true says otherwise, loudly.

The misbehaving stores are ``s3_conditional_shim.S3Shim`` in front of the S3 server: one
that drops the header (overwrites, as older MinIO releases did), one that answers 501, one
that answers 409 for a while.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl_engine.adapters.storage import (
    PROBE_KEY,
    AsyncStorage,
    ConditionalWrites,
    Storage,
    check_conditional_writes,
    make_client,
    make_hot_path,
    probe_conditional_writes,
)
from etl_engine.settings import ConfigError, Settings
from helpers import (
    WorkerProcess,
    publish,
    results,
    sample_files,
    storage_for,
    upload,
    wait_outcomes,
)
from s3_conditional_shim import S3Shim

NDJSON = "application/x-ndjson"


@pytest.fixture
def shim(s3_endpoint: str) -> Iterator[S3Shim]:
    server = S3Shim(s3_endpoint)
    yield server
    server.close()


def _store(settings: Settings, url: str, client: str = "obstore", **update: object
           ) -> tuple[AsyncStorage, Settings]:
    s = settings.model_copy(update={"s3_endpoint_url": url, "s3_client": client,
                                    "s3_read_timeout_s": 2.0, "s3_connect_timeout_s": 1.0,
                                    **update})
    return AsyncStorage(Storage(make_client(s)), threads=2, hot=make_hot_path(s)), s


@pytest.mark.parametrize("client", ["obstore", "boto3"])
async def test_a_store_that_honours_if_none_match_passes(settings: Settings, s3_endpoint: str,
                                                         client: str) -> None:
    store, s = _store(settings, s3_endpoint, client)
    try:
        for _ in range(2):  # the probe object stays: the next start's creates are refused
            assert await check_conditional_writes(store, s) is ConditionalWrites.HONOURED
        assert store.sync.unsafe_check_then_put is False
        key = f"{settings.probe_prefix}{PROBE_KEY}"
        assert key == "_etl/probe/conditional-write-probe"
        assert storage_for(settings).get(settings.bucket, key) == b"probe\n"
    finally:
        store.close()


@pytest.mark.parametrize("client", ["obstore", "boto3"])
@pytest.mark.parametrize(("mode", "verdict"), [("ignore", ConditionalWrites.IGNORED),
                                               ("501", ConditionalWrites.NOT_IMPLEMENTED)])
async def test_a_store_without_conditional_writes_is_refused_unless_unsafe(
    settings: Settings, shim: S3Shim, client: str, mode: str, verdict: ConditionalWrites,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shim.if_none_match = mode
    store, s = _store(settings, shim.url, client)
    try:
        assert await probe_conditional_writes(store, s.bucket, s.probe_prefix) is verdict
        with pytest.raises(ConfigError) as info:
            await check_conditional_writes(store, s)
        assert "ETL_UNSAFE_NO_CONDITIONAL_WRITES" in str(info.value)
        assert store.sync.unsafe_check_then_put is False
        unsafe = s.model_copy(update={"unsafe_no_conditional_writes": True})
        assert await check_conditional_writes(store, unsafe) is verdict
        said = capsys.readouterr()  # the loud warning (stderr once logs.configure ran)
        assert "unsafe_no_conditional_writes" in said.out + said.err
        # HEAD then PUT from now on: a second create of the same key is refused
        key = f"training/x/unsafe-{mode}-{client}.jsonl"
        for body, created in ((b"one\n", True), (b"two\n", False)):
            assert await store.put_if_absent(s.bucket, key, body, content_type=NDJSON,
                                             metadata={}) is created
        assert storage_for(settings).get(settings.bucket, key) == b"one\n"
    finally:
        store.close()


async def test_a_conflict_while_probing_is_retried(settings: Settings, shim: S3Shim) -> None:
    """Two workers starting at once on S3 can meet a 409: wait, probe again."""
    shim.put_conflicts = 2
    store, s = _store(settings, shim.url)
    try:
        verdict = await asyncio.wait_for(check_conditional_writes(store, s), 20)
        assert verdict is ConditionalWrites.HONOURED
        assert shim.put_conflicts == 0
    finally:
        store.close()


async def test_a_missing_bucket_is_a_configuration_error(settings: Settings,
                                                         s3_endpoint: str) -> None:
    store, s = _store(settings, s3_endpoint, bucket=f"{settings.bucket}-missing")
    try:
        with pytest.raises(ConfigError) as info:
            await asyncio.wait_for(check_conditional_writes(store, s), 20)
        assert "ETL_BUCKET" in str(info.value)
    finally:
        store.close()


async def test_an_unreachable_store_is_waited_for_until_stopped(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    store, s = _store(settings, f"http://127.0.0.1:{port}")
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(check_conditional_writes(store, s, stop=stop))
        await asyncio.sleep(1.5)
        assert not task.done(), "no answer yet: keep waiting, neither start nor refuse"
        stop.set()
        assert await asyncio.wait_for(task, 10) is None
    finally:
        store.close()


class _StallsOnce:
    """A store whose first create never completes (no answer, no error), then honours
    If-None-Match: the probe must give up on the stalled try, log it, and probe again."""

    def __init__(self) -> None:
        self.calls = 0
        self.created: set[str] = set()

    async def create(self, bucket: str, key: str, body: bytes, **_: object) -> bool | None:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()  # never set
        if key in self.created:
            return False
        self.created.add(key)
        return True


async def test_a_probe_request_that_never_completes_is_tried_again(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    quick = settings.model_copy(update={"s3_connect_timeout_s": 0.1, "s3_read_timeout_s": 0.1})
    store = _StallsOnce()
    verdict = await asyncio.wait_for(
        check_conditional_writes(store, quick), 10)  # type: ignore[arg-type]
    assert verdict is ConditionalWrites.HONOURED and store.calls == 3
    said = capsys.readouterr()
    assert "probe_timeout" in said.out + said.err


# --- the worker process ---------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_the_worker_refuses_to_start_on_a_store_that_ignores_if_none_match(
    settings: Settings, test_env: dict[str, str], shim: S3Shim, tmp_path: Path
) -> None:
    shim.if_none_match = "ignore"
    # Short S3 timeouts: a request the thread-per-request shim stalls on is retried within
    # the wait instead of outlasting it (seen once under a full suite; wait_exit then
    # prints the worker's stacks).
    quick = {"ETL_S3_READ_TIMEOUT_S": "5", "ETL_S3_CONNECT_TIMEOUT_S": "2"}
    refused = WorkerProcess(test_env, tmp_path / "refused.log", ETL_S3_ENDPOINT_URL=shim.url,
                            **quick)
    try:
        assert await refused.wait_exit(90) == 78  # EX_CONFIG, like a bad setting
    finally:
        refused.kill()
    out = (tmp_path / "refused.log").read_text()
    assert "etl-engine: ETL_UNSAFE_NO_CONDITIONAL_WRITES" in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]

    # With the setting it starts, says so, and writes HEAD-then-PUT: a repeat is a duplicate.
    unsafe = WorkerProcess(test_env, tmp_path / "unsafe.log", ETL_S3_ENDPOINT_URL=shim.url,
                           ETL_UNSAFE_NO_CONDITIONAL_WRITES="true")
    try:
        await unsafe.wait_ready(60)
        rt, path = sample_files()[0]
        u = upload(settings, rt, path)
        first = {**u.message(), "message_id": u.message_id}
        second = {**first, "message_id": "again-" + u.message_id}
        await publish(settings, first)
        await wait_outcomes(settings, [first["message_id"]])
        await publish(settings, second)
        outcomes = await wait_outcomes(settings, [first["message_id"], second["message_id"]])
        assert outcomes == {first["message_id"]: "processed",
                            second["message_id"]: "duplicate"}
        assert len(results(settings)) == 1
        unsafe.signal(signal.SIGTERM)
        assert await unsafe.wait_exit(60) == 0
    finally:
        unsafe.kill()
    log = (tmp_path / "unsafe.log").read_text()
    assert "unsafe_no_conditional_writes" in log
