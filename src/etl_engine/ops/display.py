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
``--reveal``. That part lives in ``observability/masking.py``, so the sidecar's admin API
masks the same way; it is re-exported here.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from etl_engine.observability.masking import (  # noqa: F401  (re-exported for the tools)
    HASH_PREFIX,
    MIN_EMBEDDED_USER_ID,
    mask,
    mask_key,
    pseudonym,
    upload_user,
    user_ids_in,
)


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
