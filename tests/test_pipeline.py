"""The pipeline without a broker: a Delivery in, an Outcome out (real S3 and Redis)."""

from __future__ import annotations

import orjson

from etl_engine.runtime.pipeline import Delivery, Pipeline, quarantine_key, result_key
from helpers import sample_files, upload, upload_bytes, upload_key


def delivery(body: dict | bytes, attempt: int = 1) -> Delivery:
    return Delivery(body=body if isinstance(body, bytes) else orjson.dumps(body),
                    attempt=attempt)


async def test_processed_then_duplicate(pipeline: Pipeline, settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    first = await pipeline.run(delivery(u.message()))
    assert first.kind == "processed" and first.records > 0
    assert first.result_key and first.result_key.endswith(f"/{u.idempotency_key}.jsonl")
    assert set(first.timings) >= {"download", "decode", "validate", "transform", "write"}
    again = await pipeline.run(delivery(u.message()))
    assert again.kind == "duplicate"


async def test_bad_message_is_dead_lettered_without_touching_storage(pipeline: Pipeline) -> None:
    out = await pipeline.run(delivery(b"[]"))
    assert (out.kind, out.reason, out.stage) == ("dead_letter", "not_an_object", "parse")


async def test_missing_object_is_quarantined_with_a_reason_file(pipeline: Pipeline,
                                                                settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    body = {**u.message(), "key": upload_key(settings, rt, u.user_id)}  # never uploaded
    out = await pipeline.run(delivery(body))
    assert (out.kind, out.reason) == ("quarantined", "object_missing")
    reason = orjson.loads(pipeline.storage.sync.get(
        settings.bucket, quarantine_key(settings, body["key"]) + ".reason.json"))
    assert reason["raw_copied"] is False and reason["reason"] == "object_missing"


async def test_low_quality_file_is_quarantined_with_its_report(pipeline: Pipeline,
                                                               settings) -> None:  # type: ignore[no-untyped-def]
    from etl_devtools.samples import iter_bad_files
    from helpers import SAMPLES

    out_of_range = [(rt, p) for rt, _problem, expect, p in iter_bad_files(SAMPLES)
                    if expect == "validation"]
    rt, path = out_of_range[0]
    u = upload_bytes(settings, rt, path.name, path.read_bytes())
    out = await pipeline.run(delivery(u.message()))
    assert out.kind == "quarantined", out
    reason = orjson.loads(pipeline.storage.sync.get(
        settings.bucket, quarantine_key(settings, u.key) + ".reason.json"))
    assert reason["stage"] == "validate"
    assert reason["quality_report"]["issue_counts"]


async def test_transient_failure_retries_then_dead_letters_on_the_last_attempt(
    pipeline: Pipeline, settings
) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    pipeline.storage.hot = None  # the fault is injected through botocore's hooks
    pipeline.storage.sync.client.meta.events.register(
        "before-call.s3.GetObject", _boom)
    out = await pipeline.run(delivery(u.message(), attempt=1))
    assert (out.kind, out.reason) == ("retry", "io_error")
    last = await pipeline.run(delivery(u.message(), attempt=settings.max_attempts))
    assert (last.kind, last.reason) == ("dead_letter", "attempts_exhausted:io_error")


async def test_busy_lease_is_reported_not_processed(pipeline: Pipeline, settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    u = upload(settings, rt, path)
    assert (await pipeline.dedup.claim(u.idempotency_key, "someone-else", 5000)).state == \
        "acquired"
    out = await pipeline.run(delivery(u.message()))
    assert out.kind == "lease_busy"


def test_result_key_is_deterministic_and_safe(settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import date

    d = date(2026, 11, 1)
    assert result_key(settings, "physical_activity", d, "abc") == \
        "training/physical_activity/2026/11/01/abc.jsonl"
    odd = result_key(settings, "physical_activity", d, "a/../b c")
    assert ".." not in odd and odd == result_key(settings, "physical_activity", d, "a/../b c")


def _boom(**_: object) -> None:
    raise ConnectionResetError("injected")


async def test_failed_quarantine_write_dead_letters_instead_of_looping(
    pipeline: Pipeline, settings
) -> None:  # type: ignore[no-untyped-def]
    from etl_engine.errors import PermanentError

    u = upload_bytes(settings, "StepsRecord", "junk.avro", b"not avro at all")

    async def refuse(*_: object, **__: object) -> None:
        raise PermanentError("storage_rejected", stage="quarantine")

    pipeline.storage.put = refuse  # type: ignore[method-assign]  # fault injection
    out = await pipeline.run(delivery(u.message()))
    assert (out.kind, out.reason, out.stage) == ("dead_letter", "quarantine_failed:not_avro",
                                                 "quarantine")
