"""The pipeline without a broker: a Delivery in, an Outcome out.

Its logic runs on the in-memory fakes (``support.fakes``, held to the real adapters by
``tests/contract/``): no network, a clock the tests move, faults injected per call. Uploads
go into the fake with the upload service's keys and messages, as ``helpers`` puts them into
S3. A few tests at the end run the same pipeline on the real S3 server and Redis, so the
wiring of the real adapters stays covered here too (and in test_worker_integration.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date

import orjson
import pytest

from etl_engine.adapters.publisher import Upload
from etl_engine.errors import PermanentError, TransientError
from etl_engine.runtime.compute import ComputePool
from etl_engine.runtime.pipeline import Delivery, Outcome, Pipeline, quarantine_key, result_key
from etl_engine.settings import Settings
from helpers import SAMPLES, sample_files, sealed, storage_for, upload, upload_bytes, upload_key
from support.fakes import ManualClock, MemoryDedup, MemoryObjectStore
from support.uploads import upload_bytes_to, upload_to

BUCKET = "pipeline-test"


def delivery(body: dict | bytes, attempt: int = 1, failed_deliveries: int = 0) -> Delivery:
    return Delivery(body=body if isinstance(body, bytes) else orjson.dumps(body),
                    attempt=attempt, failed_deliveries=failed_deliveries)


@dataclass
class Rig:
    """A pipeline on the fakes, and the fakes, for arranging and inspecting."""

    settings: Settings
    store: MemoryObjectStore
    dedup: MemoryDedup
    clock: ManualClock
    pipeline: Pipeline
    dedup_errors: list[BaseException] = field(default_factory=list)

    def upload(self, index: int = 0) -> Upload:
        rt, path = sample_files()[index]
        return upload_to(self.store, self.settings, rt, path)

    def upload_bytes(self, record_type: str, name: str, data: bytes) -> Upload:
        return upload_bytes_to(self.store, self.settings, record_type, name, data)

    async def run(self, body: dict | bytes, **kw: int) -> Outcome:
        return await self.pipeline.run(delivery(body, **kw))

    def reason_file(self, raw_key: str) -> dict:
        return orjson.loads(self.store.get(
            BUCKET, quarantine_key(self.settings, raw_key) + ".reason.json"))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = Settings(bucket=BUCKET, user_id_hash_key="pipeline-test-hash-key",
                        decode_processes=0, max_attempts=3, lease_ttl_s=3)
    store, clock = MemoryObjectStore(BUCKET), ManualClock()
    dedup = MemoryDedup(clock)
    compute = ComputePool(0, 512, 30)  # in-process, as the conftest ``pipeline`` fixture
    errors: list[BaseException] = []
    pipeline = Pipeline(settings, store, dedup, compute, owner="test-owner",
                        on_dedup_error=errors.append)
    yield Rig(settings, store, dedup, clock, pipeline, errors)
    compute.close()


# --- processed, duplicate -------------------------------------------------------------------
async def test_processed_then_duplicate_by_the_done_marker(rig: Rig) -> None:
    u = rig.upload()
    first = await rig.run(u.message())
    assert first.kind == "processed" and first.records > 0 and first.recorded
    assert first.result_key and first.result_key.endswith(f"/{u.idempotency_key}.jsonl")
    assert set(first.timings) >= {"download", "decode", "validate", "transform", "write"}
    assert (first.bytes_in, first.bytes_out) == (u.size, len(rig.store.get(
        BUCKET, first.result_key)))
    stored = rig.store.head(BUCKET, first.result_key)
    assert stored.content_type == "application/x-ndjson"
    assert stored.metadata["record-type"] == u.record_type
    assert orjson.loads(stored.body)  # one JSON line
    assert rig.dedup.lease_owner(u.idempotency_key) is None  # finish dropped the lease
    assert await rig.dedup.outcomes([u.message_id]) == {u.message_id: "processed"}
    rig.store.calls.clear()
    again = await rig.run(u.message())
    assert again.kind == "duplicate" and again.result_key is None
    assert rig.store.calls == []  # the done marker answered: storage untouched
    assert not rig.pipeline.in_flight


async def test_without_the_done_marker_the_conditional_write_keeps_it_exactly_once(
    rig: Rig,
) -> None:
    u = rig.upload()
    first = await rig.run(u.message())
    await rig.dedup.forget(u.idempotency_key)  # a flushed or lost dedup store
    again = await rig.run(u.message())
    assert (again.kind, again.result_key, again.bytes_out) == ("duplicate",
                                                                first.result_key, 0)
    assert rig.store.keys(BUCKET, rig.settings.training_prefix) == [first.result_key]


async def test_a_dedup_store_that_is_down_costs_nothing_but_dedup(rig: Rig) -> None:
    u = rig.upload()
    down = ConnectionError("dedup down")
    for operation in ("claim", "finish"):
        rig.dedup.fail_next(operation, down)
    out = await rig.run(u.message())
    assert out.kind == "processed" and not out.recorded
    assert rig.dedup_errors == [down, down]
    assert (await rig.run(u.message())).kind == "duplicate"  # the write's own check


async def test_concurrent_deliveries_of_one_upload_write_one_result(rig: Rig) -> None:
    u = rig.upload()
    outs = await asyncio.gather(*(rig.run(u.message()) for _ in range(4)))
    assert sorted(o.kind for o in outs).count("processed") == 1
    assert {o.kind for o in outs} <= {"processed", "lease_busy", "duplicate"}
    assert len(rig.store.keys(BUCKET, rig.settings.training_prefix)) == 1


# --- leases ---------------------------------------------------------------------------------
async def test_a_busy_lease_is_reported_and_left_to_its_owner(rig: Rig) -> None:
    u = rig.upload()
    assert (await rig.dedup.claim(u.idempotency_key, "someone-else", 5000)).state == \
        "acquired"
    out = await rig.run(u.message())
    assert out.kind == "lease_busy"
    assert rig.dedup.lease_owner(u.idempotency_key) == "someone-else"
    assert "download" not in rig.store.calls
    rig.clock.advance(5.1)  # the other worker died: its lease lapses
    assert (await rig.run(u.message())).kind == "processed"


async def test_a_retry_releases_the_lease_for_the_next_delivery(rig: Rig) -> None:
    u = rig.upload()
    rig.store.fail_next("download", TransientError("storage_unavailable", stage="download"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("retry", "storage_unavailable", "download")
    assert rig.dedup.lease_owner(u.idempotency_key) is None
    assert (await rig.run(u.message(), attempt=2)).kind == "processed"


async def test_a_crash_loop_is_dead_lettered(rig: Rig) -> None:
    u = rig.upload()
    out = await rig.run(u.message(), failed_deliveries=rig.settings.delivery_limit + 1)
    assert (out.kind, out.reason) == ("dead_letter", "delivery_limit")
    assert rig.dedup.lease_owner(u.idempotency_key) is None
    assert "download" not in rig.store.calls


# --- retry, dead-letter ---------------------------------------------------------------------
async def test_bad_message_is_dead_lettered_without_touching_storage(rig: Rig) -> None:
    out = await rig.run(b"[]")
    assert (out.kind, out.reason, out.stage) == ("dead_letter", "not_an_object", "parse")
    assert rig.store.calls == [] and rig.dedup.calls == []


async def test_transient_failure_retries_then_dead_letters_on_the_last_attempt(
    rig: Rig,
) -> None:
    u = rig.upload()
    rig.store.fail_next("download", ConnectionResetError("injected"), times=2)
    out = await rig.run(u.message(), attempt=1)
    assert (out.kind, out.reason) == ("retry", "io_error")
    last = await rig.run(u.message(), attempt=rig.settings.max_attempts)
    assert (last.kind, last.reason) == ("dead_letter", "attempts_exhausted:io_error")
    assert rig.store.keys(BUCKET, rig.settings.training_prefix) == []


async def test_a_write_conflict_is_retried(rig: Rig) -> None:
    u = rig.upload()
    rig.store.fail_next("put_if_absent", TransientError("storage_conflict", stage="write"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("retry", "storage_conflict", "write")
    assert (await rig.run(u.message(), attempt=2)).kind == "processed"


# --- quarantine -----------------------------------------------------------------------------
async def test_missing_object_is_quarantined_with_a_reason_file(rig: Rig) -> None:
    u = rig.upload()
    key = upload_key(rig.settings, u.record_type, u.user_id)  # never uploaded
    out = await rig.run({**u.message(), "key": key})
    assert (out.kind, out.reason, out.stage) == ("quarantined", "object_missing", "download")
    reason = rig.reason_file(key)
    assert reason["raw_copied"] is False and reason["reason"] == "object_missing"
    assert reason["source"] == {"bucket": BUCKET, "key": key}
    claim = await rig.dedup.claim(u.idempotency_key, "later", 1000)
    assert (claim.state, claim.outcome) == ("done", "quarantined")


async def test_low_quality_file_is_quarantined_with_its_report(rig: Rig) -> None:
    from etl_devtools.samples import iter_bad_files

    rt, _, _, path = next(b for b in iter_bad_files(SAMPLES) if b[2] == "validation")
    u = rig.upload_bytes(rt, path.name, path.read_bytes())
    out = await rig.run(u.message())
    assert (out.kind, out.stage) == ("quarantined", "validate"), out
    reason = rig.reason_file(u.key)
    assert reason["stage"] == "validate" and reason["raw_copied"] is True
    assert reason["quality_report"]["issue_counts"]
    assert rig.store.get(BUCKET, quarantine_key(rig.settings, u.key)) == path.read_bytes()
    assert rig.store.keys(BUCKET, rig.settings.training_prefix) == []


@pytest.mark.parametrize(("change", "reason"), [
    ({"file_size_bytes": 1}, "size_mismatch"),
    ({"file_hash": "0" * 64}, "hash_mismatch"),
])
async def test_a_file_that_is_not_what_the_message_says_is_quarantined(
    rig: Rig, change: dict, reason: str,
) -> None:
    u = rig.upload()
    out = await rig.run(sealed({**u.message(), **change}))
    assert (out.kind, out.reason, out.stage) == ("quarantined", reason, "verify")


async def test_a_file_over_the_size_cap_is_quarantined_unread(rig: Rig) -> None:
    rig.settings.max_object_bytes = 100  # the pipeline reads its settings per call
    u = rig.upload()
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("quarantined", "object_too_large",
                                                 "download")


async def test_failed_quarantine_write_dead_letters_instead_of_looping(rig: Rig) -> None:
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    rig.store.fail_next("put", PermanentError("storage_rejected", stage="write"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("dead_letter", "quarantine_failed:not_avro",
                                                 "quarantine")


async def test_a_transient_quarantine_failure_retries_the_message(rig: Rig) -> None:
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    rig.store.fail_next("copy", TransientError("storage_unavailable", stage="quarantine"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("retry", "storage_unavailable", "quarantine")
    assert (await rig.run(u.message(), attempt=2)).kind == "quarantined"


def test_result_key_is_deterministic_and_safe() -> None:
    s = Settings(user_id_hash_key="k")
    d = date(2026, 11, 1)
    assert result_key(s, "physical_activity", d, "abc") == \
        "training/physical_activity/2026/11/01/abc.jsonl"
    odd = result_key(s, "physical_activity", d, "a/../b c")
    assert ".." not in odd and odd == result_key(s, "physical_activity", d, "a/../b c")


# --- the same pipeline on the real S3 server and Redis (conftest ``pipeline``) ---------------
async def test_real_services_processed_then_duplicate(pipeline: Pipeline, settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    first = await pipeline.run(delivery(u.message()))
    assert first.kind == "processed" and first.records > 0
    assert first.result_key and storage_for(settings).get(settings.bucket, first.result_key)
    assert (await pipeline.run(delivery(u.message()))).kind == "duplicate"


async def test_real_services_quarantine_with_a_reason_file(pipeline: Pipeline,
                                                           settings) -> None:  # type: ignore[no-untyped-def]
    u = upload_bytes(settings, "StepsRecord", "junk.avro", b"not avro at all")
    out = await pipeline.run(delivery(u.message()))
    assert (out.kind, out.reason) == ("quarantined", "not_avro")
    reason = orjson.loads(storage_for(settings).get(
        settings.bucket, quarantine_key(settings, u.key) + ".reason.json"))
    assert reason["raw_copied"] is True and reason["reason"] == "not_avro"


async def test_real_services_unmapped_client_failure_is_retried(pipeline: Pipeline,
                                                                settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    pipeline.storage.hot = None  # type: ignore[attr-defined]  # the fault goes in via botocore
    pipeline.storage.sync.client.meta.events.register(  # type: ignore[attr-defined]
        "before-call.s3.GetObject", _boom)
    out = await pipeline.run(delivery(u.message(), attempt=1))
    assert (out.kind, out.reason) == ("retry", "io_error")


def _boom(**_: object) -> None:
    raise ConnectionResetError("injected")
