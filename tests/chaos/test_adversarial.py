"""Adversarial inputs through one real worker (decode in a memory-limited child process):
each ends quarantined or dead-lettered with a precise reason code, the worker keeps
consuming, and its memory stays bounded."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from etl_devtools.samples import iter_bad_files
from etl_engine.adapters.publisher import Publisher
from helpers import SAMPLES, sealed

from .corpus import RssMonitor, file_cases, message_cases
from .harness import Chaos, descendants

pytestmark = pytest.mark.chaos

# samples/bad/: the reason each committed bad file must be quarantined with.
BAD_SAMPLES = {
    "ActiveCaloriesBurnedRecord/no_records": "empty_file",
    "ActiveCaloriesBurnedRecord/out_of_range": "quality_below_threshold",
    "BloodGlucoseRecord/bad_timestamps": "quality_below_threshold",
    "BloodGlucoseRecord/incompatible_schema": "schema_mismatch",
    "BloodGlucoseRecord/out_of_range": "quality_below_threshold",
    "BloodGlucoseRecord/truncated": "truncated_file",
    "BloodGlucoseRecord/wrong_record_type": "schema_mismatch",
    "HeartRateRecord/out_of_range": "quality_below_threshold",
    "HeartRateVariabilityRmssdRecord/random_bytes": "not_avro",
    "SleepSessionRecord/corrupt_header": "corrupt_avro",
    "SleepSessionRecord/overlapping_stages": "no_valid_records",
    "StepsRecord/empty": "empty_file",
    "StepsRecord/out_of_range": "quality_below_threshold",
}
MEMORY_LIMIT_MB = 512


async def test_adversarial_corpus(chaos: Chaos) -> None:
    s = chaos.setup(ETL_DECODE_PROCESSES="1", ETL_DECODE_MEMORY_LIMIT_MB=str(MEMORY_LIMIT_MB),
                    ETL_MAX_OBJECT_BYTES=str(8 << 20), ETL_CONCURRENCY="4")
    good = chaos.upload_samples(max_bytes=8_000)
    template = good[0].message()
    controls = chaos.bodies(good, 3, prefix="control")

    # (body, expect, reason codes, label) for every case
    plan: list[tuple[dict[str, Any] | bytes, str, Any, str, str]] = []
    for case in message_cases():  # bad messages: DLQ with x-etl-reason
        base = {**template, "idempotency_key": f"adv-{case.label}",
                "message_id": str(uuid.uuid4())}
        plan.append((case.body(base), "dead_lettered", case.reason, case.label,
                     base["message_id"]))
    files = [(c.label, c.record_type, c.data, c.expect, c.reason, c.claim)
             for c in file_cases()]
    for rt, _, _, path in iter_bad_files(SAMPLES):
        files.append((f"samples_bad_{rt}_{path.stem}", rt, path.read_bytes(), "quarantined",
                      (BAD_SAMPLES[f"{rt}/{path.stem}"],), lambda m: m))
    for label, rt, data, expect, reasons, claim in files:  # bad files: quarantine
        up = chaos.upload_bytes(rt, f"adv-{label}.avro", data)
        # a claim about the file (size, hash) keeps the upload service's key derivation
        body = {**sealed(claim(up.message())), "message_id": str(uuid.uuid4())}
        plan.append((body, expect, reasons, label, body["message_id"]))
    missing = chaos.upload_bytes("StepsRecord", "adv-missing.avro", b"x")
    chaos.storage.delete(s.bucket, missing.key)
    big = chaos.upload_bytes("StepsRecord", "adv-too-large.avro", b"\0" * (9 << 20))
    lie = chaos.upload_bytes("StepsRecord", "adv-lie.avro", good[0].key.encode())
    lie2 = chaos.upload_bytes("StepsRecord", "adv-lie2.avro", good[0].key.encode())
    for label, body, reason in [
        ("object_missing", missing.message(), "object_missing"),
        ("object_over_limit", big.message(), "object_too_large"),
        ("size_mismatch", {**lie.message(), "file_size_bytes": 7}, "size_mismatch"),
        ("hash_mismatch", sealed({**lie2.message(), "content_hash": "0" * 64}),
         "hash_mismatch"),
    ]:
        body = {**body, "message_id": str(uuid.uuid4())}
        plan.append((body, "quarantined", reason, label, body["message_id"]))

    worker = await chaos.fleet.up("w")
    monitor = RssMonitor(worker.proc.pid, descendants)
    monitor.start()
    chaos.mark_start()
    third = -(-len(plan) // 3)  # rounded up: at most three controls, whatever the count
    async with Publisher(s) as pub:
        for i, (body, expect, reason, label, mid) in enumerate(plan):
            if i % third == 0:  # good messages in between: the worker must keep going
                control = controls[i // third]
                chaos.ledger.add(control)
                await pub.publish(control)
            chaos.ledger.add(body, expect=expect, reason=reason, label=label, message_id=mid,
                             input_id=label)
            await pub.publish(body, routing="health.processing.stepsrecord.normal",
                              message_id=mid)
    await chaos.ledger.drain(180)
    alive = worker.proc.poll() is None
    health = chaos.fleet.health(worker)
    memory = monitor.stop()
    chaos.figures.update(memory)
    chaos.figures.update({
        "cases": len(plan),
        "decode_memory_limit_mib": MEMORY_LIMIT_MB,
        "worker_restarts": len(chaos.fleet.started) - 1,
        "still_consuming": health.get("components", {}).get("consumer") == "up",
    })
    verdict = await chaos.finish(exact=False)
    table = {chaos.ledger.entries[i].label: f"{c}:{verdict.reasons[i]}"
             for i, c in verdict.classes.items()}
    chaos.amend(case_outcomes=table)
    assert alive and chaos.figures["still_consuming"], "the worker survived the corpus"
    assert verdict.mismatches == [], "\n".join(verdict.mismatches)
    assert memory["worker_peak_rss_mib"] < 400
    assert memory["child_peak_rss_mib"] < MEMORY_LIMIT_MB
