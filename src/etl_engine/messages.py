"""The upload announcement: a typed model and its parser.

Unknown extra fields are accepted (the upload service may add some); anything missing or
malformed raises ``PoisonMessage`` with a reason code, never echoing the values.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etl_engine.errors import PoisonMessage

MAX_KEY_BYTES = 1024
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAMESPACE = uuid.UUID("5b1f2a8e-6d0c-4c59-9a55-1f0f5b7c2e11")


class HealthDataMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    idempotency_key: str = Field(min_length=1, max_length=256)
    bucket: str = Field(min_length=1, max_length=63)
    key: str = Field(min_length=1)
    record_type: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=256)
    correlation_id: str = Field(min_length=1, max_length=256)
    upload_timestamp_utc: datetime | None = None
    content_hash: str | None = None
    file_size_bytes: int | None = Field(default=None, ge=0)
    record_count: int | None = Field(default=None, ge=0)
    message_id: str | None = Field(default=None, max_length=256)
    priority: Literal["low", "normal", "high"] = "normal"
    retry_count: int = Field(default=0, ge=0)

    @field_validator("content_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _HEX64.match(value):
            raise ValueError("must be a hex SHA-256")
        return value.lower()

    @field_validator("idempotency_key", "correlation_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("control characters")
        return value


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
    if "//" in key:
        raise PoisonMessage("key_empty_segment", stage="parse")
    if not key.startswith(raw_prefix):
        raise PoisonMessage("key_outside_raw_prefix", stage="parse")


def parse_message(
    body: bytes,
    *,
    amqp_message_id: str | None,
    allowed_buckets: frozenset[str],
    supported_types: tuple[str, ...],
    raw_prefix: str = "raw/",
    max_bytes: int = 256 * 1024,
) -> HealthDataMessage:
    """Bytes from the broker to a checked message, or ``PoisonMessage``."""
    if len(body) > max_bytes:
        raise PoisonMessage("message_too_large", stage="parse")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PoisonMessage("invalid_json", stage="parse") from None
    if not isinstance(data, dict):
        raise PoisonMessage("not_an_object", stage="parse")
    if "content_hash" not in data and "file_hash" in data:
        data["content_hash"] = data["file_hash"]
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
    message_id = msg.message_id or amqp_message_id or derive_message_id(msg.idempotency_key)
    return msg.model_copy(update={"record_type": canonical, "message_id": message_id})


def derive_message_id(idempotency_key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, idempotency_key))


def _canonical_type(value: str, supported: tuple[str, ...]) -> str | None:
    lowered = value.lower()
    for name in supported:
        if name.lower() == lowered:
            return name
    return None


def routing_key(record_type: str, priority: str = "normal") -> str:
    return f"health.processing.{record_type}.{priority}"
