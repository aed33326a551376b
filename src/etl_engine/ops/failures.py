"""One line, never a traceback: what a command says when a service fails it.

Every ``etl-engine`` command runs inside ``guarded``: a broker, S3 or Redis error becomes
``etl-engine COMMAND: <service> <what happened>: check <setting>`` and exit 69
(EX_UNAVAILABLE), a bad configuration exit 78 (EX_CONFIG), a ``UsageError`` (a command
line argparse could not judge: a file to read or write) exit 2, Ctrl-C exit 130. Anything
else is a bug and keeps its traceback.

Client libraries are recognised by module and class name (as ``errors.classify`` does), so
this module imports none of them.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from etl_engine.errors import ExitCode, Unavailable
from etl_engine.settings import ConfigError, Settings

_context: dict[str, Settings] = {}

Command = Callable[[Any], int]


class UsageError(Exception):
    """The command line names something unusable (a file that cannot be read or written):
    one line, exit 2, like argparse's own usage errors."""


def remember(settings: Settings) -> Settings:
    """The settings a command runs with: messages then name the host they tried."""
    _context["settings"] = settings
    return settings


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names(exc: BaseException) -> tuple[str, str]:
    return type(exc).__module__ or "", type(exc).__name__


def _broker(exc: BaseException, settings: Settings | None) -> Unavailable | None:
    module, name = _names(exc)
    if not module.startswith(("aiormq", "aio_pika", "pamqp")) and name not in (
            "PublishFailed", "BrokerUnreachable"):
        return None
    where = settings.masked()["ETL_AMQP_URL"] if settings else "the broker"
    text = str(exc)
    if name == "BrokerUnreachable":  # adapters.topology.connect: a timeout or socket error
        return Unavailable("RabbitMQ", "ETL_AMQP_URL", f"is unreachable at {where} ({text})")
    if name == "ProbableAuthenticationError" or "ACCESS_REFUSED - Login" in text:
        return Unavailable("RabbitMQ", "ETL_AMQP_URL (user and password)",
                           f"refused the login at {where} (ACCESS_REFUSED)")
    if name == "InvalidFrameError" and "Connection.Close" in text:
        return Unavailable("RabbitMQ", "ETL_AMQP_URL (the virtual host and the user's "
                           "access to it)", f"closed the connection at {where} during the "
                           "handshake")
    if name == "ChannelAccessRefused":
        return Unavailable("RabbitMQ", "the permissions of the ETL_AMQP_URL user "
                           "(deployment/rabbitmq/permissions.sh)", f"refused access: {text}")
    if name == "ChannelNotFoundEntity":
        return Unavailable("RabbitMQ", "ETL_EXCHANGE / ETL_QUEUE (a worker declares them "
                           "when it starts)", f"has no such entity: {text}")
    if name == "PublishFailed":
        return Unavailable("RabbitMQ", "ETL_EXCHANGE (is a worker running? it binds the "
                           "work queue)", f"did not take the message ({text})")
    return Unavailable("RabbitMQ", "ETL_AMQP_URL", f"is unreachable at {where} ({name}: "
                       f"{text or 'no detail'})")


_S3_CODES = {
    "InvalidAccessKeyId": ("refused the access key", "ETL_S3_ACCESS_KEY_ID"),
    "SignatureDoesNotMatch": ("refused the secret key", "ETL_S3_SECRET_ACCESS_KEY"),
    "AccessDenied": ("denied the request", "the permissions of ETL_S3_ACCESS_KEY_ID's user"),
    "NoSuchBucket": ("has no such bucket", "ETL_BUCKET"),
}


def _storage(exc: BaseException, settings: Settings | None) -> Unavailable | None:
    module, name = _names(exc)
    if not module.startswith(("botocore", "boto3", "urllib3", "s3transfer")):
        return None
    where = (settings.s3_endpoint_url or "AWS (ETL_S3_ENDPOINT_URL is empty)") if settings else "S3"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return Unavailable("S3", "ETL_S3_ACCESS_KEY_ID / ETL_S3_SECRET_ACCESS_KEY, and "
                           "ETL_S3_ENDPOINT_URL", f"has no credentials for {where}")
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", "")) if isinstance(
        response, dict) else ""
    if code in _S3_CODES:
        what, setting = _S3_CODES[code]
        return Unavailable("S3", setting, f"at {where} {what} ({code})")
    if code:
        return Unavailable("S3", "ETL_S3_ENDPOINT_URL and the S3 user's permissions",
                           f"at {where} answered {code}")
    return Unavailable("S3", "ETL_S3_ENDPOINT_URL", f"is unreachable at {where} ({name})")


def _dedup(exc: BaseException, settings: Settings | None) -> Unavailable | None:
    module, name = _names(exc)
    if not module.startswith(("redis", "sqlite3")):
        return None
    where = settings.masked()["ETL_DEDUP_URL"] if settings else "the dedup store"
    store = "SQLite" if module.startswith("sqlite3") else "Redis"
    if name == "AuthenticationError" or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
        return Unavailable(store, "ETL_DEDUP_URL (its password)",
                           f"refused the login at {where}")
    return Unavailable(store, "ETL_DEDUP_URL", f"is unreachable at {where} ({name})")


def unavailable(exc: BaseException) -> Unavailable | None:
    """The service failure behind ``exc`` (or its causes), if it is one."""
    settings = _context.get("settings")
    for link in _chain(exc):
        if isinstance(link, Unavailable):
            return link
        for recognise in (_broker, _storage, _dedup):
            found = recognise(link, settings)
            if found is not None:
                return found
    return None


def quiet_client_libraries() -> None:
    """The broker client logs its own connection errors; a command says them once, itself
    (the worker keeps them: its log is the record)."""
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def say(command: str, message: str) -> None:
    """``etl-engine COMMAND: message`` on stderr, terminal control characters escaped."""
    from etl_engine.ops.display import safe

    print(safe(f"etl-engine {command}: {message}"), file=sys.stderr, flush=True)


def guarded(command: str) -> Callable[[Command], Command]:
    """Run a command with the exit codes above; ``command`` names it in the message."""
    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(args: Any) -> int:
            try:
                return fn(args)
            except KeyboardInterrupt:
                say(command, "interrupted")
                return ExitCode.INTERRUPTED
            except ConfigError as exc:
                say(command, str(exc))
                return ExitCode.CONFIG
            except UsageError as exc:
                say(command, str(exc))
                return ExitCode.USAGE
            except BrokenPipeError:  # `etl-engine ... | head`: the reader has gone
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed at exit
                return ExitCode.OK
            except Exception as exc:
                found = unavailable(exc)
                if found is None:
                    raise
                say(command, str(found))
                return ExitCode.UNAVAILABLE
        return run
    return wrap
