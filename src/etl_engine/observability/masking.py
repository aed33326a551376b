"""User ids masked: the keyed pseudonym of the worker's logs, wherever they appear.

User ids are personal data. ``mask`` replaces them, and the user part of an upload key
(``raw/{Type}/{YYYY}/{MM}/{DD}/{user_id}_{timestamp}.avro``), with the keyed pseudonym of
``logs.hash_user_id``. The operator tools (``ops/display.py``, unless ``--reveal``) and the
sidecar's admin API (always) show documents through it.
"""

from __future__ import annotations

import re
from typing import Any

from etl_engine.observability.logs import hash_user_id

_UPLOAD_STEM = re.compile(r"(.+)_(\d{8}_\d{6}_\d{6})")

HASH_PREFIX = "hash:"
# Shorter user ids are masked where they stand as a value or a key's user part, but not
# searched for inside other text (a one-letter id would mangle everything).
MIN_EMBEDDED_USER_ID = 4


def pseudonym(user_id: str) -> str:
    """The masked form of a user id: the keyed hash the worker's logs use too."""
    return HASH_PREFIX + hash_user_id(user_id)


def upload_user(key: str) -> str | None:
    """The user part of an upload key's file name (``{user_id}_{timestamp}.ext``), if any."""
    stem = key.rpartition("/")[2].rpartition(".")[0]
    stamped = _UPLOAD_STEM.fullmatch(stem)
    return stamped.group(1) if stamped else None


def mask_key(key: str) -> str:
    """An object key with the user part of its file name replaced by the pseudonym.

    ``{user_id}_{YYYYmmdd_HHMMSS_ffffff}.ext`` keeps the timestamp and extension (the user
    id itself may hold ``_``); another name is masked up to its first ``_``, or whole.
    """
    folder, slash, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stamped = _UPLOAD_STEM.fullmatch(stem)  # the service's {user}_{YYYYmmdd_HHMMSS_ffffff}
    if stamped:
        user, underscore, tail = stamped.group(1), "_", stamped.group(2)
    else:
        user, underscore, tail = stem.partition("_")
        if not underscore:
            user, tail = stem, ""
    if not user or user.startswith(HASH_PREFIX):
        return key
    return f"{folder}{slash}{pseudonym(user)}{underscore}{tail}{dot}{ext}"


def mask(value: Any, user_ids: set[str] | frozenset[str] = frozenset()) -> Any:
    """A copy with user ids and key user parts masked: fields named ``user_id`` and ``key``
    structurally, and each known user id wherever else it appears in a string."""
    embedded = sorted((u for u in user_ids if len(u) >= MIN_EMBEDDED_USER_ID),
                      key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, embedded))) if embedded else None

    def walk(item: Any, name: str = "") -> Any:
        if isinstance(item, dict):
            return {k: walk(v, str(k)) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, name) for v in item]
        if not isinstance(item, str):
            return item if name != "user_id" or item is None else pseudonym(str(item))
        if name == "user_id":
            return item if item.startswith(HASH_PREFIX) else pseudonym(item)
        if pattern is not None:  # one pass: a pseudonym is never searched again
            item = pattern.sub(lambda m: pseudonym(m.group(0)), item)
        return mask_key(item) if name == "key" else item

    return walk(value)


def user_ids_in(document: Any) -> set[str]:
    """Every ``user_id`` value anywhere in a document (to mask them elsewhere in it)."""
    found: set[str] = set()
    if isinstance(document, dict):
        for k, v in document.items():
            if k == "user_id" and isinstance(v, (str, int)) and str(v):
                found.add(str(v))
            else:
                found |= user_ids_in(v)
    elif isinstance(document, list):
        for v in document:
            found |= user_ids_in(v)
    return found
