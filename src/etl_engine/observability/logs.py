"""structlog set-up: JSON lines in production, console in development.

Personal data never reaches a log line: user ids go through ``hash_user_id`` (keyed
BLAKE2b), and exception text is reduced to its class name plus our own reason code.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog
from structlog.types import EventDict

_HASH_KEY = b""


def configure(level: str = "INFO", fmt: str = "json", *, user_hash_key: str = "") -> None:
    """Our events and library (stdlib ``logging``) records, rendered the same way."""
    global _HASH_KEY
    _HASH_KEY = user_hash_key.encode()[:64]
    numeric = logging.getLevelName(level)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            scrub_exception,
            renderer,
        ],
        # Drops below-level events before any processor runs: cheap on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, botocore, ...) log through stdlib logging: same renderer, so
    # production output stays one JSON object per line, and tracebacks are scrubbed too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            stamp,
            scrub_exception,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def scrub_exception(_logger: object, _name: str, event: EventDict) -> EventDict:
    """Replace tracebacks with the exception class: their text can quote data values."""
    exc_info = event.pop("exc_info", None)
    for key in ("exception", "stack", "stack_info"):
        event.pop(key, None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        exc = exc_info if isinstance(exc_info, BaseException) else (
            exc_info[1] if isinstance(exc_info, tuple) else None)
        if exc is not None:
            event.setdefault("error", error_class(exc))
    return event


def hash_user_id(user_id: str) -> str:
    """Stable pseudonym for a user in logs; keyed (ETL_USER_ID_HASH_KEY) so not reversible
    by hashing guessed ids."""
    return hashlib.blake2b(user_id.encode(), key=_HASH_KEY, digest_size=8).hexdigest()


def error_class(exc: BaseException) -> str:
    """Safe description of an exception: its type and our reason code, never its text."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}:{reason}" if reason else type(exc).__name__


def get_logger(name: str = "etl") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
