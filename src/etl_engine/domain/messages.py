"""The upload announcement: a typed model and its parser.

Unknown extra fields are accepted (the upload service may add some); anything missing or
malformed raises ``PoisonMessage`` with a reason code, never echoing the values.

A message is bound to its upload (``ETL_IDEMPOTENCY_SCHEME=upload-service``): the
idempotency key must be the upload service's derivation from the user id and the file's
hash, and the key's file name must belong to the user. Without that, any publisher could
reuse a victim's key (their result is skipped as a duplicate) or announce a file as
someone else's.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etl_engine.errors import PoisonMessage

MAX_KEY_BYTES = 1024
MAX_ID_CHARS = 128
IKEY_HEX_DIGITS = 16
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# C0, DEL, C1 and the Unicode line/paragraph separators: none belongs in any field.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Ids can end up in HTTP headers (S3 metadata) and logs: visible ASCII only, bounded.
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
# Longest accepted value of every string field the worker reads (``key``: check_key).
_FIELD_LIMITS: dict[str, int] = {
    "idempotency_key": MAX_ID_CHARS, "message_id": MAX_ID_CHARS,
    "correlation_id": MAX_ID_CHARS, "user_id": MAX_ID_CHARS, "record_type": 64,
    "bucket": 63, "upload_timestamp_utc": 64, "content_hash": 64, "file_hash": 64,
    "priority": 16,
}
# AMQP headers the worker reads (retry bookkeeping, trace context, replay).
_MAX_HEADER_CHARS = 1024
Scheme = Literal["upload-service", "opaque"]
_UPLOAD_STAMP = re.compile(r"\d{8}_\d{6}_\d{6}\.avro")
_NAMESPACE = uuid.UUID("5b1f2a8e-6d0c-4c59-9a55-1f0f5b7c2e11")


# The checks ``_token``, ``_hash`` and ``check_fields`` make, as JSON Schema patterns: the
# published contract (``message_json_schema``) states them; validation stays the code's.
ID_PATTERN = "^[\\x21-\\x7e]{1,128}$"
TEXT_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$"
HASH_PATTERN = "^[0-9a-fA-F]{64}$"


_ID_X: dict[str, Any] = {"pattern": ID_PATTERN}
_TEXT_X: dict[str, Any] = {"pattern": TEXT_PATTERN}
_HASH_X: dict[str, Any] = {"pattern": HASH_PATTERN}


class HealthDataMessage(BaseModel):
    """The upload announcement (schemas/message.schema.json is generated from this)."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    idempotency_key: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, json_schema_extra=_ID_X, description=(
            "The identity of the work. Default scheme (upload-service): the first 16 hex "
            "digits of SHA-256 of '{user_id}:{file_hash}'; with ETL_IDEMPOTENCY_SCHEME=opaque "
            "any 1-128 visible ASCII characters."))
    bucket: str = Field(
        min_length=1, max_length=63, json_schema_extra=_TEXT_X, description=(
            "Bucket of the uploaded object; must be one of the workers' "
            "ETL_ALLOWED_BUCKETS."))
    key: str = Field(
        min_length=1, json_schema_extra={**_TEXT_X, "maxLength": MAX_KEY_BYTES}, description=(
            "Object key under raw/ (ETL_RAW_PREFIX), at most 1024 bytes in UTF-8 (maxLength "
            "counts characters: a key of multi-byte characters can pass it and still be "
            "refused), no '..', no leading '/', no '//': raw/{RecordType}/{YYYY}/{MM}/{DD}/"
            "{user_id}_{YYYYmmdd_HHMMSS_ffffff}.avro (the file name must start with "
            "'{user_id}_')."))
    record_type: str = Field(
        min_length=1, max_length=64, json_schema_extra=_TEXT_X, description=(
            "Health Connect record type of the file (publish these names; the worker also "
            "accepts them in another letter case)."))
    user_id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, json_schema_extra=_TEXT_X,
        description="The uploading user; never logged or traced in clear.")
    correlation_id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, json_schema_extra=_ID_X,
        description="The upload's correlation id, carried into logs and traces.")
    upload_timestamp_utc: datetime | None = Field(
        default=None, json_schema_extra={**_TEXT_X, "maxLength": 64},
        description="When the upload finished, ISO-8601.")
    content_hash: str | None = Field(
        default=None, json_schema_extra=_HASH_X, description=(
            "Hex SHA-256 of the object, verified after download (our name for file_hash; "
            "if both are sent they must agree)."))
    file_size_bytes: int | None = Field(
        default=None, ge=0, description="Size of the object in bytes, checked against it.")
    record_count: int | None = Field(
        default=None, ge=0,
        description="Records in the file, as the uploader counted them (informational).")
    message_id: str | None = Field(
        default=None, max_length=MAX_ID_CHARS, json_schema_extra=_ID_X, description=(
            "Optional id of this announcement; else the AMQP message-id, else a UUID "
            "derived from the idempotency key."))
    priority: Literal["low", "normal", "high"] = Field(
        default="normal",
        description="Optional; also routable as health.processing.{record_type}.{priority}.")
    retry_count: int = Field(default=0, ge=0, description="Optional; informational.")

    @field_validator("content_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _HEX64.match(value):
            raise ValueError("must be a hex SHA-256")
        return value.lower()

    @field_validator("idempotency_key", "correlation_id", "message_id")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError("must be 1-128 visible ASCII characters")
        return value


def check_fields(data: Mapping[str, Any]) -> None:
    """Refuse control characters and oversized values in the raw fields, before pydantic
    strips whitespace (a trailing CRLF would otherwise pass, then split a header)."""
    bad = sorted(
        name for name, limit in _FIELD_LIMITS.items()
        if isinstance(value := data.get(name), str)
        and (len(value) > limit or _CONTROL.search(value))
    )
    if bad:
        raise PoisonMessage("invalid_field", ",".join(bad), stage="parse")


def check_properties(
    message_id: str | None, correlation_id: str | None, headers: Mapping[str, Any] | None,
) -> None:
    """The AMQP properties the worker uses (logs, fallback message id, republished copies)
    obey the body's rules: visible ASCII ids, no control characters in headers."""
    for name, value in (("message-id", message_id), ("correlation-id", correlation_id)):
        if value is not None and not _ID.match(value):
            raise PoisonMessage("invalid_property", name, stage="parse")
    for name, value in (headers or {}).items():
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        bad_value = isinstance(text, str) and bool(
            _CONTROL.search(text) or len(text) > _MAX_HEADER_CHARS)
        if bad_value or _CONTROL.search(str(name)) or len(str(name)) > 255:
            raise PoisonMessage("invalid_property", "header", stage="parse")


def upload_idempotency_key(user_id: str, file_hash: str) -> str:
    """The upload service's key: first 16 hex digits of SHA-256 of ``user_id:file_hash``."""
    digest = hashlib.sha256(f"{user_id}:{file_hash}".encode()).hexdigest()
    return digest[:IKEY_HEX_DIGITS]


def owns_key(user_id: str, key: str, record_type: str, raw_prefix: str) -> bool:
    """True when ``key`` is the upload service's name for this user's upload of this type:
    ``{raw_prefix}{record_type}/.../{user_id}_{YYYYmmdd_HHMMSS_ffffff}.avro``. The whole
    name is matched: a prefix test would let user ``a`` claim user ``a_b``'s files."""
    folder, _, name = key.rpartition("/")
    stamp = name[len(user_id) + 1:]
    return (folder.startswith(f"{raw_prefix}{record_type}/") and name.startswith(f"{user_id}_")
            and _UPLOAD_STAMP.fullmatch(stamp) is not None)


def check_binding(msg: HealthDataMessage, *, record_type: str, raw_prefix: str,
                  require_hash: bool, scheme: Scheme) -> None:
    """Bind the message to its upload: hash present, key derived from (user, hash), and
    the object named after the user. ``opaque`` trusts the publisher's key instead."""
    if msg.content_hash is None and (require_hash or scheme != "opaque"):
        raise PoisonMessage("content_hash_required", stage="parse")
    if scheme == "opaque":
        return
    assert msg.content_hash is not None
    expected = {upload_idempotency_key(msg.user_id, h)  # the hex as sent, either case
                for h in (msg.content_hash, msg.content_hash.upper())}
    if msg.idempotency_key not in expected:
        raise PoisonMessage("idempotency_key_mismatch", stage="parse")
    if not owns_key(msg.user_id, msg.key, record_type, raw_prefix):
        raise PoisonMessage("key_user_mismatch", stage="parse")


def check_key(key: str, raw_prefix: str) -> None:
    """Refuse keys that could escape ``raw/`` or confuse S3 or a filesystem mirror."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise PoisonMessage("key_too_long", stage="parse")
    if key.startswith("/"):
        raise PoisonMessage("key_absolute", stage="parse")
    if _CONTROL.search(key):
        raise PoisonMessage("key_control_characters", stage="parse")
    lowered = key.lower()
    if ".." in key or "%2e" in lowered or "%2f" in lowered or "\\" in key:
        raise PoisonMessage("key_traversal", stage="parse")
    if "//" in key or key.endswith("/") or "/./" in key or key.endswith("/."):
        raise PoisonMessage("key_empty_segment", stage="parse")
    if not key.startswith(raw_prefix):
        raise PoisonMessage("key_outside_raw_prefix", stage="parse")


def _raw_checks(data: dict[str, Any], raw_prefix: str) -> None:
    """Checks on the values as sent, before pydantic strips whitespace (a trailing CRLF
    would pass otherwise); ``file_hash`` (the upload service's name) fills ``content_hash``,
    and a message carrying both must not disagree."""
    check_fields(data)
    if isinstance(data.get("key"), str):
        check_key(data["key"], raw_prefix)
    hashes = {str(data[k]).lower() for k in ("content_hash", "file_hash") if k in data}
    if len(hashes) > 1:
        raise PoisonMessage("invalid_field", "content_hash,file_hash", stage="parse")
    if "content_hash" not in data and "file_hash" in data:
        data["content_hash"] = data["file_hash"]


def parse_message(
    body: bytes,
    *,
    amqp_message_id: str | None,
    allowed_buckets: frozenset[str],
    supported_types: tuple[str, ...],
    raw_prefix: str = "raw/",
    max_bytes: int = 256 * 1024,
    amqp_correlation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    require_hash: bool = True,
    scheme: Scheme = "upload-service",
) -> HealthDataMessage:
    """Bytes from the broker to a checked message, or ``PoisonMessage``."""
    if len(body) > max_bytes:
        raise PoisonMessage("message_too_large", stage="parse")
    check_properties(amqp_message_id, amqp_correlation_id, headers)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PoisonMessage("invalid_json", stage="parse") from None
    if not isinstance(data, dict):
        raise PoisonMessage("not_an_object", stage="parse")
    _raw_checks(data, raw_prefix)
    try:
        msg = HealthDataMessage.model_validate(data)
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        kinds = {e["type"] for e in exc.errors()}
        code = "missing_field" if kinds <= {"missing"} else "invalid_field"
        raise PoisonMessage(code, ",".join(fields), stage="parse") from None
    canonical = _canonical_type(msg.record_type, supported_types)
    if canonical is None:
        raise PoisonMessage("unknown_record_type", stage="parse")
    if msg.bucket not in allowed_buckets:
        raise PoisonMessage("bucket_not_allowed", stage="parse")
    check_key(msg.key, raw_prefix)
    check_binding(msg, record_type=canonical, raw_prefix=raw_prefix,
                  require_hash=require_hash, scheme=scheme)
    message_id = msg.message_id or amqp_message_id or derive_message_id(msg.idempotency_key)
    return msg.model_copy(update={"record_type": canonical, "message_id": message_id})


def header_metadata(**values: str | None) -> dict[str, str]:
    """S3 user metadata from checked ids only: anything not a visible-ASCII token is left
    out, so no caller can smuggle a header line into a request."""
    return {name.replace("_", "-"): v for name, v in values.items()
            if v is not None and _ID.match(v)}


def derive_message_id(idempotency_key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, idempotency_key))


def _canonical_type(value: str, supported: tuple[str, ...]) -> str | None:
    lowered = value.lower()
    for name in supported:
        if name.lower() == lowered:
            return name
    return None


def routing_key(record_type: str, priority: str = "normal") -> str:
    """Our replay/priority form; the upload service uses ``upload_routing_key``."""
    return f"health.processing.{record_type}.{priority}"


def upload_routing_key(record_type: str) -> str:
    """The upload service's routing key: ``health.processing.{record_type lower-cased}``."""
    return f"health.processing.{record_type.lower()}"


def message_json_schema(record_types: Sequence[str]) -> dict[str, Any]:
    """The announcement's JSON Schema (draft 2020-12), generated from ``HealthDataMessage``:
    what a publisher must send under the default settings. ``file_hash`` is the upload
    service's name of ``content_hash``; one of them is required (ETL_REQUIRE_CONTENT_HASH);
    unknown fields are allowed (and ignored)."""
    schema = HealthDataMessage.model_json_schema(mode="validation")
    props: dict[str, Any] = schema["properties"]
    for prop in props.values():
        prop.pop("title", None)
        prop.pop("default", None)
    props["record_type"]["enum"] = list(record_types)
    # Optional, but never null when sent: the worker takes a null hash as "no hash"
    # (content_hash_required) and a null beside a hash as a disagreement (invalid_field).
    props["content_hash"] = {"type": "string", "pattern": HASH_PATTERN,
                             "description": props["content_hash"]["description"]}
    props["file_hash"] = {**props["content_hash"], "description": (
        "Hex SHA-256 of the object, verified after download (the upload service's name; "
        "required unless content_hash is sent; if both are sent they must agree).")}
    ordered = {name: props[name] for name in (
        "idempotency_key", "bucket", "key", "record_type", "user_id", "correlation_id",
        "upload_timestamp_utc", "file_hash", "content_hash", "file_size_bytes",
        "record_count", "message_id", "priority", "retry_count")}
    assert ordered.keys() == props.keys(), sorted(set(props) ^ set(ordered))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:etl-narrative-engine:schemas:message",
        "title": "HealthDataMessage",
        "description": (
            "An upload announcement on the health_data_exchange topic exchange, routing key "
            "health.processing.{record_type lower case} (docs/asyncapi.yaml). Generated from "
            "src/etl_engine/domain/messages.py by `python -m etl_devtools.contract`; do not "
            "edit by hand."),
        "type": "object",
        "properties": ordered,
        "required": schema["required"],
        "anyOf": [{"required": ["file_hash"]}, {"required": ["content_hash"]}],
        "additionalProperties": True,
    }
