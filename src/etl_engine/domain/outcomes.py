"""What a delivery ends in, decided in one place, and where an input's outcome lives.

Why one module: every accepted input must end in exactly one of a result, a quarantine
with a reason, or the DLQ with a reason. The kinds and claim states are enums here;
``decide`` is the only code that turns a failure into an outcome kind (the pipeline and
the worker both call it, neither re-decides); and the keys of the per-input outcome record
(the commit point, written with ``If-None-Match: *`` before any side effect), the
quarantine copy and the DLQ marker are derived here, so the worker, the tools and the
tests name the same objects. Pure: no I/O, no clock, no settings object.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from etl_engine.errors import Disposition


class OutcomeKind(enum.StrEnum):
    """How a delivery ends. The values are an interface (metrics, logs, the outcome
    records, ``wait_for_outcomes``)."""

    PROCESSED = "processed"
    DUPLICATE = "duplicate"  # another delivery of the input owns its outcome
    QUARANTINED = "quarantined"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    LEASE_BUSY = "lease_busy"


class ClaimState(enum.StrEnum):
    """The answer of the dedup store's claim (``unavailable``: it did not answer)."""

    ACQUIRED = "acquired"
    BUSY = "busy"
    DONE = "done"
    UNAVAILABLE = "unavailable"


# Kinds that end the input (the worker acks them) and kinds an outcome record can hold.
FINAL = frozenset({OutcomeKind.PROCESSED, OutcomeKind.DUPLICATE, OutcomeKind.QUARANTINED,
                   OutcomeKind.DEAD_LETTER})
RECORDED = frozenset({OutcomeKind.PROCESSED, OutcomeKind.QUARANTINED,
                      OutcomeKind.DEAD_LETTER})
# A lease held elsewhere is waited out this many times (republished copies) at most.
MAX_LEASE_WAITS = 200
RECORD_SCHEMA = 1
KEY_CONFLICT = "idempotency_key_conflict"
RECORD_INVALID = "outcome_record_invalid"
REASON_SUFFIX = ".reason.json"  # a quarantined copy's reason file: ``<copy>.reason.json``
_MAX_FILE_NAME = 200  # bytes of a quarantined copy's file name kept as is
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._=-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, as the decision needs it (from ``errors.classify``)."""

    disposition: Disposition
    reason: str
    stage: str | None = None
    lease_busy: bool = False  # another worker holds the input's lease
    committed: bool = False  # the input's outcome record exists: only its side effects failed


@dataclass(frozen=True, slots=True)
class Decision:
    kind: OutcomeKind
    reason: str | None
    stage: str | None


def lease_wait_limit(message_timeout_s: float, lease_ttl_s: float, first_delay_s: float
                     ) -> int:
    """Waits that outlast any live holder: a holder renews its lease for at most its own
    message timeout plus settling (60 s), so the limit covers that twice over, and never
    fewer than ``MAX_LEASE_WAITS``. Past it the holder is a crash loop, not slow work."""
    outlast = 2 * (message_timeout_s + 60 + lease_ttl_s)
    return max(MAX_LEASE_WAITS, math.ceil(outlast / max(first_delay_s, 0.001)))


def decide(failure: Failure, *, attempt: int, max_attempts: int, lease_waits: int = 0,
           parsed: bool = True, max_lease_waits: int = MAX_LEASE_WAITS) -> Decision:
    """The one mapping from a failure to an outcome kind.

    - committed: the outcome is recorded, so it must be completed, never replaced: retry
      (at any attempt; a DLQ entry would be a second outcome).
    - lease held elsewhere: wait (``lease_busy``) up to ``max_lease_waits`` republished
      copies (``lease_wait_limit``), then the DLQ (``lease_wait_exceeded``).
    - a bad file (quarantine disposition) of a parsed message: quarantined; without a
      parsed message there is nothing to quarantine it under: the DLQ.
    - a bad message: the DLQ, no retries.
    - transient: retry until ``max_attempts``, then the DLQ ``attempts_exhausted:<reason>``.
    """
    reason, stage = failure.reason, failure.stage
    if failure.committed:
        return Decision(OutcomeKind.RETRY, reason, stage)
    if failure.lease_busy:
        if lease_waits >= max_lease_waits:
            return Decision(OutcomeKind.DEAD_LETTER, "lease_wait_exceeded", stage)
        return Decision(OutcomeKind.LEASE_BUSY, "lease_busy", stage)
    if failure.disposition is Disposition.QUARANTINE and parsed:
        return Decision(OutcomeKind.QUARANTINED, reason, stage)
    if failure.disposition is not Disposition.RETRY:
        return Decision(OutcomeKind.DEAD_LETTER, reason, stage)
    if attempt >= max_attempts:
        return Decision(OutcomeKind.DEAD_LETTER, f"attempts_exhausted:{reason}", stage)
    return Decision(OutcomeKind.RETRY, reason, stage)


# --- where an input's outcome lives -----------------------------------------------------------
def key_name(idempotency_key: str) -> str:
    """The idempotency key as one safe path segment (its SHA-256 when it is not one: a dot
    segment such as ``..`` is refused by S3 servers, so it is hashed too)."""
    if _SAFE_KEY.match(idempotency_key) and idempotency_key.strip("."):
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def outcome_key(outcome_prefix: str, idempotency_key: str) -> str:
    """The input's outcome record: whoever creates it owns the outcome."""
    return f"{outcome_prefix}{key_name(idempotency_key)}.json"


def dlq_marker_key(outcome_prefix: str, idempotency_key: str, outcome_id: str) -> str:
    """Created after a recorded dead-letter's DLQ publish was confirmed: a later delivery
    of the input finds it and does not publish again. Named by the record's ``outcome_id``:
    a marker left by an outcome an operator reopened (``dlq replay``) never vouches for the
    next record's publish."""
    return f"{outcome_prefix}{key_name(idempotency_key)}.{key_name(outcome_id)}.dlq"


def quarantine_key(quarantine_prefix: str, record_type: str, idempotency_key: str,
                   raw_key: str) -> str:
    """Per input, not per object: ``{prefix}{RecordType}/{name}/{file name}``; its reason
    file is this plus ``REASON_SUFFIX``. Two inputs naming one object never share it."""
    file_name = raw_key.rsplit("/", 1)[-1]
    if not file_name.strip(".") or len(file_name.encode()) > _MAX_FILE_NAME:
        # S3 keys stop at 1,024 bytes and refuse dot segments: a name that would make the
        # path unwritable (and the quarantine a retry forever) becomes a digest
        file_name = hashlib.sha256(file_name.encode()).hexdigest()[:32] + ".avro"
    return f"{quarantine_prefix}{record_type}/{key_name(idempotency_key)}/{file_name}"


def binding(bucket: str, key: str, record_type: str, content_hash: str | None
            ) -> dict[str, Any]:
    """What an idempotency key stands for: another input under the same key is a conflict."""
    return {"bucket": bucket, "key": key, "record_type": record_type,
            "content_hash": content_hash}


def same_input(stored: dict[str, Any], new: dict[str, Any], *, key_implies_content: bool
               ) -> bool:
    """Whether a delivery is the input a record was made for.

    Under the upload service's scheme the idempotency key is derived from the user and the
    content (and the object key's user part is checked against the user), so the same
    user's re-upload of the same bytes under a new object name is the same input: a
    duplicate, not a conflict. Under ``opaque`` keys nothing is implied: every field binds.
    """
    fields = ("bucket", "record_type", "content_hash") if key_implies_content else (
        "bucket", "key", "record_type", "content_hash")
    return all(stored.get(f) == new.get(f) for f in fields)


def recorded(data: object) -> dict[str, Any] | None:
    """A stored outcome record if it is one this code can obey, else None."""
    if not isinstance(data, dict) or not isinstance(data.get("binding"), dict):
        return None
    if data.get("kind") not in {k.value for k in RECORDED}:
        return None
    if data["kind"] == OutcomeKind.PROCESSED and not (
            isinstance(data.get("body"), str) and isinstance(data.get("result_key"), str)):
        return None
    if data["kind"] == OutcomeKind.QUARANTINED and not (
            isinstance(data.get("reason_document"), dict)
            and isinstance(data.get("quarantine_key"), str)):
        return None
    return data
