"""The worker end to end on the real broker, Redis and the S3 server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from etl_engine.domain.outcomes import dlq_marker_key, outcome_key, quarantine_key
from helpers import (
    WorkerProcess,
    drain_dlq,
    keys,
    publish,
    queue_counts,
    results,
    rid,
    running_worker,
    sample_files,
    sealed,
    storage_for,
    upload,
    upload_bytes,
    wait_outcomes,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_topology")]


async def test_happy_path_every_file_gives_one_result(settings) -> None:  # type: ignore[no-untyped-def]
    files = sample_files()
    assert len({rt for rt, _ in files}) == 6, "samples cover all six record types"
    uploads = [upload(settings, rt, p) for rt, p in files]
    async with running_worker(settings):
        await publish(settings, *[u.message() for u in uploads])
        outcomes = await wait_outcomes(settings, [u.message_id for u in uploads])
    assert Counter(outcomes.values()) == {"processed": len(uploads)}
    found = results(settings)
    assert len(found) == len(uploads)
    for u in uploads:
        mine = [k for k in found if k.endswith(f"/{rid(settings, u.idempotency_key)}.jsonl")]
        assert len(mine) == 1, u.key
        record = orjson.loads(storage_for(settings).get(settings.bucket, mine[0]))
        assert record["metadata"]["record_type"] == u.record_type
        assert record["output"] and record["instruction"]


async def test_same_message_twice_gives_one_result_and_a_duplicate(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    first = {**u.message(), "message_id": u.message_id}
    second = {**first, "message_id": "second-" + u.message_id}
    async with running_worker(settings):
        await publish(settings, first)
        await wait_outcomes(settings, [first["message_id"]])
        await publish(settings, second)
        outcomes = await wait_outcomes(settings, [first["message_id"], second["message_id"]])
    assert outcomes == {first["message_id"]: "processed", second["message_id"]: "duplicate"}
    assert len(results(settings)) == 1


async def test_duplicate_is_caught_without_redis_state(settings) -> None:  # type: ignore[no-untyped-def]
    """Correctness does not depend on the dedup store: flush it, the write still refuses."""
    from etl_engine.adapters.dedup import open_store

    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    first = {**u.message(), "message_id": u.message_id}
    second = {**first, "message_id": "again-" + u.message_id}
    async with running_worker(settings):
        await publish(settings, first)
        await wait_outcomes(settings, [first["message_id"]])
        store = open_store(settings.dedup_url, settings.dedup_prefix)
        await store.forget(u.idempotency_key)
        await store.close()
        await publish(settings, second)
        outcomes = await wait_outcomes(settings, [second["message_id"]])
    assert outcomes[second["message_id"]] == "duplicate"
    assert len(results(settings)) == 1


async def test_one_outcome_per_input_across_a_redis_flush_and_a_key_conflict(settings) -> None:  # type: ignore[no-untyped-def]
    """The outcome record on S3 answers when Redis has forgotten: a quarantined input stays
    quarantined, a processed one processed, and the same idempotency key for another
    input goes to the DLQ as idempotency_key_conflict with the first outcome untouched."""
    from etl_engine.adapters.dedup import open_store

    rt, path = sample_files()[0]
    good = upload(settings, rt, path)
    bad = upload_bytes(settings, "StepsRecord", "garbage.avro", os.urandom(2048))
    async with running_worker(settings):
        await publish(settings, good.message(), bad.message())
        assert await wait_outcomes(settings, [good.message_id, bad.message_id]) == {
            good.message_id: "processed", bad.message_id: "quarantined"}
        before = {k: storage_for(settings).get(settings.bucket, k)
                  for k in keys(settings, "")}
        store = open_store(settings.dedup_url, settings.dedup_prefix)
        for u in (good, bad):
            await store.forget(u.idempotency_key)
        # Same user, same bytes, announced as another type: one key, another input. (The
        # same type under a new object name is a re-upload: a duplicate.)
        other = "HeartRateRecord" if rt != "HeartRateRecord" else "StepsRecord"
        twin = upload(settings, other, path, user_id=good.user_id)
        assert twin.idempotency_key == good.idempotency_key and twin.key != good.key
        again = [{**u.message(), "message_id": f"again-{u.message_id}"} for u in (good, bad)]
        conflict = {**twin.message(), "message_id": "conflict-" + twin.message_id}
        await publish(settings, *again, conflict)
        ids = [m["message_id"] for m in (*again, conflict)]
        outcomes = await wait_outcomes(settings, ids)
        await store.close()
    assert outcomes == dict(zip(ids, ["duplicate", "duplicate", "dead_letter"], strict=True))
    dead = await drain_dlq(settings)
    assert [(m.message_id, m.headers["x-etl-reason"]) for m in dead] == [
        (conflict["message_id"], "idempotency_key_conflict")]
    after = {k: storage_for(settings).get(settings.bucket, k) for k in keys(settings, "")}
    assert {k: v for k, v in after.items() if k != twin.key} == before
    assert len(results(settings)) == 1
    records = keys(settings, settings.outcome_prefix)
    assert records == sorted(outcome_key(settings.outcome_prefix, u.idempotency_key)
                             for u in (good, bad))


async def test_corrupt_file_is_quarantined_and_worker_keeps_consuming(settings) -> None:  # type: ignore[no-untyped-def]
    bad = upload_bytes(settings, "StepsRecord", "garbage.avro", os.urandom(4096))
    rt, path = sample_files()[0]
    good = upload(settings, rt, path)
    async with running_worker(settings):
        await publish(settings, bad.message(), good.message())
        outcomes = await wait_outcomes(settings, [bad.message_id, good.message_id])
    assert outcomes == {bad.message_id: "quarantined", good.message_id: "processed"}
    qkeys = keys(settings, settings.quarantine_prefix)
    qkey = quarantine_key(settings.quarantine_prefix, bad.record_type, bad.idempotency_key,
                          bad.key)
    assert "garbage" in qkey and qkey in qkeys
    reason = orjson.loads(storage_for(settings).get(settings.bucket, qkey + ".reason.json"))
    assert reason["reason"] == "not_avro"
    assert reason["stage"] == "decode"
    assert reason["message_id"] == bad.message_id


async def test_integrity_mismatch_is_quarantined(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    # the claimed hash is wrong, the key derived from it (as the upload service would)
    body = {**sealed({**u.message(), "content_hash": "0" * 64}), "message_id": u.message_id}
    async with running_worker(settings):
        await publish(settings, body)
        outcomes = await wait_outcomes(settings, [u.message_id])
    assert outcomes[u.message_id] == "quarantined"
    reason_key = [k for k in keys(settings, settings.quarantine_prefix) if k.endswith(".json")]
    reason = orjson.loads(storage_for(settings).get(settings.bucket, reason_key[0]))
    assert reason["reason"] == "hash_mismatch"
    assert results(settings) == []


async def test_malformed_messages_go_to_the_dlq_with_a_reason(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    missing = u.message()
    del missing["user_id"]
    missing["message_id"] = "m-missing"
    wrong_bucket = {**u.message(), "bucket": "not-ours", "message_id": "m-bucket"}
    traversal = {**u.message(), "key": "raw/../secrets", "message_id": "m-traversal"}
    async with running_worker(settings) as worker:
        await publish(settings, b"{not json", routing="health.processing.stepsrecord",
                      message_id="m-json")
        await publish(settings, missing, wrong_bucket, traversal)
        await wait_outcomes(settings, ["m-json", "m-missing", "m-bucket", "m-traversal"])
        assert worker.state.consuming
    dead = await drain_dlq(settings)
    reasons = {m.message_id: m.headers["x-etl-reason"] for m in dead}
    assert reasons == {"m-json": "invalid_json", "m-missing": "missing_field",
                       "m-bucket": "bucket_not_allowed", "m-traversal": "key_traversal"}
    assert results(settings) == []


async def test_upload_service_routing_and_file_hash_name_are_accepted(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    body = u.message()  # the upload service's: file_hash, no message_id
    assert "file_hash" in body and "message_id" not in body
    body["some_future_field"] = {"x": 1}
    async with running_worker(settings):
        await publish(settings, body, routing=f"health.processing.{rt.lower()}",
                      message_id="amqp-prop-id")
        outcomes = await wait_outcomes(settings, ["amqp-prop-id"])
    assert outcomes == {"amqp-prop-id": "processed"}


async def test_transient_storage_failure_is_retried_then_succeeds(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from faultproxy import FaultProxy

    host_port = settings.s3_endpoint_url.rsplit(":", 1)
    proxy = FaultProxy("127.0.0.1", int(host_port[1]))
    try:
        proxied = settings.model_copy(update={
            "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}", "s3_read_timeout_s": 1.0,
            "s3_connect_timeout_s": 1.0})
        rt, path = sample_files()[0]
        u = upload(settings, rt, path)
        async with running_worker(proxied):  # started first: its storage probe needs S3
            proxy.refuse = True
            await publish(settings, u.message())
            await asyncio.sleep(1.0)
            proxy.refuse = False
            outcomes = await wait_outcomes(settings, [u.message_id], timeout=30)
    finally:
        proxy.close()
    assert outcomes == {u.message_id: "processed"}
    assert len(results(settings)) == 1


async def test_a_stalled_message_times_out_and_waits_for_storage_to_record_its_outcome(
    settings,
) -> None:  # type: ignore[no-untyped-def]
    """ETL_MESSAGE_TIMEOUT_S bounds each attempt of a message whose I/O hangs, and the
    worker carries on. Past its attempts its dead-letter must be recorded on S3 first;
    with S3 hanging that cannot happen, so it is retried, never dead-lettered unrecorded
    (a parallel copy could still produce a result: two outcomes). Once S3 answers, it
    ends in one outcome."""
    from etl_engine.adapters.dedup import open_store
    from etl_engine.adapters.publisher import wait_for_outcomes
    from faultproxy import FaultProxy

    proxy = FaultProxy("127.0.0.1", int(settings.s3_endpoint_url.rsplit(":", 1)[1]))
    try:
        proxied = settings.model_copy(update={
            "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}", "message_timeout_s": 1.0,
            "max_attempts": 2, "s3_read_timeout_s": 30.0})
        rt, path = sample_files()[0]
        stalled = upload(settings, rt, path, run="stall")
        async with running_worker(proxied) as worker:  # first: its storage probe needs S3
            proxy.latency_s = 5.0  # every chunk through the proxy waits: S3 hangs
            await publish(settings, stalled.message())
            await asyncio.sleep(6)  # attempt 1, attempt 2 (the last), attempt 3 ...
            seen, _ = await wait_for_outcomes(settings, [stalled.message_id], timeout_s=0.2)
            assert seen == {} and worker.state.last_error_class == "message_timeout"
            assert worker.state.consuming
            store = open_store(settings.dedup_url, settings.dedup_prefix)
            try:  # each timed-out attempt gave its lease back: a copy can claim it at once
                claim = await store.claim(stalled.idempotency_key, "someone-else", 1)
            finally:
                await store.close()
            assert claim.state == "acquired"
            proxy.latency_s = 0.0
            outcomes = await wait_outcomes(settings, [stalled.message_id], timeout=30)
    finally:
        proxy.close()
    assert outcomes == {stalled.message_id: "processed"}
    assert await drain_dlq(settings) == []
    assert len([k for k in results(settings) if rid(settings, stalled.idempotency_key) in k]) == 1


async def test_a_recorded_dead_letter_is_published_once(settings) -> None:  # type: ignore[no-untyped-def]
    """A dead-letter of a parsed message is recorded before the DLQ publish, and the worker
    marks it published (``.dlq``) before the ack: another delivery of the input is then a
    duplicate, not a second DLQ entry."""
    from etl_engine.adapters.topology import FAILED_DELIVERIES_HEADER

    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    looping = {FAILED_DELIVERIES_HEADER: settings.delivery_limit + 1}  # a crash loop's count
    again = {**u.message(), "message_id": "again-" + u.message_id}
    async with running_worker(settings):
        await publish(settings, u.message(), headers=looping)
        assert await wait_outcomes(settings, [u.message_id]) == {u.message_id: "dead_letter"}
        await publish(settings, again, headers=looping)
        assert await wait_outcomes(settings, [again["message_id"]]) == {
            again["message_id"]: "duplicate"}
    dead = await drain_dlq(settings)
    assert [(m.message_id, m.headers["x-etl-reason"]) for m in dead] == [
        (u.message_id, "delivery_limit")]
    record = orjson.loads(storage_for(settings).get(
        settings.bucket, outcome_key(settings.outcome_prefix, u.idempotency_key)))
    assert (record["kind"], record["reason"], record["stage"]) == (
        "dead_letter", "delivery_limit", "consume")
    assert keys(settings, settings.outcome_prefix) == sorted([
        outcome_key(settings.outcome_prefix, u.idempotency_key),
        dlq_marker_key(settings.outcome_prefix, u.idempotency_key, record["outcome_id"])])
    assert results(settings) == []


async def test_sigkill_after_write_then_restart_leaves_one_result_each(
    settings, test_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    uploads = [upload(settings, rt, p, run=f"k{i}") for i, (rt, p) in
               enumerate(sample_files() * 2)]
    victim = uploads[3].idempotency_key
    first = WorkerProcess(test_env, tmp_path / "w1.log", fault_point=f"after_write@{victim}")
    await first.wait_ready()
    await publish(settings, *[u.message() for u in uploads])
    assert await first.wait_exit(30) == -signal.SIGKILL
    second = WorkerProcess(test_env, tmp_path / "w2.log")
    try:
        await second.wait_ready()
        await wait_outcomes(settings, [u.message_id for u in uploads], timeout=60)
    finally:
        second.signal(signal.SIGTERM)
        await second.wait_exit()
    found = results(settings)
    assert len(found) == len(uploads)
    for u in uploads:
        assert sum(k.endswith(f"/{rid(settings, u.idempotency_key)}.jsonl") for k in found) == 1


async def test_sigterm_drains_in_flight_and_exits_zero(settings, test_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uploads = [upload(settings, rt, p, run=f"t{i}") for i, (rt, p) in
               enumerate(sample_files() * 3)]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_CONCURRENCY="2")
    await w.wait_ready()
    await publish(settings, *[u.message() for u in uploads])
    await asyncio.sleep(0.3)
    w.signal(signal.SIGTERM)
    assert await w.wait_exit(30) == 0
    done_before = {line.get("message_id") for line in w.log_lines()
                   if line.get("event") == "message_settled"}
    w2 = WorkerProcess(test_env, tmp_path / "w2.log")
    try:
        await w2.wait_ready()
        await wait_outcomes(settings, [u.message_id for u in uploads], timeout=60)
    finally:
        w2.signal(signal.SIGTERM)
        assert await w2.wait_exit() == 0
    redone = [line for line in w2.log_lines() if line.get("event") == "message_settled"
              and line.get("message_id") in done_before]
    assert redone == [], "nothing that was done before the drain is delivered again"
    assert len(results(settings)) == len(uploads)


async def test_broker_connection_loss_resumes_consuming(settings) -> None:  # type: ignore[no-untyped-def]
    from faultproxy import FaultProxy

    proxy = FaultProxy("127.0.0.1", 5672)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        proxied = settings.model_copy(update={"amqp_url": type(settings.amqp_url)(url)})
        files = sample_files()
        async with running_worker(proxied) as worker:
            a = upload(settings, *files[0], run="a")
            await publish(settings, a.message())
            await wait_outcomes(settings, [a.message_id])
            proxy.refuse = True
            proxy.reset_all()
            await asyncio.sleep(1.0)
            assert not worker.state.broker_connected
            proxy.refuse = False
            b = upload(settings, *files[1], run="b")
            await publish(settings, b.message())
            outcomes = await wait_outcomes(settings, [b.message_id], timeout=30)
            _, consumers = await queue_counts(settings, settings.queue)
            assert consumers == 1, "reconnected with its consumer, not zero consumers"
    finally:
        proxy.close()
    assert outcomes == {b.message_id: "processed"}


async def test_embedded_sqlite_dedup_for_a_single_host(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = settings.model_copy(update={"dedup_url": f"sqlite:///{tmp_path}/dedup.sqlite3"})
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    again = {**u.message(), "message_id": "again-" + u.message_id}
    async with running_worker(local):
        await publish(settings, u.message())
        await wait_outcomes(local, [u.message_id])
        await publish(settings, again)
        outcomes = await wait_outcomes(local, [u.message_id, again["message_id"]])
    assert outcomes == {u.message_id: "processed", again["message_id"]: "duplicate"}
    assert (tmp_path / "dedup.sqlite3").exists()
    assert len(results(settings)) == 1
