"""Operator tools that delete or replace: quarantine release and monthly compaction.

Issue 15: release deletes nothing until the input's new outcome exists (and never a new
quarantine), refuses a dedup store that is not the workers'; dlq replay keeps the
idempotency key; compaction writes with a precondition outside training/ and is safe to
run twice and concurrently. On the real broker, Redis and S3 server, each test with its
own names.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from etl_engine.adapters.publisher import describe_upload
from etl_engine.adapters.storage import Storage
from etl_engine.ops import conditional
from etl_engine.ops.compact import compact_month, inputs_digest
from etl_engine.ops.quarantine import REASON_SUFFIX, worker_quarantine_key
from etl_engine.settings import ConfigError, load_settings
from helpers import (
    delete_topology,
    publish,
    queue_counts,
    results,
    rid,
    running_worker,
    sample_files,
    storage_for,
    upload_bytes,
    upload_key,
    wait_outcomes,
)
from test_operator_tools import acli, wait_outcome

USER = "patient-REL-4242"


def by_type(rt: str) -> Any:
    return next(p for t, p in sample_files() if t == rt)


def qkey_of(settings, message: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    """Where the worker quarantines this message: the pipeline's own function."""
    key = worker_quarantine_key(settings, message)
    assert key is not None
    return key


def reason_of(settings, qkey: str) -> tuple[dict[str, Any], str] | None:  # type: ignore[no-untyped-def]
    found = conditional.get(storage_for(settings), settings.bucket, qkey + REASON_SUFFIX)
    return None if found is None else (orjson.loads(found[0]), found[1])


async def quarantined(settings, *uploads: Any) -> dict[str, tuple[dict[str, Any], str]]:  # type: ignore[no-untyped-def]
    """Publish, wait until each is quarantined; quarantine key -> (reason file, its ETag)."""
    await publish(settings, *[u.message() for u in uploads])
    outcomes = await wait_outcomes(settings, [u.message_id for u in uploads])
    assert set(outcomes.values()) == {"quarantined"}, outcomes
    out = {}
    for u in uploads:
        qkey = qkey_of(settings, u.message())
        found = reason_of(settings, qkey)
        assert found is not None, qkey
        out[qkey] = found
    return out


def late_upload(settings):  # type: ignore[no-untyped-def]
    """Announced before its bytes land: quarantined as object_missing; the fix is to put
    the bytes (``land``)."""
    data = by_type("StepsRecord").read_bytes()
    key = upload_key(settings, "StepsRecord", USER)
    up = describe_upload(settings, "StepsRecord", key, data, USER)

    def land() -> None:
        storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)

    return up, land


# --- release: the cause is not fixed -----------------------------------------------------
@pytest.mark.integration
async def test_release_with_the_cause_unfixed_keeps_the_new_quarantine(  # type: ignore[no-untyped-def]
        settings, test_env) -> None:
    garbage = upload_bytes(settings, "StepsRecord", "garbage.avro", os.urandom(2048))
    try:
        async with running_worker(settings):
            [(qkey, (before, _))] = (await quarantined(settings, garbage)).items()
            released = await acli(test_env, "quarantine", "release", qkey, "--timeout", "60")
            assert released.returncode == 1, released.stdout + released.stderr
            assert f"requarantined: {qkey}" in released.stdout
            # the worker's new quarantine survived: its reason file and its copy
            after = reason_of(settings, qkey)
            assert after is not None, "the new reason file was deleted"
            assert after[0]["reason"] == "not_avro"
            assert after[0]["quarantined_at"] >= before["quarantined_at"]
            assert storage_for(settings).exists(settings.bucket, qkey)
            await wait_outcome(settings, garbage.message_id, "quarantined")
    finally:
        await delete_topology(settings)


@pytest.mark.integration
async def test_release_over_a_slow_s3_path_deletes_only_what_was_replaced(  # type: ignore[no-untyped-def]
        settings, test_env) -> None:
    """The tool's S3 calls are slow (a proxy adds latency), so the worker's new outcome lands
    well before the tool could delete: the fixed file's quarantine goes, the unfixed one's
    new quarantine stays. (Deleting right after the publish lost the second.)"""
    from faultproxy import FaultProxy

    late, land = late_upload(settings)
    garbage = upload_bytes(settings, "StepsRecord", "still-garbage.avro", os.urandom(4096))
    target = urlsplit(settings.s3_endpoint_url)
    proxy = FaultProxy(target.hostname or "127.0.0.1", target.port or 80)
    proxy.latency_s = 0.15
    slow = {**test_env, "ETL_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    try:
        async with running_worker(settings):
            found = await quarantined(settings, late, garbage)
            late_q, garbage_q = qkey_of(settings, late.message()), qkey_of(
                settings, garbage.message())
            land()  # the late upload's cause is fixed; the garbage stays garbage
            out = await acli(slow, "quarantine", "release", late_q, garbage_q)
            assert out.returncode == 1, out.stdout + out.stderr
            assert f"released: {late_q}" in out.stdout and "processed" in out.stdout
            assert f"requarantined: {garbage_q}" in out.stdout
            assert proxy.connections > 0  # the tool did go through the slow path
            await wait_outcome(settings, late.message_id, "processed")
            assert [k for k in results(settings) if rid(settings, late.idempotency_key) in k]
            storage = storage_for(settings)
            assert not storage.exists(settings.bucket, late_q)
            assert reason_of(settings, late_q) is None
            kept = reason_of(settings, garbage_q)  # the worker's new quarantine
            assert kept is not None and kept[0]["reason"] == found[garbage_q][0]["reason"]
            assert storage.exists(settings.bucket, garbage_q)
    finally:
        proxy.close()
        await delete_topology(settings)


# --- release: timeout keeps everything, a second run finishes ------------------------------
@pytest.mark.integration
async def test_release_without_a_new_outcome_keeps_the_evidence_then_finishes(  # type: ignore[no-untyped-def]
        settings, test_env) -> None:
    late, land = late_upload(settings)
    try:
        async with running_worker(settings):
            [(qkey, (_, etag))] = (await quarantined(settings, late)).items()
        land()
        # no worker: nothing can settle the released message within the wait
        out = await acli(test_env, "quarantine", "release", qkey, "--timeout", "1")
        assert out.returncode == 1 and f"timeout: {qkey}" in out.stdout, out.stdout
        assert reason_of(settings, qkey)[1] == etag  # type: ignore[index]  # all kept
        assert (await queue_counts(settings, settings.queue))[0] == 1  # published once
        async with running_worker(settings):
            await wait_outcome(settings, late.message_id, "processed")
            again = await acli(test_env, "quarantine", "release", qkey, "--timeout", "30")
        # the first release's message was processed meanwhile: only the clean-up is left
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"released: {qkey}" in again.stdout
        assert reason_of(settings, qkey) is None
        assert len([k for k in results(settings) if rid(settings, late.idempotency_key) in k]) == 1
    finally:
        await delete_topology(settings)


# --- release: only against the workers' dedup store ----------------------------------------
@pytest.mark.integration
async def test_release_refuses_a_dedup_store_that_is_not_the_fleets(  # type: ignore[no-untyped-def]
        settings, test_env, tmp_path) -> None:
    late, land = late_upload(settings)
    try:
        async with running_worker(settings):
            [(qkey, (_, etag))] = (await quarantined(settings, late)).items()
        land()
        unset = {k: v for k, v in test_env.items() if k != "ETL_DEDUP_URL"}
        env = {k: v for k, v in os.environ.items() if k != "ETL_DEDUP_URL"}
        out = await asyncio.to_thread(_cli_without, env, unset, "quarantine", "release", qkey)
        assert out.returncode == 78 and "ETL_DEDUP_URL" in out.stderr, out.stderr
        # explicit, but another store (a fresh local file): it knows nothing of the input
        other = f"sqlite:///{tmp_path}/other.sqlite3"
        wrong = await acli(test_env, "quarantine", "release", qkey, "--dedup-url", other)
        assert wrong.returncode == 1 and f"refused: {qkey}" in wrong.stdout, wrong.stdout
        assert "ETL_DEDUP_URL" in wrong.stdout
        # nothing was published, nothing deleted, the workers' done-marker is still there
        assert (await queue_counts(settings, settings.queue))[0] == 0
        assert reason_of(settings, qkey)[1] == etag  # type: ignore[index]
        await wait_outcome(settings, late.message_id, "quarantined", timeout=1)
        # the workers' store: released
        async with running_worker(settings):
            ok = await acli(test_env, "quarantine", "release", qkey, "--timeout", "60")
        assert ok.returncode == 0 and f"released: {qkey}" in ok.stdout, ok.stdout + ok.stderr
    finally:
        await delete_topology(settings)


def _cli_without(base: dict[str, str], env: dict[str, str], *args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", *args],
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


# --- dlq replay keeps the idempotency key ---------------------------------------------------
def test_a_replayed_copy_is_the_same_message() -> None:
    """Body bytes (idempotency key, user, hash: the content binding) and message id kept."""
    from etl_engine.adapters.topology import copy_message
    from etl_engine.ops import dlq

    body = orjson.dumps({"idempotency_key": "0123456789abcdef", "file_hash": "a" * 64,
                         "user_id": "u", "record_type": "StepsRecord"})

    class Msg:
        message_id = "m1"
        correlation_id = "c1"
        content_type = "application/json"
        timestamp = None
        priority = None
        headers = {"x-etl-attempt": 4, "x-etl-reason": "attempts_exhausted:io"}

    Msg.body = body  # type: ignore[attr-defined]
    copy = copy_message(Msg(), dlq.replay_headers(Msg()))  # type: ignore[arg-type]
    assert copy.body == body and copy.message_id == "m1"
    assert orjson.loads(copy.body)["idempotency_key"] == "0123456789abcdef"
    assert copy.headers["x-etl-attempt"] == 1


@pytest.mark.integration
async def test_dlq_replay_result_lands_under_the_same_idempotency_key(  # type: ignore[no-untyped-def]
        settings, test_env) -> None:
    from etl_engine.errors import TransientError
    from helpers import upload

    up = upload(settings, "StepsRecord", by_type("StepsRecord"))
    try:
        async with running_worker(settings) as worker:
            real, failing = worker.storage.download, [True]

            async def download(bucket: str, key: str, *, max_bytes: int) -> Any:
                if failing[0]:
                    raise TransientError("storage_unavailable", stage="download")
                return await real(bucket, key, max_bytes=max_bytes)

            worker.storage.download = download  # type: ignore[method-assign]
            await publish(settings, up.message())
            await wait_outcome(settings, up.message_id, "dead_letter")
            listed = orjson.loads((await acli(test_env, "dlq", "show", up.message_id,
                                              "--reveal")).stdout)
            assert listed["body"]["idempotency_key"] == up.idempotency_key
            failing[0] = False
            out = await acli(test_env, "dlq", "replay", up.message_id)
            assert out.returncode == 0, out.stderr
            await wait_outcome(settings, up.message_id, "processed")  # same message id
        [key] = results(settings)
        assert key.endswith(f"/{rid(settings, up.idempotency_key)}.jsonl")
        record = orjson.loads(storage_for(settings).get(settings.bucket, key))
        assert record["metadata"]["record_id"] == rid(settings, up.idempotency_key)
    finally:
        await delete_topology(settings)


# --- compaction -------------------------------------------------------------------------------
def _put_inputs(settings, storage: Storage, names: list[str], day: int = 1) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        rec = {"instruction": "q", "output": "o",
               "metadata": {"period_start": f"2026-10-{day:02d}T00:00:00Z",
                            "record_id": name}}
        storage.put(settings.bucket, f"{settings.training_prefix}physical_activity/2026/10/"
                    f"{day:02d}/{name}.jsonl", orjson.dumps(rec) + b"\n",
                    content_type="application/x-ndjson")


def _journal(settings, storage: Storage) -> tuple[list[str], dict[str, str]]:  # type: ignore[no-untyped-def]
    key = f"{settings.compacted_prefix}physical_activity/2026/10/health_journal_2026_10.jsonl"
    body = storage.get(settings.bucket, key)
    head = conditional.head(storage, settings.bucket, key)
    assert head is not None
    names = [orjson.loads(line)["metadata"]["record_id"] for line in body.splitlines()]
    return names, head.metadata


def _inputs(settings, storage: Storage) -> list[str]:  # type: ignore[no-untyped-def]
    prefix = f"{settings.training_prefix}physical_activity/2026/10/"
    return sorted(storage.list_keys(settings.bucket, prefix))


class _CountingClient:
    """The boto3 client, counting PutObject calls that succeed."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.writes = 0
        self._lock = threading.Lock()

    def put_object(self, **params: Any) -> Any:
        resp = self._client.put_object(**params)
        with self._lock:
            self.writes += 1
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _RacingStorage(Storage):
    """Both runs list and read before either writes (a barrier at the first read), and
    ``during_run`` runs once, at the first read: a write landing mid-run."""

    def __init__(self, client: Any, barrier: threading.Barrier | None,
                 during_run: Any = None) -> None:
        super().__init__(client)
        self.barrier, self.during_run = barrier, during_run
        self._local = threading.local()

    def get(self, bucket: str, key: str) -> bytes:
        if not getattr(self._local, "started", False):
            self._local.started = True
            if self.during_run is not None:
                self.during_run()
                self.during_run = None
            if self.barrier is not None:
                self.barrier.wait(30)
        return super().get(bucket, key)


@pytest.mark.parametrize("existing", [False, True], ids=["create", "replace"])
def test_concurrent_compactions_write_one_complete_journal(settings, existing: bool) -> None:  # type: ignore[no-untyped-def]
    plain = storage_for(settings)
    _put_inputs(settings, plain, [f"a{i:02d}" for i in range(20)])
    if existing:  # an older journal, replaced with If-Match on its ETag
        compact_month(plain, settings, "2026-10")
        _put_inputs(settings, plain, [f"b{i:02d}" for i in range(10)], day=2)
    client = _CountingClient(plain.client)
    racing = _RacingStorage(client, threading.Barrier(2))
    out: list[Any] = [None, None]

    def run(i: int) -> None:
        out[i] = compact_month(racing, settings, "2026-10")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    states = sorted(str(r[0].state) for r in out)
    assert states == ["unchanged", "written"], states  # one won, the other saw it complete
    assert client.writes == 1  # the loser's write was refused by the precondition
    names, meta = _journal(settings, plain)
    inputs = _inputs(settings, plain)
    assert len(names) == len(set(names)) == len(inputs)  # complete, no record twice
    assert meta["inputs"] == str(len(inputs)) and meta["inputs-sha256"] == inputs_digest(inputs)
    assert meta["last-input"] == inputs[-1]
    # nothing of the journal under training/: a reader of training/ sees each record once
    everything = list(plain.list_keys(settings.bucket, settings.training_prefix))
    assert sorted(everything) == inputs


def test_compaction_adds_writes_that_land_during_and_after_a_run(settings) -> None:  # type: ignore[no-untyped-def]
    plain = storage_for(settings)
    _put_inputs(settings, plain, ["a1", "a2"])
    mid_run = _RacingStorage(plain.client, None,
                             during_run=lambda: _put_inputs(settings, plain, ["late1"], day=3))
    [first] = compact_month(mid_run, settings, "2026-10")
    assert first.state == "written" and first.inputs == 3  # the mid-run write is in
    assert sorted(_journal(settings, plain)[0]) == ["a1", "a2", "late1"]
    old = conditional.head(plain, settings.bucket, first.key)
    _put_inputs(settings, plain, ["after"], day=4)
    [second] = compact_month(plain, settings, "2026-10")
    assert (second.state, second.inputs, second.records) == ("written", 4, 4)
    assert sorted(_journal(settings, plain)[0]) == ["a1", "a2", "after", "late1"]
    # a writer holding the old version cannot overwrite the newer journal
    assert old is not None
    assert conditional.put(plain, settings.bucket, first.key, b"stale\n", replaces=old.etag,
                           content_type="application/x-ndjson", metadata={}) is None
    assert conditional.put(plain, settings.bucket, first.key, b"stale\n", replaces=None,
                           content_type="application/x-ndjson", metadata={}) is None
    assert sorted(_journal(settings, plain)[0]) == ["a1", "a2", "after", "late1"]
    [third] = compact_month(plain, settings, "2026-10")
    assert (third.state, third.inputs) == ("unchanged", 4)


async def test_compact_command_ignores_and_names_an_old_journal_under_training(  # type: ignore[no-untyped-def]
        settings, test_env) -> None:
    plain = storage_for(settings)
    _put_inputs(settings, plain, ["x1"])
    legacy = (f"{settings.training_prefix}physical_activity/2026/10/"
              "health_journal_2026_10.jsonl")
    plain.put(settings.bucket, legacy, b'{"metadata": {"idempotency_key": "x1"}}\n',
              content_type="application/x-ndjson")
    out = await acli(test_env, "compact", "--month", "2026-10")
    assert out.returncode == 0, out.stderr
    assert "written" in out.stdout and settings.compacted_prefix in out.stdout
    assert legacy in out.stderr and "twice" in out.stderr
    assert _journal(settings, plain)[0] == ["x1"]  # the old journal is not an input


@pytest.mark.parametrize("value", ["training/", "training/compacted/", "raw/", "quarantine/x/"])
def test_compacted_prefix_must_stay_out_of_the_other_prefixes(monkeypatch, value: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ETL_ENV", "development")
    monkeypatch.setenv("ETL_COMPACTED_PREFIX", value)
    with pytest.raises(ConfigError, match="ETL_COMPACTED_PREFIX"):
        load_settings()


def test_the_operator_may_write_journals_and_reopen_outcomes_the_uploader_not_read_them() -> None:
    """The stack's MinIO policies follow the journals out of training/ (docs/security.md)."""
    import json
    from pathlib import Path

    from etl_engine.settings import Settings

    d = Settings(env="development")
    root = Path(__file__).resolve().parent.parent / "deployment" / "minio"

    def grants(name: str) -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for st in json.loads((root / f"{name}-policy.json").read_text())["Statement"]:
            for action in st["Action"]:
                out.setdefault((st["Effect"], action), set()).update(st["Resource"])
        return out

    arn = f"arn:aws:s3:::{d.bucket}/"
    operator, uploader = grants("etl-operator"), grants("etl-uploader")
    assert arn + d.compacted_prefix + "*" in operator[("Allow", "s3:PutObject")]
    assert arn + d.training_prefix + "*" not in operator[("Allow", "s3:PutObject")]
    assert arn + d.outcome_prefix + "*" in operator[("Allow", "s3:DeleteObject")]
    assert arn + d.compacted_prefix + "*" in uploader[("Deny", "s3:GetObject")]


# --- the preconditions the tools rely on, on the real S3 server -----------------------------
def test_a_delete_never_removes_a_newer_version(settings) -> None:  # type: ignore[no-untyped-def]
    storage = storage_for(settings)
    key = f"{settings.quarantine_prefix}t/x.avro{REASON_SUFFIX}"
    storage.put(settings.bucket, key, b'{"v": 1}', content_type="application/json")
    released = conditional.head(storage, settings.bucket, key)
    assert released is not None
    storage.put(settings.bucket, key, b'{"v": 2}', content_type="application/json")  # a worker
    assert conditional.delete(storage, settings.bucket, key, released.etag) == "changed"
    assert storage.get(settings.bucket, key) == b'{"v": 2}'
    newer = conditional.head(storage, settings.bucket, key)
    assert newer is not None
    assert conditional.delete(storage, settings.bucket, key, newer.etag) == "deleted"
    assert conditional.delete(storage, settings.bucket, key, newer.etag) == "gone"


async def test_release_leaves_an_input_whose_key_another_upload_owns(settings) -> None:  # type: ignore[no-untyped-def]
    """A key conflict: the idempotency key's outcome record is bound to another upload.
    Releasing this quarantine would let that outcome count for it: refused, all kept."""
    from etl_engine.domain import outcomes
    from etl_engine.ops import quarantine

    storage = storage_for(settings)
    up = upload_bytes(settings, "StepsRecord", "conflict.avro", os.urandom(512))
    message = {**up.message(), "content_hash": up.sha256, "message_id": up.message_id}
    qkey = qkey_of(settings, message)
    reason = orjson.dumps({"reason": "not_avro", "message": message})
    storage.put(settings.bucket, qkey + REASON_SUFFIX, reason, content_type="application/json")
    record = {"kind": "processed", "result_key": "training/x.jsonl", "body": "{}",
              "binding": outcomes.binding(up.bucket, up.key + ".other", "StepsRecord",
                                          up.sha256)}
    rkey = outcomes.outcome_key(settings.outcome_prefix, up.idempotency_key)
    storage.put(settings.bucket, rkey, orjson.dumps(record), content_type="application/json")
    [out] = await quarantine.release(settings, storage, [qkey], timeout_s=1,
                                     check_dedup=False)
    assert out.status == "refused" and "another upload" in out.detail
    assert storage.get(settings.bucket, qkey + REASON_SUFFIX) == reason
    assert orjson.loads(storage.get(settings.bucket, rkey)) == record
