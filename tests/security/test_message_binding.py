"""Message binding and identity: hostile ids never reach S3 headers, and a message is bound
to its user and file (the upload service's idempotency derivation).

Unit tests drive ``parse_message``; the integration tests run the real worker on the
broker, Redis and the S3 server, with a good upload alongside every hostile case: each case
ends dead-lettered with a precise reason, the good input's outcome does not change.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import orjson
import pytest

from etl_engine.adapters.topology import REASON_HEADER, declare
from etl_engine.domain.messages import (
    header_metadata,
    parse_message,
    upload_idempotency_key,
)
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES
from etl_engine.errors import PoisonMessage
from etl_engine.settings import ConfigError, Settings, _mask_url, load_settings
from helpers import (
    drain_dlq,
    publish,
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

HASH = "c" * 64
USER = "user-42"
GOOD: dict[str, Any] = {  # the upload service's message, field for field
    "bucket": "health-data",
    "key": f"raw/StepsRecord/2026/11/01/{USER}_20261101_100000_000001.avro",
    "user_id": USER,
    "record_type": "StepsRecord",
    "upload_timestamp_utc": "2026-11-01T10:00:00Z",
    "correlation_id": "0b6f3c1e-4a7d-4f0e-9c55-0d7f1e2a3b4c",
    "file_size_bytes": 10,
    "file_hash": HASH,
    "record_count": 3,
    "idempotency_key": upload_idempotency_key(USER, HASH),
}
CONTROLS = ["\r\n", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]
STRING_FIELDS = ["message_id", "correlation_id", "idempotency_key", "user_id", "record_type",
                 "upload_timestamp_utc", "bucket", "file_hash", "content_hash", "priority"]


def parse(body: dict[str, Any] | bytes, **kw: Any) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_message(raw, amqp_message_id=kw.pop("amqp_message_id", None),
                         allowed_buckets=frozenset({"health-data"}),
                         supported_types=SUPPORTED_RECORD_TYPES, **kw)


def reason(body: dict[str, Any] | bytes, **kw: Any) -> tuple[str, str]:
    with pytest.raises(PoisonMessage) as info:
        parse(body, **kw)
    return info.value.reason, info.value.detail


# --- parse_message: control characters and lengths ---------------------------------------
def test_the_upload_services_message_parses() -> None:
    msg = parse(GOOD)
    assert (msg.user_id, msg.content_hash, msg.priority) == (USER, HASH, "normal")


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c[-1]):04X}" for c in CONTROLS])
@pytest.mark.parametrize("where", ["middle", "end"])
def test_control_characters_in_any_field_are_refused(field: str, char: str, where: str) -> None:
    value = str(GOOD.get(field) or {"message_id": "m-1", "content_hash": HASH,
                                      "priority": "high"}[field])
    value = value[:3] + char + value[3:] if where == "middle" else value + char
    code, detail = reason({**GOOD, field: value})
    assert (code, detail) == ("invalid_field", field)


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c[-1]):04X}" for c in CONTROLS])
def test_control_characters_in_the_key_are_refused(char: str) -> None:
    assert reason({**GOOD, "key": GOOD["key"][:-5] + char + ".avro"})[0] == \
        "key_control_characters"


@pytest.mark.parametrize(("field", "size"), [
    ("message_id", 129), ("correlation_id", 129), ("idempotency_key", 129), ("user_id", 129),
    ("record_type", 65), ("upload_timestamp_utc", 65), ("bucket", 64),
])
def test_oversized_fields_are_refused(field: str, size: int) -> None:
    assert reason({**GOOD, field: "a" * size}) == ("invalid_field", field)


@pytest.mark.parametrize("value", ["has space", "tab\tbed", "naïve", "a" * 129])
def test_ids_are_visible_ascii_tokens(value: str) -> None:
    for field in ("message_id", "correlation_id"):
        assert reason({**GOOD, field: value})[0] == "invalid_field"


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c[-1]):04X}" for c in CONTROLS])
def test_control_characters_in_amqp_properties_are_refused(char: str) -> None:
    assert reason(GOOD, amqp_message_id=f"m{char}x") == ("invalid_property", "message-id")
    assert reason(GOOD, amqp_correlation_id=f"c{char}x") == \
        ("invalid_property", "correlation-id")
    assert reason(GOOD, headers={"traceparent": f"00{char}x"}) == ("invalid_property", "header")
    assert reason(GOOD, headers={"x-etl-attempt": f"1{char}".encode()}) == \
        ("invalid_property", "header")
    assert reason(GOOD, headers={f"x{char}y": "1"}) == ("invalid_property", "header")


def test_oversized_amqp_properties_are_refused() -> None:
    assert reason(GOOD, amqp_message_id="m" * 129)[0] == "invalid_property"
    assert reason(GOOD, amqp_correlation_id="c" * 129)[0] == "invalid_property"
    assert reason(GOOD, headers={"x": "v" * 2000})[0] == "invalid_property"


def test_clean_amqp_properties_are_accepted_and_the_message_id_falls_back() -> None:
    msg = parse(GOOD, amqp_message_id="amqp-1", amqp_correlation_id="c-1",
                headers={"x-etl-attempt": 2, "x-death": [{"count": 1}], "traceparent": "00-ab"})
    assert msg.message_id == "amqp-1"


def test_s3_metadata_takes_only_checked_tokens() -> None:
    assert header_metadata(message_id="m-1", record_type="StepsRecord") == {
        "message-id": "m-1", "record-type": "StepsRecord"}
    assert header_metadata(message_id="m\r\nx-amz-acl: public-read", record_type=None) == {}


# --- parse_message: binding to user and file ----------------------------------------------
def test_idempotency_key_must_be_the_upload_services_derivation() -> None:
    assert reason({**GOOD, "idempotency_key": "ik-arbitrary"})[0] == "idempotency_key_mismatch"
    other = upload_idempotency_key("someone-else", HASH)
    assert reason({**GOOD, "idempotency_key": other})[0] == "idempotency_key_mismatch"
    assert reason({**GOOD, "file_hash": "d" * 64})[0] == "idempotency_key_mismatch"


def test_the_key_must_name_the_users_file() -> None:
    for key in ("raw/StepsRecord/2026/11/01/user-4_20261101_100000_000001.avro",
                "raw/StepsRecord/2026/11/01/user-421_20261101_100000_000001.avro",
                f"raw/StepsRecord/{USER}_/2026/11/01/x.avro",
                "raw/StepsRecord/2026/11/01/victim_20261101_100000_000001.avro"):
        assert reason({**GOOD, "key": key})[0] == "key_user_mismatch", key


def test_a_message_without_a_hash_is_refused_by_default() -> None:
    body = {k: v for k, v in GOOD.items() if k != "file_hash"}
    assert reason(body)[0] == "content_hash_required"
    assert reason({**body, "file_hash": ""})[0] == "content_hash_required"
    assert reason(body, scheme="opaque")[0] == "content_hash_required"


def test_opaque_scheme_trusts_the_publishers_key() -> None:
    body = {**GOOD, "idempotency_key": "ik-arbitrary", "key": "raw/StepsRecord/x.avro"}
    assert parse(body, scheme="opaque").idempotency_key == "ik-arbitrary"
    hashless = {k: v for k, v in body.items() if k != "file_hash"}
    assert parse(hashless, scheme="opaque", require_hash=False).content_hash is None


# --- settings -----------------------------------------------------------------------------
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ETL_"):
            monkeypatch.delenv(name)


def test_hash_key_is_required_unless_development(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "ETL_USER_ID_HASH_KEY" in str(info.value)
    assert "ETL_LINEAGE_KEY" in str(info.value)
    assert load_settings(env="development").user_id_hash_key.get_secret_value() == ""
    assert load_settings(env="development").lineage_key.get_secret_value() == ""
    with pytest.raises(ConfigError) as info:
        load_settings(user_id_hash_key="k")
    assert "ETL_LINEAGE_KEY" in str(info.value) and "ETL_USER_ID_HASH_KEY" not in str(info.value)
    assert load_settings(user_id_hash_key="k", lineage_key="l").idempotency_scheme == \
        "upload-service"


def test_hashless_messages_need_the_opaque_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("ETL_USER_ID_HASH_KEY", "k")
    monkeypatch.setenv("ETL_LINEAGE_KEY", "lineage-key")
    monkeypatch.setenv("ETL_REQUIRE_CONTENT_HASH", "false")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "ETL_REQUIRE_CONTENT_HASH" in str(info.value)
    monkeypatch.setenv("ETL_IDEMPOTENCY_SCHEME", "opaque")
    assert load_settings().require_content_hash is False


@pytest.mark.parametrize("url", [
    "redis://host/0?password=hunter2", "amqp://h/?password=hunter2&heartbeat=5",
    "rediss://u:hunter2@h/0?token=hunter2", "amqp://h/vhost?auth=hunter2",
    "redis://h/0?ssl=true&PASSWORD=hunter2",
])
def test_config_check_masks_passwords_in_query_strings(url: str) -> None:
    masked = _mask_url(url)
    assert "hunter2" not in masked and "********" in masked


# --- the real worker ------------------------------------------------------------------------
async def _publish_raw(settings: Settings, body: dict[str, Any], **props: Any) -> None:
    """Publish with arbitrary AMQP properties (our Publisher derives them from the body)."""
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = (await declare(channel, settings)).exchange
        await exchange.publish(
            aio_pika.Message(body=orjson.dumps(body), content_type="application/json", **props),
            routing_key=f"health.processing.{str(body.get('record_type', 'x')).lower()}",
            mandatory=True)


async def _dead_letters(settings: Settings, n: int, timeout: float = 30.0
                        ) -> dict[str, str]:
    """Case label (the body's ``case`` field) -> x-etl-reason, once ``n`` are in the DLQ."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < n and time.monotonic() < deadline:
        for msg in await drain_dlq(settings):
            body = orjson.loads(msg.body)
            found[body["case"]] = str((msg.headers or {}).get(REASON_HEADER))
        await asyncio.sleep(0.2)
    assert len(found) == n, f"dead-lettered {len(found)}/{n}: {found}"
    return found


def _metadata_is_clean(settings: Settings) -> None:
    """No object the worker wrote carries a control character in its metadata."""
    store = storage_for(settings)
    for key in store.list_keys(settings.bucket, ""):
        head = store.client.head_object(Bucket=settings.bucket, Key=key)
        for name, value in head.get("Metadata", {}).items():
            assert value.isprintable() and name.isprintable(), (key, name)


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_hostile_ids_are_dead_lettered_and_never_reach_s3(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    good, victim = upload(settings, rt, path), upload(settings, rt, path)
    base = victim.message()
    crlf = "x\r\nx-amz-meta-injected: 1"
    body_cases = {f"body_{f}": {**base, f: crlf} for f in
                  ("message_id", "correlation_id", "user_id", "idempotency_key",
                   "upload_timestamp_utc", "record_type", "file_hash")}
    body_cases["body_message_id_u2028"] = {**base, "message_id": "m\u2028x"}
    body_cases["body_message_id_long"] = {**base, "message_id": "m" * 300}
    body_cases["body_user_id_long"] = {**base, "user_id": "u" * 300}
    prop_cases = {"amqp_message_id": {"message_id": crlf},
                  "amqp_correlation_id": {"correlation_id": crlf},
                  "amqp_header": {"headers": {"traceparent": crlf}},
                  "amqp_message_id_c1": {"message_id": "m\x85x"}}
    async with running_worker(settings):
        for label, body in body_cases.items():  # no AMQP properties: the body's own fields
            await _publish_raw(settings, {**body, "case": label})
        for label, props in prop_cases.items():
            await _publish_raw(settings, {**base, "case": label}, **props)
        await publish(settings, good.message())
        assert await wait_outcomes(settings, [good.message_id]) == {
            good.message_id: "processed"}
        found = await _dead_letters(settings, len(body_cases) + len(prop_cases))
    for label in body_cases:
        assert found[label] == "invalid_field", label
    for label in prop_cases:
        assert found[label] == "invalid_property", label
    good_name = f"/{rid(settings, good.idempotency_key)}.jsonl"
    assert [k for k in results(settings) if k.endswith(good_name)]
    assert len(results(settings)) == 1, "only the good upload wrote a result"
    _metadata_is_clean(settings)


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_a_second_user_cannot_reuse_the_victims_key(settings) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    victim = upload(settings, rt, path, user_id="victim")
    # the same bytes as the victim's file: only the user tells the two apart
    attacker = upload_bytes(settings, rt, "own.avro", path.read_bytes(), "attacker")
    other_rt, other_path = sample_files()[1]
    attacker2 = upload(settings, other_rt, other_path, user_id="attacker")
    cases = {
        # the victim's key on the attacker's own (valid) upload
        "reuse_key": ({**attacker2.message(), "idempotency_key": victim.idempotency_key},
                      "idempotency_key_mismatch"),
        # claims to be the victim (key derived for the victim) but names the attacker's file
        "claim_user": (sealed({**attacker.message(), "user_id": "victim"}),
                       "key_user_mismatch"),
        # the victim's file announced as the attacker's
        "steal_file": (sealed({**victim.message(), "user_id": "attacker"}),
                       "key_user_mismatch"),
        # the victim's file with the victim's key, under an arbitrary key
        "arbitrary_key": ({**victim.message(), "idempotency_key": "ik-victim"},
                          "idempotency_key_mismatch"),
        "no_hash": ({k: v for k, v in attacker2.message().items() if k != "file_hash"},
                    "content_hash_required"),
    }
    async with running_worker(settings):
        for label, (body, _) in cases.items():  # the hostile ones first, own message ids
            await publish(settings, {**body, "case": label}, message_id=f"hostile-{label}")
        found = await _dead_letters(settings, len(cases))
        await publish(settings, victim.message(), attacker2.message())
        outcomes = await wait_outcomes(settings, [victim.message_id, attacker2.message_id])
    assert found == {label: code for label, (_, code) in cases.items()}
    assert outcomes == {victim.message_id: "processed", attacker2.message_id: "processed"}
    names = {k.rsplit("/", 1)[-1] for k in results(settings)}
    assert names == {f"{rid(settings, victim.idempotency_key)}.jsonl",
                     f"{rid(settings, attacker2.idempotency_key)}.jsonl"}


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_opaque_scheme_accepts_arbitrary_and_hashless_keys(  # type: ignore[no-untyped-def]
        settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_IDEMPOTENCY_SCHEME", "opaque")
    monkeypatch.setenv("ETL_REQUIRE_CONTENT_HASH", "false")
    opaque = load_settings()
    rt, path = sample_files()[0]
    u = upload(opaque, rt, path)
    body = {k: v for k, v in u.message().items() if k != "file_hash"}
    body.update(idempotency_key="ik-opaque-1", message_id="m-opaque-1")
    async with running_worker(opaque):
        await publish(opaque, body)
        assert await wait_outcomes(opaque, ["m-opaque-1"]) == {"m-opaque-1": "processed"}
    assert [k for k in results(opaque) if k.endswith(f"/{rid(opaque, 'ik-opaque-1')}.jsonl")]


# --- the whole upload-service name, not a prefix of it ----------------------------------------
def _claim(user: str, key: str, **extra: Any) -> dict[str, Any]:
    return {**GOOD, "user_id": user, "key": key,
            "idempotency_key": upload_idempotency_key(user, HASH), **extra}


def test_a_user_cannot_claim_the_files_of_a_user_whose_id_it_prefixes() -> None:
    """User ``a`` and user ``a_b``: ``a_b_2026...`` starts with ``a_`` but is not a's."""
    theirs = "raw/StepsRecord/2026/11/01/a_b_20261101_100000_000001.avro"
    assert reason(_claim("a", theirs))[0] == "key_user_mismatch"
    assert parse(_claim("a_b", theirs)).user_id == "a_b"


@pytest.mark.parametrize("key", [
    "raw/HeartRateRecord/2026/11/01/user-42_20261101_100000_000001.avro",  # another type
    "raw/StepsRecord/2026/11/01/user-42_anything.avro",  # not the service's name
    "raw/StepsRecord/2026/11/01/user-42_20261101_100000_000001.avro.bak",
])
def test_the_key_must_be_the_upload_services_name_for_this_type(key: str) -> None:
    assert reason(_claim(USER, key))[0] == "key_user_mismatch"


@pytest.mark.parametrize("key", [GOOD["key"] + "\r\n", GOOD["key"] + "/",
                                 "raw/StepsRecord/./2026/x.avro"])
def test_a_key_with_a_trailing_crlf_slash_or_dot_segment_is_refused(key: str) -> None:
    assert reason({**GOOD, "key": key})[0] in ("key_control_characters", "key_empty_segment")


def test_the_hash_as_the_service_sent_it_in_either_case_binds() -> None:
    upper = HASH.upper()  # hex digits as an uppercase writer sends them
    body = {**GOOD, "file_hash": upper,
            "idempotency_key": upload_idempotency_key(USER, upper)}
    assert parse(body).content_hash == HASH


def test_content_hash_and_file_hash_must_agree() -> None:
    assert reason({**GOOD, "content_hash": "d" * 64}) == (
        "invalid_field", "content_hash,file_hash")
