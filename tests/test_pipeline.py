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
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import orjson
import pytest

from etl_engine.adapters.publisher import Upload
from etl_engine.domain import outcomes
from etl_engine.domain.outcomes import ClaimState, Failure, OutcomeKind, decide
from etl_engine.errors import Disposition, PermanentError, TransientError
from etl_engine.runtime.compute import ComputePool
from etl_engine.runtime.pipeline import Delivery, Outcome, Pipeline, outcome_key, result_key
from etl_engine.settings import Settings
from helpers import (
    SAMPLES,
    rid,
    sample_files,
    sealed,
    storage_for,
    upload,
    upload_bytes,
    upload_key,
)
from support.fakes import ManualClock, MemoryDedup, MemoryObjectStore
from support.uploads import upload_bytes_to, upload_to

BUCKET = "pipeline-test"


def delivery(body: dict | bytes, attempt: int = 1, failed_deliveries: int = 0,
             lease_waits: int = 0) -> Delivery:
    return Delivery(body=body if isinstance(body, bytes) else orjson.dumps(body),
                    attempt=attempt, failed_deliveries=failed_deliveries,
                    lease_waits=lease_waits)


def qkey(settings: Settings, u: Upload, key: str | None = None) -> str:
    """Where the worker quarantines the upload ``u`` (announced as ``key``, if given)."""
    return outcomes.quarantine_key(settings.quarantine_prefix, u.record_type,
                                   u.idempotency_key, key or u.key)


class Tripwire(MemoryObjectStore):
    """The fake with faults aimed at keys: ``trip(operation, prefix, exc)`` fails the next
    such call on a key under ``prefix`` (an ``asyncio.CancelledError`` plays a worker that
    died there); ``slow(prefix, seconds)`` delays every call on such keys; ``hold(operation,
    prefix)`` stops the next such call until the returned event is set (a worker frozen
    there); ``writes`` lists the keys written, in order."""

    def __init__(self, *buckets: str) -> None:
        super().__init__(*buckets)
        self.writes: list[str] = []
        self._trips: list[tuple[str, str, BaseException]] = []
        self._slow: dict[str, float] = {}
        self._holds: list[tuple[str, str, asyncio.Event]] = []

    def hold(self, operation: str, prefix: str) -> asyncio.Event:
        event = asyncio.Event()
        self._holds.append((operation, prefix, event))
        return event

    def trip(self, operation: str, prefix: str, exc: BaseException) -> None:
        self._trips.append((operation, prefix, exc))

    def slow(self, prefix: str, seconds: float) -> None:
        self._slow[prefix] = seconds

    async def _aimed(self, operation: str, key: str) -> None:
        for hold in self._holds:
            if hold[0] == operation and key.startswith(hold[1]):
                self._holds.remove(hold)
                await hold[2].wait()
                break
        for prefix, seconds in self._slow.items():
            if key.startswith(prefix):
                await asyncio.sleep(seconds)
        for trip in self._trips:
            if trip[0] == operation and key.startswith(trip[1]):
                self._trips.remove(trip)
                raise trip[2]

    async def download(self, bucket: str, key: str, *, max_bytes: int):  # type: ignore[no-untyped-def]
        await self._aimed("download", key)
        return await super().download(bucket, key, max_bytes=max_bytes)

    async def put_if_absent(self, bucket: str, key: str, body: bytes, **kw) -> bool:  # type: ignore[no-untyped-def]
        await self._aimed("put_if_absent", key)
        created = await super().put_if_absent(bucket, key, body, **kw)
        if created:
            self.writes.append(key)
        return created

    async def put(self, bucket: str, key: str, body: bytes, **kw) -> None:  # type: ignore[no-untyped-def]
        await self._aimed("put", key)
        await super().put(bucket, key, body, **kw)
        self.writes.append(key)

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        await self._aimed("copy", key)
        copied = await super().copy(src_bucket, src_key, bucket, key)
        if copied:
            self.writes.append(key)
        return copied


@dataclass
class Rig:
    """A pipeline on the fakes, and the fakes, for arranging and inspecting."""

    settings: Settings
    store: Tripwire
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

    def reason_file(self, u: Upload, key: str | None = None) -> dict:
        return orjson.loads(self.store.get(
            BUCKET, qkey(self.settings, u, key) + outcomes.REASON_SUFFIX))

    def record(self, u: Upload) -> dict:
        return orjson.loads(self.store.get(BUCKET, outcome_key(self.settings,
                                                               u.idempotency_key)))

    def artefacts(self) -> list[str]:
        """Every result and quarantine object (not the outcome records)."""
        return (self.store.keys(BUCKET, self.settings.training_prefix)
                + self.store.keys(BUCKET, self.settings.quarantine_prefix))

    async def flush_dedup(self, u: Upload) -> None:
        """A flushed or lost dedup store (or a done marker past its TTL)."""
        await self.dedup.forget(u.idempotency_key)

    def judge(self, quality_threshold: float) -> None:
        """From now on the pipeline judges quality differently (as a later release, or a
        worker whose clock differs, might)."""
        self.pipeline.domain = replace(self.pipeline.domain,
                                       quality_threshold=quality_threshold)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = Settings(bucket=BUCKET, user_id_hash_key="pipeline-test-hash-key", lineage_key="lk",
                        decode_processes=0, max_attempts=3, lease_ttl_s=3)
    store, clock = Tripwire(BUCKET), ManualClock()
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
    assert first.result_key
    assert first.result_key.endswith(f"/{rid(rig.settings, u.idempotency_key)}.jsonl")
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
    assert (again.kind, again.recorded_kind, again.result_key) == (
        "duplicate", "processed", first.result_key)
    # the done marker answered: no download of the upload, no work; one read of the
    # outcome record to tell the same input from another under its key
    assert rig.store.calls == ["download"]
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
    reason = rig.reason_file(u, key)
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
    reason = rig.reason_file(u)
    assert reason["stage"] == "validate" and reason["raw_copied"] is True
    assert reason["quality_report"]["issue_counts"]
    assert rig.store.get(BUCKET, qkey(rig.settings, u)) == path.read_bytes()
    assert rig.store.keys(BUCKET, rig.settings.training_prefix) == []
    record = rig.record(u)
    assert (record["kind"], record["quarantine_key"]) == ("quarantined", out.result_key)
    assert {k: v for k, v in reason.items() if k != "raw_copied"} == record["reason_document"]


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


async def test_a_recorded_quarantine_whose_reason_file_fails_is_completed_not_dead_lettered(
    rig: Rig,
) -> None:
    """Once recorded, the quarantine is the input's outcome: failing to write its files is
    retried, even on the last attempt (a DLQ entry would be a second outcome), and the next
    delivery completes it."""
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    last = rig.settings.max_attempts
    rig.store.trip("put_if_absent", rig.settings.quarantine_prefix,
                   PermanentError("storage_rejected", stage="write"))
    out = await rig.run(u.message(), attempt=last)
    assert (out.kind, out.reason, out.stage) == ("retry", "storage_rejected", "write")
    assert rig.record(u)["kind"] == "quarantined"
    assert rig.store.keys(BUCKET, rig.settings.quarantine_prefix) == [qkey(rig.settings, u)]
    again = await rig.run(u.message(), attempt=last + 1)
    assert (again.kind, again.reason) == ("quarantined", "not_avro")
    assert rig.reason_file(u)["reason"] == "not_avro"


async def test_an_owner_frozen_before_its_reason_file_does_not_write_a_second_version(
    rig: Rig,
) -> None:
    """The record's owner stalls before its reason file (SIGSTOP, a slow store) while a
    delivery with no lease between them completes the outcome: the owner, resumed, finds
    the reason file of its own outcome and leaves it: one version, one ``quarantined``."""
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    reason_key = qkey(rig.settings, u) + outcomes.REASON_SUFFIX
    other = Pipeline(rig.settings, rig.store, rig.dedup, rig.pipeline.compute, owner="other")
    rig.dedup.fail_next("claim", ConnectionError("dedup down"), times=2)
    resume = rig.store.hold("copy", rig.settings.quarantine_prefix)
    owner = asyncio.create_task(rig.run(u.message()))
    async with asyncio.timeout(10):  # the owner has created its record and is held
        while not rig.store.keys(BUCKET, rig.settings.outcome_prefix):
            await asyncio.sleep(0)
    completed = await other.run(delivery(u.message(), attempt=2))
    resume.set()
    resumed = await owner
    assert (completed.kind, resumed.kind) == ("quarantined", "duplicate")
    assert rig.store.writes.count(reason_key) == 1


async def test_an_owner_frozen_past_a_release_leaves_the_newer_outcome_alone(rig: Rig) -> None:
    """Owner A is held before its reason file; B completes A's outcome; an operator
    releases it (deletes the record); C decides a new outcome and replaces the file. A,
    resumed, finds a file of another outcome, but its own record is gone: it writes
    nothing (the newer outcome's file stays, named by the stored record)."""
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    record_key = outcome_key(rig.settings, u.idempotency_key)
    others = [Pipeline(rig.settings, rig.store, rig.dedup, rig.pipeline.compute, owner=o)
              for o in ("b", "c")]
    rig.dedup.fail_next("claim", ConnectionError("dedup down"), times=3)
    resume = rig.store.hold("copy", rig.settings.quarantine_prefix)
    owner = asyncio.create_task(rig.run(u.message()))
    async with asyncio.timeout(10):
        while not rig.store.keys(BUCKET, rig.settings.outcome_prefix):
            await asyncio.sleep(0)
    assert (await others[0].run(delivery(u.message(), attempt=2))).kind == "quarantined"
    rig.store.delete_object(BUCKET, record_key)  # the release
    assert (await others[1].run(delivery(u.message(), attempt=3))).kind == "quarantined"
    newer = rig.record(u)["outcome_id"]
    resume.set()
    assert (await owner).kind == "duplicate"
    assert rig.reason_file(u)["outcome_id"] == newer


async def test_a_retry_of_the_new_owner_replaces_the_leftover_it_could_not(rig: Rig) -> None:
    """After a release the new owner fails between its record and the reason file (here:
    reading the leftover): its retry, no longer the record's creator, replaces the
    leftover and reports the outcome, so the new outcome gets its file."""
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    assert (await rig.run(u.message())).kind == "quarantined"
    old_id = rig.reason_file(u)["outcome_id"]
    rig.store.delete_object(BUCKET, outcome_key(rig.settings, u.idempotency_key))
    await rig.flush_dedup(u)
    reason_key = qkey(rig.settings, u) + outcomes.REASON_SUFFIX
    rig.store.trip("download", reason_key,
                   TransientError("storage_unavailable", stage="quarantine"))
    first = await rig.run(u.message())
    assert (first.kind, first.reason) == ("retry", "storage_unavailable")
    again = await rig.run(u.message(), attempt=2)
    assert again.kind == "quarantined"
    assert rig.reason_file(u)["outcome_id"] == rig.record(u)["outcome_id"] != old_id


async def test_a_leftover_reason_file_of_a_released_outcome_is_replaced(rig: Rig) -> None:
    """A release deletes the record and keeps the reason file until the new outcome exists:
    the new owner replaces that leftover, which names another outcome."""
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    first = await rig.run(u.message())
    assert first.kind == "quarantined"
    old_id = rig.reason_file(u)["outcome_id"]
    rig.store.delete_object(BUCKET, outcome_key(rig.settings, u.idempotency_key))
    await rig.flush_dedup(u)
    again = await rig.run(u.message())
    assert again.kind == "quarantined"
    assert rig.reason_file(u)["outcome_id"] == rig.record(u)["outcome_id"] != old_id


async def test_a_transient_quarantine_failure_retries_the_message(rig: Rig) -> None:
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    rig.store.fail_next("copy", TransientError("storage_unavailable", stage="quarantine"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason, out.stage) == ("retry", "storage_unavailable", "quarantine")
    again = await rig.run(u.message(), attempt=2)
    assert again.kind == "quarantined"  # it created the reason file: it reports the outcome
    assert rig.reason_file(u)["raw_copied"] is True
    assert (await rig.run(u.message(), attempt=3)).kind == "duplicate"


async def test_a_raw_object_that_cannot_be_copied_is_quarantined_without_its_copy(
    rig: Rig,
) -> None:
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    rig.store.fail_next("copy", PermanentError("storage_rejected", stage="quarantine"))
    out = await rig.run(u.message())
    assert (out.kind, out.reason) == ("quarantined", "not_avro")
    assert rig.reason_file(u)["raw_copied"] is False


async def test_two_inputs_naming_one_object_are_quarantined_apart(rig: Rig) -> None:
    """The quarantine path is per input (record type, idempotency key, file name), never
    per object: neither reason file overwrites the other."""
    rig.pipeline.settings = rig.settings.model_copy(update={"idempotency_scheme": "opaque"})
    u = rig.upload_bytes("StepsRecord", "junk.avro", b"not avro at all")
    first = await rig.run(u.message())
    second = await rig.run({**u.message(), "idempotency_key": "another-input"})
    assert (first.kind, second.kind) == ("quarantined", "quarantined")
    assert first.result_key != second.result_key
    assert len(rig.store.keys(BUCKET, rig.settings.quarantine_prefix)) == 4
    assert rig.reason_file(u)["idempotency_key"] == u.idempotency_key


# --- one outcome per input: the outcome record (issue 15, holes 3 and 8) -------------------
def _named(name: str) -> tuple[str, Path]:
    return next((rt, p) for rt, p in sample_files() if p.name == name)


def _low_quality() -> tuple[str, Path]:
    """A bad file that fails only the quality threshold (0.55 against 0.7)."""
    from etl_devtools.samples import iter_bad_files

    return next((b[0], b[3]) for b in iter_bad_files(SAMPLES)
                if b[2] == "validation" and b[0] == "StepsRecord"
                and b[3].name == "out_of_range.avro")


# hrv_ring.avro scores 0.85: processed at the default 0.7, quarantined at 0.9
BORDERLINE = "hrv_ring.avro"


async def test_the_outcome_record_comes_first_and_holds_the_result_bytes(rig: Rig) -> None:
    u = rig.upload()
    out = await rig.run(u.message())
    key = outcome_key(rig.settings, u.idempotency_key)
    assert rig.store.writes == [key, out.result_key]  # the commit point, then its effect
    record = rig.record(u)
    assert record["body"].encode() == rig.store.get(BUCKET, out.result_key)
    assert (record["schema"], record["kind"], record["reason"], record["attempt"]) == (
        1, "processed", None, 1)
    assert record["idempotency_key"] == u.idempotency_key
    assert record["binding"] == {"bucket": BUCKET, "key": u.key, "record_type": u.record_type,
                                 "content_hash": u.sha256}
    assert record["result_key"] == out.result_key
    assert {"decided_at", "worker_id", "processor_version", "outcome_id"} <= set(record)


async def test_a_rerun_after_the_done_marker_is_lost_obeys_the_first_outcome(
    rig: Rig,
) -> None:
    """Hole 3: the second run would now quarantine (a stricter judge); the record keeps
    the result the input's only outcome."""
    u = rig.upload_bytes(*_named(BORDERLINE)[:1], BORDERLINE, _named(BORDERLINE)[1].read_bytes())
    first = await rig.run(u.message())
    assert first.kind == "processed"
    rig.judge(0.9)
    probe = rig.upload_bytes(u.record_type, BORDERLINE, _named(BORDERLINE)[1].read_bytes())
    assert (await rig.run(probe.message())).kind == "quarantined"  # the judge did change
    await rig.flush_dedup(u)
    again = await rig.run(u.message())
    assert (again.kind, again.recorded_kind, again.result_key) == (
        "duplicate", "processed", first.result_key)
    others = [k for k in rig.artefacts() if k != first.result_key]
    assert not any(u.idempotency_key in k or rid(rig.settings, u.idempotency_key) in k
                   for k in others)
    assert rig.store.keys(BUCKET, rig.settings.training_prefix) == [first.result_key]


async def test_a_crash_between_the_record_and_the_result_is_completed_byte_identically(
    rig: Rig,
) -> None:
    """The worker dies after the record, before the result: the next delivery writes the
    recorded bytes, not its own (its clock and judge differ: it would quarantine now)."""
    u = rig.upload_bytes(*_named(BORDERLINE)[:1], BORDERLINE, _named(BORDERLINE)[1].read_bytes())
    rig.store.trip("put_if_absent", rig.settings.training_prefix, asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await rig.run(u.message())
    record = rig.record(u)
    assert record["kind"] == "processed" and rig.artefacts() == []
    rig.judge(0.9)
    again = await rig.run(u.message(), failed_deliveries=1)
    assert (again.kind, again.result_key) == ("processed", record["result_key"])
    assert rig.store.get(BUCKET, record["result_key"]) == record["body"].encode()
    assert rig.artefacts() == [record["result_key"]]
    await rig.flush_dedup(u)
    assert (await rig.run(u.message())).kind == "duplicate"


async def test_a_quarantine_then_a_rerun_that_would_now_succeed_stays_quarantined(
    rig: Rig,
) -> None:
    rt, path = _low_quality()
    u = rig.upload_bytes(rt, path.name, path.read_bytes())
    first = await rig.run(u.message())
    assert (first.kind, first.reason) == ("quarantined", "quality_below_threshold")
    reason = rig.reason_file(u)
    rig.judge(0.0)
    probe = rig.upload_bytes(rt, path.name, path.read_bytes())
    assert (await rig.run(probe.message())).kind == "processed"  # it would succeed now
    await rig.flush_dedup(u)
    again = await rig.run(u.message())
    assert (again.kind, again.recorded_kind) == ("duplicate", "quarantined")
    assert not any(rid(rig.settings, u.idempotency_key) in k for k in
                   rig.store.keys(BUCKET, rig.settings.training_prefix))
    assert rig.reason_file(u) == reason  # the first reason stands, not rewritten


@pytest.mark.parametrize("strict_first", [False, True])
async def test_concurrent_runs_that_disagree_give_one_record_and_one_artefact_set(
    rig: Rig, strict_first: bool,
) -> None:
    """Two deliveries of one input at once, no lease between them (the dedup store is
    down), one judging the file good and one bad: one record, one kind of artefact."""
    rt, path = _named(BORDERLINE)
    u = rig.upload_bytes(rt, path.name, path.read_bytes())
    strict = Pipeline(rig.settings, rig.store, rig.dedup, rig.pipeline.compute, owner="strict")
    strict.domain = replace(strict.domain, quality_threshold=0.9)
    rig.dedup.fail_next("claim", ConnectionError("dedup down"), times=2)
    rig.store.slow(rig.settings.outcome_prefix, 0.01)
    runs = [strict.run(delivery(u.message())), rig.run(u.message())]
    outs = await asyncio.gather(*(runs if strict_first else runs[::-1]))
    kinds = sorted(o.kind for o in outs)
    assert kinds in (["duplicate", "processed"], ["duplicate", "quarantined"]), outs
    assert rig.store.keys(BUCKET, rig.settings.outcome_prefix) == [
        outcome_key(rig.settings, u.idempotency_key)]
    decided = rig.record(u)["kind"]
    assert decided in kinds
    if decided == "processed":
        assert rig.store.keys(BUCKET, rig.settings.quarantine_prefix) == []
        assert len(rig.store.keys(BUCKET, rig.settings.training_prefix)) == 1
    else:
        assert rig.store.keys(BUCKET, rig.settings.training_prefix) == []
        assert rig.store.keys(BUCKET, rig.settings.quarantine_prefix) == [
            qkey(rig.settings, u), qkey(rig.settings, u) + outcomes.REASON_SUFFIX]


async def test_a_key_conflict_dead_letters_and_leaves_the_first_outcome_alone(
    rig: Rig,
) -> None:
    """Hole 8: the same idempotency key for another input (here: the same user's same bytes
    announced as another record type) is no silent duplicate, and writes nothing."""
    u = rig.upload()
    first = await rig.run(u.message())
    rt, path = sample_files()[0]
    other_type = "HeartRateRecord" if rt != "HeartRateRecord" else "StepsRecord"
    twin = upload_bytes_to(rig.store, rig.settings, other_type, path.name, path.read_bytes(),
                           user_id=u.user_id)
    assert twin.idempotency_key == u.idempotency_key and twin.record_type != u.record_type
    before = {k: rig.store.get(BUCKET, k) for k in rig.store.keys(BUCKET)}
    marked = await rig.run(twin.message())  # the done marker alive: the record tells apart
    assert (marked.kind, marked.reason) == ("dead_letter", "idempotency_key_conflict")
    await rig.flush_dedup(u)
    rig.judge(1.0)  # whatever it would decide now
    out = await rig.run(twin.message())
    assert (out.kind, out.reason, out.stage) == ("dead_letter", "idempotency_key_conflict",
                                                 "outcome")
    assert out.dlq_marker is None  # not the input's recorded dead-letter: no marker
    assert {k: rig.store.get(BUCKET, k) for k in rig.store.keys(BUCKET)} == before
    assert rig.record(u)["binding"]["record_type"] == u.record_type
    assert (await rig.run(u.message())).kind == "duplicate"  # the first input: unchanged
    assert rig.artefacts() == [first.result_key]


async def test_a_re_upload_of_the_same_bytes_is_a_duplicate_not_a_conflict(rig: Rig) -> None:
    """The upload service's key binds user and content: the same user's same file under a
    new object name (a phone retrying its upload) is the same input."""
    u = rig.upload()
    first = await rig.run(u.message())
    rt, path = sample_files()[0]
    again = upload_bytes_to(rig.store, rig.settings, rt, path.name, path.read_bytes(),
                            user_id=u.user_id)
    assert again.idempotency_key == u.idempotency_key and again.key != u.key
    await rig.flush_dedup(u)
    out = await rig.run(again.message())
    assert out.kind == "duplicate", out
    assert rig.artefacts() == [first.result_key]
    rig.settings.idempotency_scheme = "opaque"  # keys imply nothing: the object key binds
    out = await rig.run(again.message())
    assert (out.kind, out.reason) == ("dead_letter", "idempotency_key_conflict")


async def test_attempts_exhausted_is_recorded_and_the_dlq_marker_stops_a_second_publish(
    rig: Rig,
) -> None:
    u = rig.upload()
    last = rig.settings.max_attempts
    rig.store.fail_next("download", ConnectionResetError("injected"))
    out = await rig.run(u.message(), attempt=last)
    assert (out.kind, out.reason) == ("dead_letter", "attempts_exhausted:io_error")
    record = rig.record(u)
    marker = outcomes.dlq_marker_key(rig.settings.outcome_prefix, u.idempotency_key,
                                     record["outcome_id"])
    assert out.dlq_marker == marker
    assert (record["kind"], record["reason"], record["stage"]) == (
        "dead_letter", "attempts_exhausted:io_error", None)  # a builtin error: no stage
    # a parallel retry chain's copy before the worker confirmed the publish: the DLQ gets
    # the same entry again (at least once), never a result
    again = await rig.run(u.message(), attempt=2)
    assert (again.kind, again.reason) == ("dead_letter", "attempts_exhausted:io_error")
    rig.store.put_object(BUCKET, marker, b"")  # the worker, after the confirmed publish
    third = await rig.run(u.message(), attempt=2)
    assert (third.kind, third.recorded_kind, third.dlq_marker) == ("duplicate", "dead_letter",
                                                                   None)
    assert rig.artefacts() == []


async def test_a_crash_loop_after_the_result_ends_as_a_duplicate_not_in_the_dlq(
    rig: Rig,
) -> None:
    u = rig.upload()
    first = await rig.run(u.message())
    await rig.flush_dedup(u)
    out = await rig.run(u.message(), failed_deliveries=rig.settings.delivery_limit + 1)
    assert (out.kind, out.recorded_kind, out.result_key) == ("duplicate", "processed",
                                                              first.result_key)


async def test_a_timeout_after_the_result_on_the_last_attempt_is_no_second_outcome(
    rig: Rig,
) -> None:
    """Hole 3: the message's time runs out after the result's PUT, on its last attempt.
    The outcome is recorded, so it is retried (not dead-lettered) and then a duplicate."""
    u = rig.upload()
    last = rig.settings.max_attempts
    rig.settings.message_timeout_s = 0.5
    finish = rig.dedup.finish

    async def stuck_finish(*args: object, **kw: object) -> None:
        await asyncio.sleep(5)

    rig.dedup.finish = stuck_finish  # type: ignore[method-assign]
    out = await rig.run(u.message(), attempt=last)
    assert (out.kind, out.reason) == ("retry", "message_timeout")
    assert len(rig.store.keys(BUCKET, rig.settings.training_prefix)) == 1
    rig.dedup.finish = finish  # type: ignore[method-assign]
    again = await rig.run(u.message(), attempt=last + 1)
    assert (again.kind, again.recorded_kind) == ("duplicate", "processed")


async def test_a_timeout_before_any_record_retries_then_dead_letters_with_a_record(
    rig: Rig,
) -> None:
    u = rig.upload()
    last = rig.settings.max_attempts
    rig.settings.message_timeout_s = 0.3
    rig.store.slow(u.key, 2.0)  # the raw object's GET hangs
    out = await rig.run(u.message(), attempt=1)
    assert (out.kind, out.reason, out.stage) == ("retry", "message_timeout", None)
    assert rig.store.keys(BUCKET, rig.settings.outcome_prefix) == []
    out = await rig.run(u.message(), attempt=last)
    assert (out.kind, out.reason) == ("dead_letter", "attempts_exhausted:message_timeout")
    assert rig.record(u)["reason"] == "attempts_exhausted:message_timeout"
    assert rig.dedup.lease_owner(u.idempotency_key) is None  # given back for a replay


async def test_a_lease_waited_out_too_long_is_dead_lettered_once_and_the_holder_obeys(
    rig: Rig,
) -> None:
    u = rig.upload()
    await rig.dedup.claim(u.idempotency_key, "stuck-worker", 60_000)
    waits = rig.pipeline.max_lease_waits  # outlasts any live holder (lease_wait_limit)
    assert waits > outcomes.MAX_LEASE_WAITS  # 2 x (300 s timeout + 60 + lease) at a 1 s tier
    assert (await rig.run(u.message(), lease_waits=waits - 1)).kind == "lease_busy"
    out = await rig.run(u.message(), lease_waits=waits)
    assert (out.kind, out.reason) == ("dead_letter", "lease_wait_exceeded")
    assert rig.dedup.lease_owner(u.idempotency_key) == "stuck-worker"  # not ours to drop
    rig.store.put_object(BUCKET, out.dlq_marker or "", b"")
    rig.clock.advance(61)  # the holder's lease lapses; its delivery comes back
    later = await rig.run(u.message())
    assert (later.kind, later.recorded_kind) == ("duplicate", "dead_letter")
    assert rig.artefacts() == []


async def test_an_unreadable_outcome_record_is_dead_lettered_and_left_alone(rig: Rig) -> None:
    u = rig.upload()
    key = outcome_key(rig.settings, u.idempotency_key)
    rig.store.put_object(BUCKET, key, b"not json")
    out = await rig.run(u.message())
    assert (out.kind, out.reason) == ("dead_letter", "outcome_record_invalid")
    assert rig.store.get(BUCKET, key) == b"not json" and rig.artefacts() == []


async def test_parse_failures_write_no_record_and_retries_none(rig: Rig) -> None:
    assert (await rig.run(b"{not json")).kind == "dead_letter"
    u = rig.upload()
    rig.store.fail_next("download", ConnectionResetError("injected"))
    assert (await rig.run(u.message())).kind == "retry"
    assert rig.store.keys(BUCKET, rig.settings.outcome_prefix) == []


async def test_an_operator_copy_is_marked_on_every_outcome_it_reaches(rig: Rig) -> None:
    """``dlq replay`` and ``quarantine release`` copies (and the retries of one, which
    carry its headers) keep the upload's old timestamp: the freshness histogram leaves
    them out (hooks._freshness), so the pipeline must say which they are."""
    from etl_engine.adapters.topology import RELEASED_HEADER, REPLAYED_HEADER

    def copy(body: dict, headers: dict, attempt: int = 1) -> Delivery:
        return Delivery(body=orjson.dumps(body), headers=headers, attempt=attempt)

    fresh = rig.upload(0)
    assert (await rig.pipeline.run(copy(fresh.message(), {}))).operator_copy is False
    replayed = rig.upload(1)
    out = await rig.pipeline.run(copy(replayed.message(), {REPLAYED_HEADER: 2}))
    assert (out.kind, out.operator_copy) == ("processed", True)
    released = rig.upload(2)
    missing = {**released.message(),
               "key": upload_key(rig.settings, released.record_type, released.user_id)}
    out = await rig.pipeline.run(copy(missing, {RELEASED_HEADER: 1}))
    assert (out.kind, out.operator_copy) == ("quarantined", True)
    rig.store.fail_next("download", ConnectionResetError("injected"))
    retried = rig.upload(3)
    out = await rig.pipeline.run(copy(retried.message(), {REPLAYED_HEADER: 1}, attempt=2))
    assert (out.kind, out.operator_copy) == ("retry", True)
    # only a positive integer counts (as for every counter header)
    for junk in ({REPLAYED_HEADER: "1"}, {RELEASED_HEADER: 0}, {REPLAYED_HEADER: True}):
        assert Delivery(body=b"{}", headers=junk).operator_copy is False


@pytest.mark.parametrize(("failure", "attempt", "waits", "expected"), [
    (Failure(Disposition.RETRY, "io_error", "download"), 1, 0,
     ("retry", "io_error", "download")),
    (Failure(Disposition.RETRY, "io_error", "download"), 3, 0,
     ("dead_letter", "attempts_exhausted:io_error", "download")),
    (Failure(Disposition.RETRY, "io_error", "write", committed=True), 9, 0,
     ("retry", "io_error", "write")),
    (Failure(Disposition.QUARANTINE, "not_avro", "decode"), 3, 0,
     ("quarantined", "not_avro", "decode")),
    (Failure(Disposition.DEAD_LETTER, "delivery_limit", "consume"), 1, 0,
     ("dead_letter", "delivery_limit", "consume")),
    (Failure(Disposition.RETRY, "lease_busy", None, lease_busy=True), 1, 199,
     ("lease_busy", "lease_busy", None)),
    (Failure(Disposition.RETRY, "lease_busy", None, lease_busy=True), 1, 200,
     ("dead_letter", "lease_wait_exceeded", None)),
])
def test_decide_is_the_one_mapping_from_failure_to_outcome(
    failure: Failure, attempt: int, waits: int, expected: tuple[str, str, str | None],
) -> None:
    d = decide(failure, attempt=attempt, max_attempts=3, lease_waits=waits)
    assert (d.kind, d.reason, d.stage) == expected
    assert isinstance(d.kind, OutcomeKind)


def test_a_quarantine_without_a_parsed_message_is_dead_lettered() -> None:
    d = decide(Failure(Disposition.QUARANTINE, "x", "parse"), attempt=1, max_attempts=3,
               parsed=False)
    assert d.kind is OutcomeKind.DEAD_LETTER
    assert {c.value for c in ClaimState} == {"acquired", "busy", "done", "unavailable"}


def test_outcome_keys_are_per_input_and_safe() -> None:
    s = Settings(user_id_hash_key="k", lineage_key="lk")
    assert outcome_key(s, "abc") == "outcomes/abc.json"
    odd = outcome_key(s, "a/../b c")
    assert ".." not in odd and odd.startswith("outcomes/") and odd.endswith(".json")
    assert outcomes.quarantine_key("quarantine/", "StepsRecord", "abc",
                                   "raw/StepsRecord/2026/11/01/u_1.avro") == \
        "quarantine/StepsRecord/abc/u_1.avro"


def test_result_key_is_deterministic_and_safe() -> None:
    s = Settings(user_id_hash_key="k", lineage_key="lk")
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
        settings.bucket, qkey(settings, u) + outcomes.REASON_SUFFIX))
    assert reason["raw_copied"] is True and reason["reason"] == "not_avro"
    record = orjson.loads(storage_for(settings).get(
        settings.bucket, outcome_key(settings, u.idempotency_key)))
    assert record["kind"] == "quarantined"


async def test_real_services_a_rerun_after_a_redis_flush_obeys_the_record(
    pipeline: Pipeline, settings,
) -> None:  # type: ignore[no-untyped-def]
    """With the done marker gone, the outcome record on S3 answers: a re-run that would
    now quarantine (stricter threshold) is a duplicate of the result, nothing else."""
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    first = await pipeline.run(delivery(u.message()))
    assert first.kind == "processed"
    await pipeline.dedup.forget(u.idempotency_key)
    pipeline.domain = replace(pipeline.domain, quality_threshold=1.0)
    again = await pipeline.run(delivery(u.message()))
    assert (again.kind, again.recorded_kind) == ("duplicate", "processed")
    s3 = storage_for(settings)
    assert list(s3.list_keys(settings.bucket, settings.quarantine_prefix)) == []
    assert list(s3.list_keys(settings.bucket, settings.training_prefix)) == [first.result_key]


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
