"""structlog set-up: JSON lines in production, console in development.

Personal data never reaches a log line: user ids go through ``hash_user_id`` (keyed
BLAKE2b), and exception text is reduced to its class name plus our own reason code.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

_HASH_KEY = b""


def configure(level: str = "INFO", fmt: str = "json", *, user_hash_key: str = "") -> None:
    global _HASH_KEY
    _HASH_KEY = user_hash_key.encode()[:64]
    numeric = logging.getLevelName(level)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        # Drops below-level events before any processor runs: cheap on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")


def hash_user_id(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), key=_HASH_KEY, digest_size=8).hexdigest()


def error_class(exc: BaseException) -> str:
    """Safe description of an exception: its type and our reason code, never its text."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}:{reason}" if reason else type(exc).__name__


def get_logger(name: str = "etl") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
