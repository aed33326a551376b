"""What operator tools print: terminal-safe text and user ids masked unless revealed.

Everything ``dlq``, ``quarantine`` and ``status`` show comes, at least in part, from
outside: a publisher writes message ids, headers and bodies, an uploader chooses object
keys, a sidecar answers with its own worker id. Printed raw, an ESC or CSI sequence in any
of them drives the operator's terminal (rewrite the screen, hide lines, set the title,
on some terminals write files). So every display goes through ``safe`` (text) or
``safe_data`` (a document about to be dumped as JSON): control and format characters
become visible ``\\xNN`` / ``\\uNNNN`` escapes.

User ids are personal data. ``mask`` replaces them, and the user part of an upload key
(``raw/{Type}/{YYYY}/{MM}/{DD}/{user_id}_{timestamp}.avro``), with the keyed pseudonym of
``logs.hash_user_id`` (the same one the worker logs), unless the operator asks for
``--reveal``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from etl_engine.observability.logs import hash_user_id

_UPLOAD_STEM = re.compile(r"(.+)_(\d{8}_\d{6}_\d{6})")

HASH_PREFIX = "hash:"
# Shorter user ids are masked where they stand as a value or a key's user part, but not
# searched for inside other text (a one-letter id would mangle everything).
MIN_EMBEDDED_USER_ID = 4


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def safe(text: object) -> str:
    """Text with every control/format character (ESC, CSI, BEL, CR, bidi overrides, ...)
    shown as an escape, so nothing printed can drive the terminal or fake a line."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() or unicodedata.category(ch) == "Zs"
                   else _escape(ch) for ch in s)


def safe_data(value: Any) -> Any:
    """``safe`` applied to every string (dict keys too) of a JSON-able document."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: safe_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_data(v) for v in value]
    return value


def pseudonym(user_id: str) -> str:
    """The masked form of a user id: the keyed hash the worker's logs use too."""
    return HASH_PREFIX + hash_user_id(user_id)


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
