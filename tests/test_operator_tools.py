"""Operator tools on the real services: dlq, quarantine, status, and start-up config checks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest

from etl_engine.adapters.publisher import describe_upload
from etl_engine.errors import TransientError
from etl_engine.ops.quarantine import worker_quarantine_key
from etl_engine.ops.status import WorkerFigures, histogram_quantile, parse_metrics
from helpers import (
    WorkerProcess,
    delete_topology,
    keys,
    publish,
    queue_counts,
    results,
    rid,
    running_worker,
    sample_files,
    storage_for,
    upload,
    upload_bytes,
    upload_key,
    wait_outcomes,
)

USER = "patient-SECRET-9090"


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``etl-engine ARGS`` as a real process with this test's ETL_* environment."""
    return subprocess.run(
        [sys.executable, "-m", "etl_engine.ops.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=timeout,
    )


async def acli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, env, *args)


async def wait_outcome(settings, message_id: str, want: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Wait for a message's recorded outcome to become ``want`` (it may be set already)."""
    from etl_engine.adapters.dedup import open_store

    store = open_store(settings.dedup_url, settings.dedup_prefix)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if (await store.outcomes([message_id])).get(message_id) == want:
                return
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    raise AssertionError(f"{message_id} never became {want}")


def by_type(rt: str) -> Any:
    return next(p for t, p in sample_files() if t == rt)


def _settled(outcome: str, record_type: str = "StepsRecord") -> tuple[float, float]:
    """(etl_messages_total, etl_publish_to_settle_seconds_count) of this process's workers
    for ``outcome`` so far (the ``running_worker`` ones share the registry)."""
    from etl_engine.observability.metrics import REGISTRY

    get = REGISTRY.get_sample_value
    return (get("etl_messages_total", {"outcome": outcome, "record_type": record_type}) or 0.0,
            get("etl_publish_to_settle_seconds_count", {"outcome": outcome}) or 0.0)


async def _not_in_freshness(before: tuple[float, float], outcome: str = "processed") -> None:
    """Once the operator's copy has settled (counted in etl_messages_total, which the same
    observer call does right before the freshness histogram), the histogram is unchanged:
    the copy keeps the upload's old timestamp and must not burn the freshness budget."""
    for _ in range(100):
        if _settled(outcome)[0] > before[0]:
            break
        await asyncio.sleep(0.05)
    assert _settled(outcome) == (before[0] + 1, before[1])


# --- dead letters -------------------------------------------------------------------------
@pytest.mark.integration
async def test_dlq_list_show_replay(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    flaky = upload(settings, "StepsRecord", by_type("StepsRecord"), user_id=USER)
    poison = {**flaky.message(), "bucket": "not-ours", "message_id": "m-poison",
              "user_id": USER}
    traceparent = f"00-{uuid.uuid4().hex}-{'cd' * 8}-01"
    try:
        async with running_worker(settings) as worker:
            real = worker.storage.download
            failing = True

            async def download(bucket: str, key: str, *, max_bytes: int) -> Any:
                if failing:
                    raise TransientError("storage_unavailable", stage="download")
                return await real(bucket, key, max_bytes=max_bytes)

            worker.storage.download = download  # type: ignore[method-assign]
            await publish(settings, {**flaky.message(), "user_id": USER},
                          headers={"traceparent": traceparent})
            await publish(settings, poison)
            await wait_outcomes(settings, [flaky.message_id, "m-poison"], timeout=30)
            assert (await queue_counts(settings, settings.dlq_name))[0] == 2

            # list: both, with reason and attempts, and both still in the queue afterwards
            listed = await acli(test_env, "dlq", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            items = {i["id"]: i for i in orjson.loads(listed.stdout)}
            assert set(items) == {flaky.message_id, "m-poison"}
            assert items[flaky.message_id]["reason"] == "attempts_exhausted:storage_unavailable"
            assert items[flaky.message_id]["attempts"] == settings.max_attempts
            assert items[flaky.message_id]["routing_key"] == "health.processing.StepsRecord.normal"
            assert items["m-poison"]["reason"] == "bucket_not_allowed"
            assert items["m-poison"]["stage"] == "parse"
            table = await acli(test_env, "dlq", "list")
            assert "2 message(s)" in table.stdout and "bucket_not_allowed" in table.stdout
            assert USER not in listed.stdout + table.stdout
            assert (await queue_counts(settings, settings.dlq_name))[0] == 2

            # show: headers and body, the user id hashed unless --raw
            shown = await acli(test_env, "dlq", "show", "m-poison")
            assert shown.returncode == 0, shown.stderr
            doc = orjson.loads(shown.stdout)
            assert doc["headers"]["x-etl-reason"] == "bucket_not_allowed"
            assert doc["body"]["user_id"].startswith("hash:") and USER not in shown.stdout
            assert USER in (await acli(test_env, "dlq", "show", "m-poison", "--reveal")).stdout
            assert (await acli(test_env, "dlq", "show", "nope")).returncode == 1
            assert (await queue_counts(settings, settings.dlq_name))[0] == 2

            # replay the one whose cause is fixed: processed at attempt 1, traceparent kept
            failing = False
            before = _settled("processed")
            replayed = await acli(test_env, "dlq", "replay", flaky.message_id)
            assert replayed.returncode == 0, replayed.stderr
            assert f"replayed {flaky.message_id}" in replayed.stdout
            await wait_outcome(settings, flaky.message_id, "processed")
            await _not_in_freshness(before)  # a replay is not a fresh upload
            assert len(results(settings)) == 1
            remaining = await acli(test_env, "dlq", "list", "--json")
            assert [i["id"] for i in orjson.loads(remaining.stdout)] == ["m-poison"]

            # twice is safe: nothing left to replay, nothing published
            again = await acli(test_env, "dlq", "replay", flaky.message_id)
            assert again.returncode == 1 and "not found" in again.stderr
            assert (await acli(test_env, "dlq", "replay")).returncode == 2  # ids or --all
            everything = await acli(test_env, "dlq", "replay", "--all")
            assert "1 message(s) replayed" in everything.stdout
            for _ in range(100):  # the poison message goes straight back to the DLQ
                if (await queue_counts(settings, settings.dlq_name))[0] == 1:
                    break
                await asyncio.sleep(0.1)
            assert (await queue_counts(settings, settings.dlq_name))[0] == 1
            assert len(results(settings)) == 1
    finally:
        await delete_topology(settings)


@pytest.mark.integration
async def test_dlq_replay_whose_copy_is_not_confirmed_leaves_the_entry_and_stops(
    settings,  # type: ignore[no-untyped-def]
) -> None:
    """A copy the broker does not take (here: no work queue, so it is returned; a memory
    alarm times out the same way, within ETL_PUBLISH_CONFIRM_TIMEOUT_S) is never acked
    away: the entry stays in the DLQ, the replay stops and says so; once the queue is
    back, the same replay moves it."""
    import aio_pika

    from etl_engine.adapters.topology import declare
    from etl_engine.ops import dlq

    u = upload(settings, "StepsRecord", by_type("StepsRecord"), user_id=USER)
    try:
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with conn:
            channel = await conn.channel()
            await declare(channel, settings)
            for mid in ("m-stuck", "m-next"):
                await channel.default_exchange.publish(aio_pika.Message(
                    orjson.dumps(u.message()), message_id=mid,
                    headers={"x-etl-reason": "attempts_exhausted:io_error"}),
                    routing_key=settings.dlq_name)
            await channel.queue_delete(settings.queue)
        done = dict(await dlq.replay(settings, None))
        assert set(done) == {"m-stuck", "m-next"}
        assert all(dlq.was_kept(rk) for rk in done.values())
        assert "unroutable" in done["m-stuck"] and "not attempted" in done["m-next"]
        assert (await queue_counts(settings, settings.dlq_name))[0] == 2
        conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with conn:
            await declare(await conn.channel(), settings)
        again = await dlq.replay(settings, None)
        assert [dlq.was_kept(rk) for _, rk in again] == [False, False]
        assert (await queue_counts(settings, settings.dlq_name))[0] == 0
        assert (await queue_counts(settings, settings.queue))[0] == 2
    finally:
        await delete_topology(settings)


@pytest.mark.integration
async def test_dlq_tool_crashing_mid_read_loses_nothing(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    from helpers import drain_dlq

    try:
        async with running_worker(settings):
            bodies = [{**upload(settings, "StepsRecord", by_type("StepsRecord")).message(),
                       "bucket": "not-ours", "message_id": f"m-{i}"} for i in range(5)]
            await publish(settings, *bodies)
            await wait_outcomes(settings, [b["message_id"] for b in bodies])
        crash = (
            "import asyncio, os\n"
            "from etl_engine.ops import dlq\n"
            "from etl_engine.settings import load_settings\n"
            "async def main():\n"
            "    async with dlq._dlq(load_settings()) as (_, queue, count):\n"
            "        got = await dlq._fetch(queue, count)\n"
            "        assert len(got) == 5, len(got)\n"
            "        os._exit(9)  # dies holding five unacked messages\n"
            "asyncio.run(main())\n"
        )
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", crash], env={**os.environ, **test_env},
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 9, proc.stderr
        for _ in range(50):
            if (await queue_counts(settings, settings.dlq_name))[0] == 5:
                break
            await asyncio.sleep(0.1)
        assert {m.message_id for m in await drain_dlq(settings)} == {f"m-{i}" for i in range(5)}
    finally:
        await delete_topology(settings)


def test_replay_headers_reset_the_attempt_and_keep_the_trace() -> None:
    from etl_engine.ops import dlq

    class Msg:
        message_id = "m1"
        body = b'{"record_type": "StepsRecord", "priority": "high"}'
        headers = {"x-etl-attempt": 3, "x-etl-reason": "attempts_exhausted:io_error",
                   "x-etl-stage": "download", "x-etl-worker": "w1",
                   "x-etl-original-routing-key": "health_data_processing",
                   "x-etl-dead-lettered-at": 1, "x-etl-lease-waits": 4,
                   "x-death": [{"queue": "q"}], "traceparent": "00-" + "a" * 32 + "-" + "b" * 16
                   + "-01", "x-custom": "kept"}

    headers = dlq.replay_headers(Msg())  # type: ignore[arg-type]
    assert headers == {"x-etl-attempt": 1, "x-etl-replayed": 1, "x-custom": "kept",
                       "traceparent": Msg.headers["traceparent"]}
    # the original key was a queue name (came back via a retry tier): built from the body
    assert dlq.replay_routing_key(Msg()) == "health.processing.StepsRecord.high"  # type: ignore[arg-type]


# --- quarantine ---------------------------------------------------------------------------
@pytest.mark.integration
async def test_quarantine_list_show_release(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    from etl_engine.adapters.dedup import open_store

    path = by_type("StepsRecord")
    data = path.read_bytes()
    late_key = upload_key(settings, "StepsRecord", USER)  # this test's own bucket
    late = describe_upload(settings, "StepsRecord", late_key, data, USER)
    garbage = upload_bytes(settings, "StepsRecord", "garbage.avro", os.urandom(2048))
    try:
        async with running_worker(settings):
            # announced before the upload finished: quarantined as object_missing
            await publish(settings, late.message(), garbage.message())
            outcomes = await wait_outcomes(settings, [late.message_id, garbage.message_id])
            assert set(outcomes.values()) == {"quarantined"}
            qkey = worker_quarantine_key(settings, late.message())  # the pipeline's path
            assert qkey is not None

            masked = await acli(test_env, "quarantine", "list", "--json")
            assert masked.returncode == 0, masked.stderr
            assert qkey not in masked.stdout  # key user parts masked unless --reveal
            listed = await acli(test_env, "quarantine", "list", "--json", "--reveal")
            assert listed.returncode == 0, listed.stderr
            items = {i["key"]: i for i in orjson.loads(listed.stdout)}
            assert items[qkey]["reason"] == "object_missing"
            assert items[qkey]["raw_copied"] is False
            gkey = worker_quarantine_key(settings, garbage.message())
            assert items[gkey]["reason"] == "not_avro" and items[gkey]["stage"] == "decode"
            table = await acli(test_env, "quarantine", "list")
            assert "2 quarantined file(s)" in table.stdout and "object_missing" in table.stdout

            shown = await acli(test_env, "quarantine", "show", qkey)
            doc = orjson.loads(shown.stdout)
            assert doc["reason"] == "object_missing"
            assert doc["message"]["idempotency_key"] == late.idempotency_key
            assert doc["message"]["user_id"].startswith("hash:") and USER not in shown.stdout
            assert USER in (await acli(test_env, "quarantine", "show", qkey, "--reveal")).stdout
            relative = qkey[len(settings.quarantine_prefix):]
            assert (await acli(test_env, "quarantine", "show", relative)).returncode == 0

            # the done-marker would make the worker skip it: release clears it first
            store = open_store(settings.dedup_url, settings.dedup_prefix)
            assert (await store.claim(late.idempotency_key, "probe", 1000)).state == "done"
            await store.close()

            storage_for(settings).client.put_object(Bucket=settings.bucket, Key=late_key,
                                                    Body=data)  # the upload lands after all
            before = _settled("processed")
            released = await acli(test_env, "quarantine", "release", qkey)
            assert released.returncode == 0, released.stdout + released.stderr
            assert f"released: {qkey}" in released.stdout  # only once it was processed
            await wait_outcome(settings, late.message_id, "processed")
            await _not_in_freshness(before)  # nor is a release
            assert [k for k in results(settings) if rid(settings, late.idempotency_key) in k]
            left = keys(settings, settings.quarantine_prefix)
            assert qkey not in left and qkey + ".reason.json" not in left
            assert gkey in left  # untouched

            again = await acli(test_env, "quarantine", "release", qkey)
            assert again.returncode == 1 and "not found" in again.stdout
    finally:
        await delete_topology(settings)


# --- status -------------------------------------------------------------------------------
def test_histogram_quantile_from_cumulative_buckets() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {1.0: 1.0, float("inf"): 10.0}) == 1.0


def test_parse_metrics_sums_labels() -> None:
    text = (
        "# TYPE etl_messages_total counter\n"
        'etl_messages_total{outcome="processed",record_type="A"} 3.0\n'
        'etl_messages_total{outcome="processed",record_type="B"} 2.0\n'
        'etl_messages_total{outcome="duplicate",record_type="A"} 1.0\n'
        "# TYPE etl_messages_in_flight gauge\n"
        "etl_messages_in_flight 4.0\n"
        "# TYPE etl_processing_duration_seconds histogram\n"
        'etl_processing_duration_seconds_bucket{le="0.1",record_type="A"} 1.0\n'
        'etl_processing_duration_seconds_bucket{le="0.1",record_type="B"} 2.0\n'
        'etl_processing_duration_seconds_bucket{le="+Inf",record_type="A"} 3.0\n'
        'etl_processing_duration_seconds_bucket{le="+Inf",record_type="B"} 2.0\n'
        'etl_processing_duration_seconds_count{record_type="A"} 3.0\n'
        'etl_processing_duration_seconds_sum{record_type="A"} 0.5\n'
    )
    fig = WorkerFigures(url="x")
    parse_metrics(text, fig)
    assert fig.outcomes == {"processed": 5.0, "duplicate": 1.0}
    assert fig.in_flight == 4.0
    assert fig.buckets == {0.1: 3.0, float("inf"): 5.0}


@pytest.mark.integration
async def test_status_once_shows_queues_and_worker_figures(settings, test_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uploads = [upload(settings, rt, p, run="st") for rt, p in sample_files()[:4]]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_WORKER_ID="status-w1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    try:
        await w.wait_ready()
        await publish(settings, *[u.message() for u in uploads])
        await wait_outcomes(settings, [u.message_id for u in uploads])
        out = await acli(test_env, "status", "--once", "--sidecar",
                         f"http://127.0.0.1:{w.port}", "--sidecar", f"http://127.0.0.1:{dead}")
    finally:
        w.signal(15)
        await w.wait_exit()
        await delete_topology(settings)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = text.splitlines()
    work = next(line for line in lines if line.startswith("work "))
    assert settings.queue in work and work.split()[-1] == "1" and work.split()[-2] == "0"
    assert any(line.startswith("dead letters") and settings.dlq_name in line for line in lines)
    for delay in settings.retry_delays:
        assert any(line.startswith(f"retry {delay}ms") for line in lines), delay
    row = next(line for line in lines if line.startswith("status-w1"))
    cols = row.split()
    assert cols[1] == "ok" and cols[4] == str(len(uploads))  # status, processed
    assert "ms" in row  # p50/p95 from the histogram
    assert f"http://127.0.0.1:{dead}" in text and "unreachable" in text
    assert "deliver rate" in text


# --- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(("variable", "value"), [("ETL_SIDECAR_PORT", "not-a-port"),
                                                 ("ETL_LOG_LEVEL", "LOUD"),
                                                 ("ETL_RETRY_DELAYS_MS", "5,-1")])
def test_worker_refuses_bad_config_naming_the_variable(variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env[variable] = value
    proc = subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", "worker"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr  # EX_CONFIG (2 is a usage error)
    assert "Traceback" not in proc.stderr
    assert variable in proc.stderr
    assert value not in proc.stdout
    check = subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", "config", "check"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 78 and variable in check.stderr


def test_dlq_replay_keeps_an_entry_whose_record_it_cannot_reopen(settings) -> None:  # type: ignore[no-untyped-def]
    """The tool's settings may not parse what the fleet parsed (here: the fleet runs opaque
    keys, the operator's shell the default scheme). Replaying anyway would be answered
    ``duplicate`` by the still-recorded dead-letter and acked: the input lost. Kept."""
    from types import SimpleNamespace

    from etl_engine.domain import outcomes
    from etl_engine.ops.dlq import Reopen, reopen

    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    body = {**u.message(), "idempotency_key": f"opaque-{uuid.uuid4().hex}"}
    storage = storage_for(settings)
    record_key = outcomes.outcome_key(settings.outcome_prefix, body["idempotency_key"])
    storage.put(settings.bucket, record_key, orjson.dumps({
        "kind": "dead_letter", "outcome_id": "o1",
        "binding": outcomes.binding(u.bucket, u.key, u.record_type, None)}),
        content_type="application/json")
    message = SimpleNamespace(body=orjson.dumps(body), message_id=None, correlation_id=None,
                              headers={})
    assert reopen(storage, settings, message) is Reopen.KEPT  # type: ignore[arg-type]
    assert storage.exists(settings.bucket, record_key)
    other = {**body, "key": upload(settings, rt, path).key}  # another upload: a newcomer
    message.body = orjson.dumps(other)
    assert reopen(storage, settings, message) is Reopen.NO_RECORD  # type: ignore[arg-type]
