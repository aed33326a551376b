"""The error taxonomy, and the one place that maps an exception to an outcome.

- transient: the world was briefly unavailable (timeouts, connection loss). Retry later.
- permanent: the *file* is bad (not Avro, corrupt, integrity or validation failure).
  Quarantine it with a reason, then ack.
- poison: the *message* is bad (bad JSON, missing fields, disallowed bucket/key).
  Straight to the dead-letter queue with a reason, no retries.

Every reason is a short machine-readable code; error text never carries data values.
"""

from __future__ import annotations

import asyncio
import enum
import socket


class Disposition(enum.StrEnum):
    RETRY = "retry"
    QUARANTINE = "quarantine"
    DEAD_LETTER = "dead_letter"


class EtlError(Exception):
    """Base class: ``reason`` is a stable code, ``stage`` where it happened."""

    disposition: Disposition = Disposition.RETRY

    def __init__(self, reason: str, detail: str = "", *, stage: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.stage = stage

    def __reduce__(self) -> tuple:  # survives the trip back from the decode process
        return (type(self), (self.reason, self.detail), {"stage": self.stage})


class TransientError(EtlError):
    disposition = Disposition.RETRY


class PermanentError(EtlError):
    """The file can never succeed as it is: quarantine."""

    disposition = Disposition.QUARANTINE


class PoisonMessage(EtlError):
    """The message itself is unusable: dead-letter with a reason."""

    disposition = Disposition.DEAD_LETTER


class LeaseBusy(Exception):
    """Another worker holds the lease for this idempotency key right now."""


_TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    socket.timeout,
    OSError,
)


def classify(exc: BaseException) -> tuple[Disposition, str]:
    """Decide what to do with a failed message: (disposition, reason code)."""
    if isinstance(exc, EtlError):
        return exc.disposition, exc.reason
    # Client libraries: decided by name so this module imports none of them.
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith("redis"):
        return Disposition.RETRY, "dedup_unavailable"
    if module.startswith(("botocore", "urllib3", "boto3")):
        return Disposition.RETRY, "storage_unavailable"
    if module.startswith(("aio_pika", "aiormq", "pamqp")):
        return Disposition.RETRY, "broker_unavailable"
    if isinstance(exc, MemoryError):
        return Disposition.QUARANTINE, "resource_limit_exceeded"
    if isinstance(exc, _TRANSIENT_BUILTINS):
        return Disposition.RETRY, "io_error"
    # An unexpected bug: retry (bounded by ETL_MAX_ATTEMPTS, then the DLQ), so a fix
    # deployed in between can still process it.
    return Disposition.RETRY, f"internal_error:{name}"


class ExitCode(enum.IntEnum):
    """The process exit codes of ``etl-engine`` (README: Exit codes). 69 and 78 are the
    BSD ``sysexits.h`` codes that supervisors and shells already know."""

    OK = 0
    FAILURES = 1  # ran, but some of the work failed (load-samples, release, replay)
    USAGE = 2  # the command line was wrong (argparse's own code)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: a service refused or could not be reached
    CONFIG = 78  # EX_CONFIG: the configuration is invalid
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


class Unavailable(Exception):
    """A service the command needs refused it or cannot be reached: exit 69 with one line
    naming the service and the setting to check (never a traceback)."""

    def __init__(self, service: str, setting: str, detail: str) -> None:
        super().__init__(f"{service} {detail}: check {setting}")
        self.service = service
        self.setting = setting
        self.detail = detail
