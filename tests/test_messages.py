"""Message parsing: the contract with the upload service, and every refusal's reason code."""

from __future__ import annotations

import orjson
import pytest

from etl_engine.domain.messages import derive_message_id, parse_message, upload_idempotency_key
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES
from etl_engine.errors import Disposition, PermanentError, PoisonMessage, TransientError, classify

IKEY = upload_idempotency_key("user-123", "a" * 64)
GOOD = {  # the upload service's message
    "idempotency_key": IKEY,
    "bucket": "health-data",
    "key": "raw/StepsRecord/2026/11/01/user-123_20261101_100000_000000.avro",
    "record_type": "StepsRecord",
    "user_id": "user-123",
    "correlation_id": "corr-1",
    "upload_timestamp_utc": "2026-11-01T10:00:00Z",
    "file_hash": "a" * 64,
    "file_size_bytes": 10,
    "record_count": 3,
}


def parse(body: object, **kw: object):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_message(raw, amqp_message_id=kw.pop("amqp_message_id", None),  # type: ignore[arg-type]
                         allowed_buckets=frozenset({"health-data"}),
                         supported_types=SUPPORTED_RECORD_TYPES, **kw)  # type: ignore[arg-type]


def reason(body: object, **kw: object) -> str:
    with pytest.raises(PoisonMessage) as info:
        parse(body, **kw)
    return info.value.reason


def test_good_message_parses_with_defaults() -> None:
    msg = parse(GOOD)
    assert msg.priority == "normal"
    assert msg.message_id == derive_message_id(IKEY)
    assert msg.content_hash == "a" * 64
    assert len(IKEY) == 16


def test_message_id_falls_back_to_amqp_property_then_derivation() -> None:
    assert parse(GOOD, amqp_message_id="amqp-1").message_id == "amqp-1"
    assert parse({**GOOD, "message_id": "body-1"}, amqp_message_id="amqp-1").message_id == "body-1"


def test_file_hash_alias_and_unknown_fields_and_lowercase_type() -> None:
    body = {k: v for k, v in GOOD.items() if k != "file_hash"}
    body.update(content_hash="A" * 64, record_type="stepsrecord", extra={"nested": True})
    msg = parse(body)
    assert msg.content_hash == "a" * 64
    assert msg.record_type == "StepsRecord"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{nope", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        ({k: v for k, v in GOOD.items() if k != "user_id"}, "missing_field"),
        ({**GOOD, "file_size_bytes": "big"}, "invalid_field"),
        ({**GOOD, "file_hash": "xyz"}, "invalid_field"),
        ({**GOOD, "priority": "urgent"}, "invalid_field"),
        ({**GOOD, "record_type": "BloodPressureRecord"}, "unknown_record_type"),
        ({**GOOD, "bucket": "elsewhere"}, "bucket_not_allowed"),
        ({**GOOD, "key": "raw/../etc/passwd"}, "key_traversal"),
        ({**GOOD, "key": "raw/%2e%2e/x"}, "key_traversal"),
        ({**GOOD, "key": "/raw/x.avro"}, "key_absolute"),
        ({**GOOD, "key": "raw//x.avro"}, "key_empty_segment"),
        ({**GOOD, "key": "raw/a\nb.avro"}, "key_control_characters"),
        ({**GOOD, "key": "raw/" + "a" * 1100}, "key_too_long"),
        ({**GOOD, "key": "training/x.avro"}, "key_outside_raw_prefix"),
    ],
)
def test_refusals_have_precise_reasons(body: object, code: str) -> None:
    assert reason(body) == code


def test_oversized_body_is_refused_before_parsing() -> None:
    assert reason(b"{" + b" " * 300_000 + b"}") == "message_too_large"


def test_refusal_text_never_echoes_values() -> None:
    with pytest.raises(PoisonMessage) as info:
        parse({**GOOD, "file_size_bytes": "secret-value-123"})
    assert "secret-value-123" not in str(info.value)


def test_classify_is_the_one_place_for_outcomes() -> None:
    assert classify(PoisonMessage("invalid_json")) == (Disposition.DEAD_LETTER, "invalid_json")
    assert classify(PermanentError("not_avro")) == (Disposition.QUARANTINE, "not_avro")
    assert classify(TransientError("storage_unavailable"))[0] is Disposition.RETRY
    assert classify(ConnectionResetError())[0] is Disposition.RETRY
    assert classify(MemoryError()) == (Disposition.QUARANTINE, "resource_limit_exceeded")
    assert classify(KeyError("x")) == (Disposition.RETRY, "internal_error:KeyError")


def test_errors_survive_pickling_from_the_decode_process() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(PermanentError("corrupt_avro", "x", stage="decode")))
    assert (err.reason, err.stage, type(err)) == ("corrupt_avro", "decode", PermanentError)
