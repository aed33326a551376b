"""Keyed pseudonyms for a training record's lineage.

Training records go to people who must not learn whose data they hold (an ML team, a
shared bucket). So a record names its source only by HMACs under the lineage key
(``ETL_LINEAGE_KEY``): whoever has the records but not the key can neither reverse them nor
confirm a guessed user id or object key. Operators map them back with ``etl-engine lineage``,
which reads the outcome records (operator access only).

One key, a purpose per pseudonym: the three ids never collide with each other, and none
equals the user hash in logs (a different key), so logs and training data do not join.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from etl_engine.domain.model import Lineage

PSEUDONYM_HEX = 32  # 128 bits: collisions are out of reach for any corpus
PSEUDONYM = re.compile(r"^[0-9a-f]{32}$")


def _mac(key: bytes, purpose: str, *parts: str) -> str:
    # NUL never occurs in a field that passed parsing, so the joined parts are unambiguous.
    message = "\x00".join((purpose, *parts)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def source_id(key: bytes, bucket: str, object_key: str) -> str:
    """The source Avro file (bucket and object key)."""
    return _mac(key, "source", bucket, object_key)


def subject_id(key: bytes, user_id: str) -> str:
    """The person: stable across their records, so splits can keep a person in one split."""
    return _mac(key, "subject", user_id)


def record_id(key: bytes, idempotency_key: str) -> str:
    """The input, and the result's file name: one per idempotency key, like the result."""
    return _mac(key, "record", idempotency_key)


def key_id(key: bytes) -> str:
    """A fingerprint of the lineage key (not the key): records made under different keys
    cannot be joined by subject, and the dataset tools say so when they meet two."""
    return _mac(key, "key-id")[:8]


def pseudonymous(lineage_key: bytes, *, bucket: str, key: str, record_type: str,
                 idempotency_key: str, user_id: str, message_id: str = "",
                 correlation_id: str = "", upload_timestamp_utc: str | None = None,
                 full: bool = False) -> Lineage:
    """An input's lineage with its pseudonyms filled in (the worker, ``inspect``, tests)."""
    return Lineage(
        bucket=bucket, key=key, message_id=message_id, correlation_id=correlation_id,
        record_type=record_type, idempotency_key=idempotency_key,
        upload_timestamp_utc=upload_timestamp_utc,
        subject_id=subject_id(lineage_key, user_id),
        source_id=source_id(lineage_key, bucket, key),
        record_id=record_id(lineage_key, idempotency_key),
        key_id=key_id(lineage_key),
        full=full,
    )
