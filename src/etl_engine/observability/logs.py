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


# Our events by method name -> level; the gate below compares them with the current level.
_LEVELS = {"debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40,
           "exception": 40, "critical": 50, "fatal": 50}
_min_level = logging.INFO
# One list object for the life of the process: cached loggers keep a reference to it, so a
# new renderer (set_format) reaches them too.
_PROCESSORS: list[structlog.types.Processor] = []
class _Stderr:
    """``sys.stderr`` as it is when a line is written, not as it was at start-up: whoever
    replaces the stream later (a test's capture, a supervisor's redirect) gets the lines,
    and a replaced stream that was closed is never written to."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _Stderr()
_HANDLER = logging.StreamHandler(_STDERR)  # type: ignore[arg-type]


def configure(level: str = "INFO", fmt: str = "json", *, user_hash_key: str = "") -> None:
    """Our events and library (stdlib ``logging``) records, rendered the same way.

    Level and format can change later (``set_level``, ``set_format``: a configuration
    reload): structlog's filtering loggers fix the level when first used, so the level is
    a gate at the head of the processors instead (one comparison per event)."""
    global _HASH_KEY
    _HASH_KEY = user_hash_key.encode()[:64]
    _PROCESSORS[:] = [
        _level_gate,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _STAMP,
        scrub_exception,
        _renderer(fmt),
    ]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, botocore, ...) log through stdlib logging: same renderer, so
    # production output stays one JSON object per line, and tracebacks are scrubbed too.
    _HANDLER.setFormatter(_stdlib_formatter(_PROCESSORS[-1]))
    logging.getLogger().handlers[:] = [_HANDLER]
    set_level(level)


def set_level(level: str) -> None:
    """Events below ``level`` are dropped from now on (libraries: WARNING at least)."""
    global _min_level
    numeric = logging.getLevelName(level.upper())
    _min_level = numeric
    logging.getLogger().setLevel(max(numeric, logging.WARNING))


def set_format(fmt: str) -> None:
    """``json`` or ``console`` from the next event on, ours and the libraries'."""
    if not _PROCESSORS:
        return
    _PROCESSORS[-1] = _renderer(fmt)
    _HANDLER.setFormatter(_stdlib_formatter(_PROCESSORS[-1]))


def _level_gate(_logger: object, name: str, event: EventDict) -> EventDict:
    if _LEVELS.get(name, logging.INFO) < _min_level:
        raise structlog.DropEvent
    return event


def _renderer(fmt: str) -> structlog.types.Processor:
    return (structlog.processors.JSONRenderer() if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))


_STAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _stdlib_formatter(renderer: structlog.types.Processor) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            _STAMP,
            scrub_exception,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )


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
