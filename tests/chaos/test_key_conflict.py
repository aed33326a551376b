"""Issue 15, hole 8: one idempotency key, two different inputs.

The upload service derives the key from the user and the file's hash. The same user's
same bytes announced as another record type, or from another bucket, give a message with
the first one's key and a different input: the first outcome stands, and each later one
goes to the DLQ as ``idempotency_key_conflict`` — also after the test's dedup keys are
flushed (before the outcome record, the second was acked as a ``duplicate`` with nothing
to show for it, and after a flush it made a second result under another prefix). A
re-upload of the same bytes under another object key is the same input (a ``duplicate``
under the upload-service scheme): it must leave no second artefact.
"""

from __future__ import annotations

import pytest

from etl_engine.adapters.publisher import Publisher, Upload, describe_upload
from helpers import upload_key

from .harness import Chaos
from .services import redis_flush_prefix

pytestmark = pytest.mark.chaos
CONFLICT = "idempotency_key_conflict"


async def test_same_key_other_input_goes_to_the_dlq(chaos: Chaos) -> None:
    bucket = chaos.base_env["ETL_BUCKET"]
    other_bucket = f"{bucket}-other"
    s = chaos.setup(ETL_ALLOWED_BUCKETS=f"{bucket},{other_bucket}")
    chaos.storage.ensure_bucket(other_bucket)
    sample = chaos.upload_samples(max_bytes=8_000)[0]
    data = chaos.storage.get(sample.bucket, sample.key)
    original = chaos.upload_bytes(sample.record_type, "original.avro", data)
    user = original.user_id
    again = _upload(chaos, user, sample.record_type, data)  # same input, another object
    other_type = "HeartRateRecord" if sample.record_type != "HeartRateRecord" else "StepsRecord"
    as_other_type = _upload(chaos, user, other_type, data)
    from_other_bucket = _upload(chaos, user, sample.record_type, data, bucket=other_bucket)
    ikeys = {u.idempotency_key for u in (original, again, as_other_type, from_other_bucket)}
    assert ikeys == {original.idempotency_key}
    await chaos.fleet.up("w")
    chaos.mark_start()
    await chaos.publish([{**original.message(), "message_id": f"{user}-first"}])
    await chaos.ledger.drain(60)
    await chaos.publish([{**again.message(), "message_id": f"{user}-re-upload"}])
    await _publish_input(chaos, {**as_other_type.message(), "message_id": f"{user}-type"},
                         "other-record-type")
    await chaos.ledger.drain(60)
    flushed = redis_flush_prefix(s.dedup_url, s.dedup_prefix)
    chaos.faults += 1
    await _publish_input(chaos, {**from_other_bucket.message(), "message_id": f"{user}-bkt"},
                         "other-bucket-after-flush")
    chaos.figures["dedup_keys_flushed"] = flushed
    verdict = await chaos.finish(outcomes=False)
    assert verdict.counts == {"processed": 1, "dead_lettered": 2}


def _upload(chaos: Chaos, user: str, record_type: str, data: bytes, bucket: str = ""
            ) -> Upload:
    """``data`` uploaded again by ``user`` (the upload service's key layout, a new time)."""
    bucket = bucket or chaos.settings.bucket
    key = upload_key(chaos.settings, record_type, user)
    chaos.storage.client.put_object(Bucket=bucket, Key=key, Body=data)
    return describe_upload(chaos.settings, record_type, key, data, user, bucket=bucket)


async def _publish_input(chaos: Chaos, body: dict[str, object], label: str) -> None:
    """A second input under the first's idempotency key: an input of its own to the
    ledger (the key stays the first's), which must end in the DLQ with the conflict."""
    chaos.ledger.add(body, expect="dead_lettered", reason=CONFLICT, label=label,
                     input_id=label)
    async with Publisher(chaos.settings) as pub:
        await pub.publish(body)
