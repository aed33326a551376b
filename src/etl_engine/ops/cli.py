"""``etl-engine`` command line: the worker and the operator tools.

Conventions (README: Command line): every option has help, and its default or choices
shown; configuration comes from flags > ETL_CONFIG_FILE > the environment > ``.env`` in
the working directory > the code's defaults; a command that prints a report takes
``--json``; exit codes are ``errors.ExitCode`` (usage 2, configuration 78, a service
unavailable 69, partial failure 1, Ctrl-C 130), and a service failure is one line
(``ops.failures``), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl_engine import __version__
from etl_engine.errors import ExitCode
from etl_engine.ops import data_commands, failures
from etl_engine.ops import inspection as inspect_file  # stdlib only at import
from etl_engine.settings import CONFIG_FILE_VAR, ConfigError, Settings, load_settings

if TYPE_CHECKING:  # imported when a command runs: `etl-engine --help` stays light
    from etl_engine.adapters.storage import Storage

DESCRIPTION = """\
ETL Narrative Engine: workers that turn Health Connect Avro exports, announced on
RabbitMQ, into statistics, narratives and training records in S3; and the operator tools
around them."""

EPILOG = """\
configuration (highest first): command-line flags, ETL_CONFIG_FILE, the environment,
.env in the working directory (--env-file), the code's defaults (.env.template lists them)

exit codes: 0 ok, 1 some of the work failed, 2 usage, 69 a service is unavailable,
78 invalid configuration, 130 interrupted

shell completion: eval "$(etl-engine completion bash)"   (zsh, tcsh: see README)"""

# The dotenv file commands read beneath the environment (main() sets it from --env-file).
_env_file: str | None = None


def _settings(**overrides: Any) -> Settings:
    """The command's settings (ConfigError: exit 78, printed by ``failures.guarded``)."""
    return failures.remember(load_settings(env_file=_env_file, **overrides))


Command = Callable[[argparse.Namespace], int]


def _traced(name: str) -> Callable[[Command], Command]:
    """Run a publishing command in one root span; its messages carry the traceparent."""
    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            from etl_engine.observability import telemetry

            settings = _settings()
            telemetry.configure(settings.otlp_endpoint, "etl-engine-cli")
            try:
                with telemetry.span(name):
                    return fn(args)
            finally:
                telemetry.shutdown()  # flush before exit
        return run
    return wrap


# --- worker -----------------------------------------------------------------------------
# flag -> Settings field: the same typed, validated setting as the ETL_ variable.
WORKER_FLAGS: dict[str, str] = {
    "--concurrency": "concurrency", "--queue": "queue", "--log-level": "log_level",
    "--log-format": "log_format", "--sidecar-port": "sidecar_port", "--dedup-url": "dedup_url",
}


def _worker_settings(args: argparse.Namespace) -> Settings:
    """Settings with the flags on top; a bad flag value names the flag and its variable."""
    overrides = {name: value for name in WORKER_FLAGS.values()
                 if (value := getattr(args, name, None)) is not None}
    try:
        return _settings(**overrides)
    except ConfigError as exc:
        text = str(exc)
        for flag, name in WORKER_FLAGS.items():
            if name in overrides:
                var = f"ETL_{name.upper()}"
                text = text.replace(f"{var}:", f"{flag} ({var}):")
        raise ConfigError(text) from None


def cmd_worker(args: argparse.Namespace) -> int:
    if args.check:
        from etl_engine.ops.display import safe
        from etl_engine.ops.status import check

        healthy, line = check(*_sidecar_address(args), "/" + args.check)
        print(safe(line))
        return ExitCode.OK if healthy else ExitCode.FAILURES
    settings = _worker_settings(args)
    from etl_engine.runtime.worker import serve

    # A reload (SIGHUP, /admin/config/reload) reads the same sources, flags still on top.
    return serve(settings, reload_settings=functools.partial(_worker_settings, args))


_SIDECAR_VARS = ("ETL_SIDECAR_HOST", "ETL_SIDECAR_PORT")


def _sidecar_address(args: argparse.Namespace) -> tuple[str, int]:
    """``worker --check``: ETL_SIDECAR_HOST and ETL_SIDECAR_PORT (``--sidecar-port`` on
    top) from the worker's sources in its order, and nothing else read or validated: the
    health check of a worker that runs fine must not fail on a bad edit elsewhere in the
    configuration (the worker refuses that edit on a reload and says so itself)."""
    from pydantic import TypeAdapter, ValidationError

    wanted = {*_SIDECAR_VARS, CONFIG_FILE_VAR}

    def pick(pairs: Any) -> dict[str, str]:
        return {k.upper(): v for k, v in pairs if k.upper() in wanted and v}

    found: dict[str, str] = {}
    if _env_file and Path(_env_file).is_file():
        from dotenv import dotenv_values

        found.update(pick(dotenv_values(_env_file).items()))
    found.update(pick(os.environ.items()))
    if found.get(CONFIG_FILE_VAR):
        found.update(pick(_lenient_lines(found[CONFIG_FILE_VAR])))
    fields = Settings.model_fields
    host = found.get("ETL_SIDECAR_HOST", fields["sidecar_host"].default)
    if args.sidecar_port is not None:
        return host, int(args.sidecar_port)
    text = found.get("ETL_SIDECAR_PORT")
    if text is None:
        return host, int(fields["sidecar_port"].default)
    try:
        port = TypeAdapter(int).validate_python(text.strip())
    except ValidationError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"ETL_SIDECAR_PORT: {text!r} is not a port (0-65535)")
    return host, port


def _lenient_lines(path: str) -> list[tuple[str, str]]:
    """NAME=value pairs of an ETL_CONFIG_FILE, skipping what is not one (an unreadable
    file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    pairs = (line.partition("=") for line in text.splitlines()
             if not line.lstrip().startswith("#"))
    return [(name.strip(), value.strip()) for name, sep, value in pairs if sep]


# --- publish ----------------------------------------------------------------------------
@_traced("etl-engine publish")
def cmd_publish(args: argparse.Namespace) -> int:
    from etl_engine.adapters.publisher import Publisher, describe_upload, upload_bytes
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.errors import EtlError

    if not args.file and not args.key:
        print("etl-engine publish: give --file PATH or --key KEY", file=sys.stderr)
        return ExitCode.USAGE
    data = _read_file(args.file, "--file") if args.file else b""  # before any service
    settings = _settings()
    storage = Storage(make_client(settings))
    if args.file:
        storage.ensure_bucket(settings.bucket)
        # As the upload service: the run id makes a user of its own, so fresh keys.
        user = f"{args.user_id}-{args.run_id}" if args.run_id else args.user_id
        up = upload_bytes(storage, settings, args.record_type, data, user_id=user)
    else:
        bucket = args.bucket or settings.bucket
        # The upload service's message names the file's hash: read the object for it.
        try:
            content = storage.get(bucket, args.key)
        except EtlError as exc:
            if exc.reason != "object_missing":
                raise
            _say(f"etl-engine publish: no object {args.key} in bucket {bucket} (--key, "
                 "--bucket)", err=True)
            return ExitCode.FAILURES
        up = describe_upload(settings, args.record_type, args.key, content, args.user_id,
                             bucket=bucket)
    body = up.message()
    if args.idempotency_key:  # only accepted by workers with ETL_IDEMPOTENCY_SCHEME=opaque
        body["idempotency_key"] = args.idempotency_key
    if args.priority:  # not part of the upload service's message
        body["priority"] = args.priority

    async def main() -> None:
        async with Publisher(settings) as pub:
            await pub.publish(body)

    asyncio.run(main())
    if args.json:
        from etl_engine.domain.messages import routing_key, upload_routing_key

        rk = (routing_key(up.record_type, args.priority) if args.priority
              else upload_routing_key(up.record_type))
        _say_json({"message_id": up.message_id, "bucket": up.bucket, "key": up.key,
                   "record_type": up.record_type, "routing_key": rk,
                   "idempotency_key": body["idempotency_key"], "size": up.size})
        return 0
    print(f"published message_id={up.message_id} key={up.key}")
    return 0


# --- samples ----------------------------------------------------------------------------
@_traced("etl-engine load-samples")
def cmd_load_samples(args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops.loader import load
    from etl_engine.ops.progress import Progress
    from etl_engine.ops.sample_files import iter_sample_files

    settings = _settings()
    directory = Path(args.dir) if args.dir else _default_samples()
    files = iter_sample_files(directory)
    if not files:
        print(f"etl-engine load-samples: no Avro sample files under {directory} "
              "(expected {RecordType}/*.avro)", file=sys.stderr)
        return ExitCode.FAILURES
    tty = sys.stderr.isatty()

    def progress(label: str, total: int) -> Progress:
        return Progress(label, total, unit="files" if label == "uploaded" else "msg",
                        tty=tty, interval=args.progress_interval)

    report = load(settings, Storage(make_client(settings, pool=args.jobs)), files,
                  directory=directory, run_id=args.run_id or "", jobs=args.jobs,
                  wait=args.wait, timeout_s=args.timeout, progress=progress)
    if args.json:
        _say_json(report.as_dict())
    elif not args.wait:
        print(f"published {len(files)} messages (run id {args.run_id or '-'})")
    else:
        print("\n".join(report.summary_lines()))
    return _load_verdict(report, allow_failures=args.allow_failures)


def _load_verdict(report: Any, *, allow_failures: bool) -> int:
    """Name what failed on stderr; exit 1 for it unless the operator accepts failures."""
    for outcome, path in report.failed_files():
        _say(f"{outcome.replace('_', '-')}: {path}", err=True)
    if report.pending:
        _say(f"etl-engine load-samples: {report.pending} message(s) not settled in time "
             "(are workers running? etl-engine status)", err=True)
    failed = len(report.failed_files())
    if failed:
        accepted = " (accepted: --allow-failures)" if allow_failures else (
            "; exit 1 (--allow-failures accepts them)")
        _say(f"etl-engine load-samples: {failed} file(s) quarantined or dead-lettered"
             f"{accepted}: etl-engine quarantine list / dlq list", err=True)
    return int(report.exit_code(allow_failures=allow_failures))


# --- compact ---------------------------------------------------------------------------
def cmd_compact(args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops.compact import CompactionContended, compact_month, legacy_journals
    from etl_engine.ops.conditional import Unsupported

    settings = _settings()
    storage = Storage(make_client(settings))
    try:
        done = compact_month(storage, settings, args.month)
    except ValueError as exc:
        print(f"etl-engine compact: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (CompactionContended, Unsupported) as exc:
        print(f"etl-engine compact: {exc}", file=sys.stderr)
        return ExitCode.FAILURES
    card = None
    if done:
        from etl_engine.ops.dataset import card_key, write_card

        write_card(storage, settings, args.month)  # the month's card, beside its journals
        card = card_key(settings, args.month, "md")
    legacy = list(legacy_journals(storage, settings, args.month))
    prefix = settings.training_prefix
    for key in legacy:
        print(f"etl-engine compact: an older journal is still under {prefix}: {key} "
              f"(a reader of {prefix} counts its records twice; delete it)",
              file=sys.stderr)
    if args.json:
        from dataclasses import asdict

        _say_json({"month": args.month, "journals": [asdict(r) for r in done],
                   "dataset_card": card, "legacy_journals": legacy})
        return ExitCode.OK
    for r in done:
        note = (f"  ({r.superseded} replaced by a later export of the same day)"
                if r.superseded else "")
        print(f"{r.category:<24} {r.records:>7} records  {r.bytes:>10} bytes  "
              f"{r.inputs:>6} inputs  {r.state:<9}  {r.key}{note}")
    print(f"{'dataset card':<24} {card}" if card else f"no training records for {args.month}")
    return ExitCode.OK


# --- status, dead letters, quarantine -----------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from etl_engine.ops import status

    settings = _settings()
    urls = [u.strip() for item in args.targets or [] for u in item.split(",") if u.strip()]
    targets = status.fixed(urls) if urls else functools.partial(status.discover, args.ports)
    return asyncio.run(status.run(settings, targets, once=args.once, interval=args.interval,
                                  as_json=args.json, discovered=not urls, ports=args.ports))


def _read_file(path: str, option: str) -> bytes:
    """A local file a command line names (unreadable: one line, exit 2)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise failures.UsageError(f"{option} {path}: cannot read it "
                                  f"({exc.strerror or type(exc).__name__})") from None


def _port_range(text: str) -> range:
    """``8004-8035`` (or one port) as a range, for ``status --ports``."""
    m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text.strip())
    first, last = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, -1)
    if not m or not 1 <= first <= last <= 65535 or last - first >= 1024:
        raise argparse.ArgumentTypeError("FIRST-LAST, at most 1024 ports, e.g. 8004-8035")
    return range(first, last + 1)


def _operator_settings() -> Settings:
    """Settings for a tool that shows user data: pseudonyms keyed like the worker's logs."""
    from etl_engine.observability import logs

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format,
                   user_hash_key=settings.user_id_hash_key.get_secret_value())
    return settings


def _say(*parts: object, err: bool = False) -> None:
    """Print operator output; publisher-controlled text never reaches the terminal raw."""
    from etl_engine.ops.display import safe

    print(safe(" ".join(str(p) for p in parts)), file=sys.stderr if err else sys.stdout)


def _say_json(document: object, *, indent: bool = False) -> None:
    import orjson

    from etl_engine.ops.display import safe_data

    option = orjson.OPT_INDENT_2 if indent else 0
    print(orjson.dumps(safe_data(orjson.loads(orjson.dumps(document, default=str))),
                       option=option).decode())


def cmd_dlq(args: argparse.Namespace) -> int:
    from etl_engine.ops import dlq

    settings = _operator_settings()
    run = {"list": _dlq_list, "show": _dlq_show, "replay": _dlq_replay}[args.dlq_command]
    try:
        return run(settings, args)
    except dlq.QueueAbsent as exc:  # before any worker ran: an answer, not an error
        if args.dlq_command == "list" and args.json:
            _say_json([])
        else:
            _say(f"etl-engine dlq {args.dlq_command}: {exc}",
                 err=args.dlq_command != "list")
        wanted = args.dlq_command == "show" or bool(getattr(args, "ids", None))
        return ExitCode.FAILURES if wanted else ExitCode.OK


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from etl_engine.ops import dlq

    items, total = asyncio.run(dlq.list_dead_letters(settings, limit=args.limit,
                                                     reveal=args.reveal))
    if args.json:
        _say_json(items)
        return ExitCode.OK
    _say(f"{total} message(s) in {settings.dlq_name}" + (f", showing {len(items)}"
                                                   if len(items) < total else ""))
    if items:
        _say(f"{'id':<38} {'reason':<36} {'stage':<9} {'att':>3} {'age':>5}  routing key")
    for i in items:
        _say(f"{i.id:<38} {i.reason[:36]:<36} {i.stage[:9]:<9} {i.attempts:>3} "
             f"{dlq.age(i.dead_lettered_at):>5}  {i.routing_key}")
    return ExitCode.OK


def _dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    from etl_engine.ops import dlq

    found = asyncio.run(dlq.show(settings, args.id, reveal=args.reveal))
    if found is None:
        _say(f"etl-engine dlq show: no message {args.id!r} in {settings.dlq_name}", err=True)
        return ExitCode.FAILURES
    _say_json(found, indent=not args.json)
    return ExitCode.OK


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops import dlq

    if not args.all and not args.ids:
        print("etl-engine dlq replay: give message ids or --all", file=sys.stderr)
        return ExitCode.USAGE
    done = asyncio.run(dlq.replay(settings, None if args.all else args.ids,
                                  Storage(make_client(settings))))
    kept = [k for k, rk in done if dlq.was_kept(rk)]
    missing = [] if args.all else sorted(set(args.ids) - {k for k, _ in done})
    if args.json:
        _say_json({"replayed": [{"id": k, "routing_key": rk} for k, rk in done
                                if not dlq.was_kept(rk)],
                   "kept": kept, "not_found": missing, "exchange": settings.exchange})
    for key, rk in done:
        if dlq.was_kept(rk):
            _say(f"kept {key}: {rk}", err=True)
        elif not args.json:
            _say(f"replayed {key} -> {settings.exchange} {rk}")
    for key in missing:
        _say(f"not found in {settings.dlq_name}: {key}", err=True)
    if not args.json:
        print(f"{len(done) - len(kept)} message(s) replayed")
    return ExitCode.FAILURES if missing or kept else ExitCode.OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops import quarantine as q

    if args.q_command == "show" and args.html:  # before any service: one line, exit 2
        inspect_file.check_html_target(args.html)
    settings = _operator_settings()
    storage = Storage(make_client(settings))
    if args.q_command == "list":
        items = q.list_quarantined(storage, settings, reveal=args.reveal)
        if args.json:
            _say_json(items)
            return ExitCode.OK
        _say(f"{len(items)} quarantined file(s) under "
             f"s3://{settings.bucket}/{settings.quarantine_prefix}")
        for i in items:
            score = "-" if i.quality_score is None else f"{i.quality_score:.2f}"
            _say(f"{i.quarantined_at[:19]:<19} {i.reason[:28]:<28} {i.stage[:9]:<9} "
                 f"{score:>5}  {i.key}")
        return 0
    if args.q_command == "show":
        qkey = q.resolve_key(storage, settings, args.key)
        try:
            reason = q.load_reason(storage, settings, qkey)
        except KeyError:
            _say(f"etl-engine quarantine show: no reason file for {args.key!r}", err=True)
            return ExitCode.FAILURES
        if args.inspect or args.html:  # the quarantined copy through the CPU stages
            return inspect_file.quarantined(storage, settings, qkey, reason, args)
        _say_json(reason if args.reveal else q.masked(reason), indent=not args.json)
        return ExitCode.OK
    return _release(settings, storage, args)


def _release(settings: Settings, storage: Storage, args: argparse.Namespace) -> int:
    """``quarantine release``: only against the fleet's dedup store (see ``_fleet_dedup``)."""
    from etl_engine.ops import quarantine as q

    settings = _fleet_dedup(settings, args.dedup_url)
    results = asyncio.run(q.release(settings, storage, args.keys, timeout_s=args.timeout,
                                    check_dedup=not args.skip_dedup_check))
    if args.json:
        _say_json([{"key": r.key, "status": r.status, "detail": r.detail} for r in results])
    for r in [] if args.json else results:
        _say(f"{r.status}: {r.key}" + (f"  ({r.detail})" if r.detail else ""))
    released = all(r.status is q.ReleaseStatus.RELEASED for r in results)
    return ExitCode.OK if released else ExitCode.FAILURES


def _fleet_dedup(settings: Settings, dedup_url: str) -> Settings:
    """Release clears the input's done-marker: in any store but the workers' it would clear
    nothing, and they would answer ``duplicate``. So the store must be named (unset, the
    code's default is a local SQLite file no worker of a fleet reads); that it is the
    workers' store is then checked per key by asking it (``quarantine.known_to_store``)."""
    if dedup_url:
        try:
            return _settings(dedup_url=dedup_url)
        except ConfigError as exc:
            raise ConfigError(f"--dedup-url: {exc}") from None
    default = type(settings).model_fields["dedup_url"].default
    if "dedup_url" not in settings.model_fields_set or settings.dedup_url == default:
        raise ConfigError(
            f"ETL_DEDUP_URL is not set (or is the default local {default}): set it to the "
            "workers' dedup store, or pass --dedup-url URL. Release clears the input's "
            "done-marker there; in another store it clears nothing and the workers answer "
            "duplicate.")
    return settings


# --- config -----------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings()
    except ConfigError as exc:
        if not args.json:
            raise  # failures.guarded: one line, exit 78
        _say_json({"ok": False, "errors": _config_errors(exc), "env_file": _env_file})
        failures.say("config check", str(exc))
        return ExitCode.CONFIG
    if args.json:
        _say_json({"ok": True, "settings": settings.masked(), "env_file": _env_file})
        return ExitCode.OK
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    print("configuration OK", file=sys.stderr)
    return ExitCode.OK


def _config_errors(exc: ConfigError) -> list[dict[str, str | None]]:
    """Each problem as {"setting", "message"}: from the validation error behind ``exc``
    when there is one (``load_settings`` raises it ``from None``; it is still the
    context), else the whole message."""
    from pydantic import ValidationError

    cause = exc.__context__
    if isinstance(cause, ValidationError):
        return [{"setting": "ETL_" + str(e["loc"][0]).upper() if e.get("loc") else None,
                 "message": str(e.get("msg", "")).removeprefix("Value error, ")}
                for e in cause.errors()]
    return [{"setting": None, "message": str(exc)}]


# --- completion -------------------------------------------------------------------------
def cmd_completion(args: argparse.Namespace) -> int:
    from etl_engine.ops.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return ExitCode.OK


# --- the parser -------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (``argparse.ArgumentDefaultsHelpFormatter``, but not
    for flags and options without one); descriptions and epilogs keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default:" in text or "(default " in text
                or default is None or default is False  # (0 is a default worth showing)
                or (isinstance(default, str | list) and not default)
                or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``HelpFormatter`` for every (sub)command, and the plugin commands' too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _json_argument(p: argparse.ArgumentParser, what: str = "the report") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as JSON on stdout (for scripts)")


def _reveal_argument(p: argparse.ArgumentParser) -> None:
    """User ids and the user part of keys are pseudonyms unless the operator needs them."""
    p.add_argument("--reveal", "--raw", dest="reveal", action="store_true",
                   help="show user ids and object keys unmasked (personal data: only when "
                   "needed; terminal control characters stay escaped)")


def build_parser() -> argparse.ArgumentParser:
    """Commands are added in the order ``--help`` lists them."""
    p = Parser(prog="etl-engine", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"etl-engine {__version__}")
    p.add_argument("--env-file", metavar="PATH", default=None,
                   help="dotenv file read beneath the environment (a variable set in the "
                   "environment wins); it must exist, '' reads none (default: "
                   "$ETL_ENV_FILE, else .env in the working directory if there is one)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    _add_worker_parser(sub)
    _add_publish_parser(sub)
    _add_load_samples_parser(sub)
    _add_compact_parser(sub)
    data_commands.add_parsers(sub)
    _add_status_parser(sub)
    _add_dlq_parser(sub)
    _add_quarantine_parser(sub)
    inspect_file.add_parser(sub)
    _add_config_parser(sub)
    _add_completion_parser(sub)
    _plugin_commands(sub)
    return p


# Flags the settings take as any string, but a worker cannot run with empty.
_NON_EMPTY_FLAGS = {"queue"}


def _setting_type(name: str) -> Callable[[str], Any]:
    """Parse a flag as its setting: its type, constraints and field validators, as the
    variable would be (a bad value: usage error 2, naming the flag)."""
    def parse(text: str) -> Any:
        from pydantic import ValidationError

        if name in _NON_EMPTY_FLAGS and not text.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        scratch = Settings.model_construct()  # defaults, unvalidated: only `name` is checked
        try:
            Settings.__pydantic_validator__.validate_assignment(scratch, name, text)
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise argparse.ArgumentTypeError(message) from None
        return getattr(scratch, name)
    parse.__name__ = f"ETL_{name.upper()}"  # argparse: "invalid ETL_CONCURRENCY value"
    return parse


def _add_worker_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="consume and process messages (one worker process)",
                       description="Consume the work queue and process each announced "
                       "upload.\nEach flag overrides its ETL_ variable (from ETL_CONFIG_FILE, "
                       "the environment or .env);\nthe rest of the configuration is ETL_* "
                       "only (.env.template lists it).")
    fields = Settings.model_fields
    flags = {
        "--concurrency": ("N", None, "messages in flight (the prefetch follows)"),
        "--queue": ("NAME", None, "work queue to consume"),
        "--log-level": ("LEVEL", ["DEBUG", "INFO", "WARNING", "ERROR"], "log level"),
        "--log-format": ("FORMAT", ["json", "console"], "json lines, or console for a person"),
        "--sidecar-port": ("PORT", None, "port of /live /ready /health /metrics (0: any)"),
        "--dedup-url": ("URL", None, "dedup store: redis://, rediss://, unix:// or sqlite:///"),
    }
    for flag, (metavar, choices, text) in flags.items():
        name = WORKER_FLAGS[flag]
        shown = f"{{{','.join(choices)}}}" if choices else metavar
        w.add_argument(flag, dest=name, metavar=shown, type=_setting_type(name),
                       choices=choices, help=f"{text} (default: ETL_{name.upper()}, "
                       f"else {fields[name].default})")
    w.add_argument("--check", nargs="?", const="ready", choices=["ready", "live"],
                   metavar="ready|live",
                   help="probe the running worker's sidecar on this host instead of "
                   "starting one: exit 0 if it answers 200, else 1 (for compose and "
                   "Docker health checks; default: ready)")
    w.set_defaults(fn=cmd_worker)


def _record_type(text: str) -> str:
    """A record type, in any case (as the worker accepts it), as its canonical name."""
    from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES

    found = next((t for t in SUPPORTED_RECORD_TYPES if t.lower() == text.lower()), None)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(SUPPORTED_RECORD_TYPES)}")
    return found


def _add_publish_parser(sub: argparse._SubParsersAction) -> None:
    from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES

    pub = sub.add_parser("publish", help="announce an object (optionally uploading it first)")
    pub.add_argument("--record-type", required=True, type=_record_type, metavar="TYPE",
                     help="the file's record type, one of: "
                     + ", ".join(SUPPORTED_RECORD_TYPES) + " (any case)")
    pub.add_argument("--file", metavar="PATH", help="local Avro file to upload under raw/ "
                     "first (give this or --key)")
    pub.add_argument("--key", help="existing object key under raw/ to announce instead")
    pub.add_argument("--bucket", default="", help="bucket of --key (default: ETL_BUCKET)")
    pub.add_argument("--idempotency-key", default="", metavar="KEY",
                     help="override the derived key (workers with ETL_IDEMPOTENCY_SCHEME="
                     "opaque only; default: derived from the user id and the file's hash)")
    pub.add_argument("--user-id", default="demo-user", help="the uploading user's id")
    pub.add_argument("--priority", choices=["low", "normal", "high"], default=None,
                     help="add a priority and route with it (the upload service sends "
                     "none; default: none)")
    pub.add_argument("--run-id", default="", metavar="ID", help="upload as user "
                     "{user-id}-{ID}: fresh idempotency keys for the same file (default: none)")
    _json_argument(pub, "what was published")
    pub.set_defaults(fn=cmd_publish)


def _add_load_samples_parser(sub: argparse._SubParsersAction) -> None:
    load = sub.add_parser("load-samples", help="upload a folder of Avro files and announce each")
    load.add_argument("dir", nargs="?", default=None, metavar="DIR",
                      help="folder of {RecordType}/*.avro (default: the bundled samples)")
    load.add_argument("--wait", action="store_true",
                      help="wait for every file's outcome and print a summary")
    load.add_argument("--timeout", type=_SECONDS, default=120.0, metavar="SECONDS",
                      help="how long --wait waits (0.1-86400)")
    load.add_argument("--run-id", default="", metavar="ID",
                      help="upload as user demo-user-{ID}: fresh idempotency keys "
                      "(default: none, so a second load is all duplicates)")
    load.add_argument("--jobs", "-j", type=_jobs, default=8, metavar="N",
                      help="uploads in flight (1-64)")
    load.add_argument("--allow-failures", action="store_true",
                      help="exit 0 even when files were quarantined or dead-lettered "
                      "(default: exit 1 for them)")
    load.add_argument("--progress-interval", type=_PROGRESS, default=5.0, metavar="SECONDS",
                      help="seconds between progress lines when stderr is not a terminal "
                      "(0.1-3600)")
    _json_argument(load, "the summary and each file's outcome")
    load.set_defaults(fn=cmd_load_samples)


def _bounded(low: float, high: float, *, integer: bool = False) -> Callable[[str], Any]:
    """A number from ``low`` to ``high`` (a bad one: usage error 2 saying the range)."""
    def parse(text: str) -> float | int:
        import math

        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # (NaN fails both)
            shown = (str(int(low)), str(int(high))) if integer else (f"{low:g}", f"{high:g}")
            raise argparse.ArgumentTypeError(f"{text!r} is not a number from {shown[0]} to "
                                             f"{shown[1]}")
        return value
    parse.__name__ = "integer" if integer else "number"
    return parse


# Bounds of the numeric options: a refresh that would spin, a wait that would never end.
_SECONDS = _bounded(0.1, 86400.0)  # --timeout of load-samples and quarantine release
_INTERVAL = _bounded(0.2, 3600.0)  # status --interval
_PROGRESS = _bounded(0.1, 3600.0)  # load-samples --progress-interval
_LIMIT = _bounded(1, 1_000_000, integer=True)  # dlq list --limit


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 64")
    return int(text)


def _month(text: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM")
    return text


def _add_compact_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("compact", help="merge a month's records into one journal per category")
    comp.add_argument("--month", required=True, type=_month, metavar="YYYY-MM",
                      help="the month to compact")
    _json_argument(comp, "the journals written")
    comp.set_defaults(fn=cmd_compact)


def _add_status_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="queue depths, rates and worker figures (live view)")
    st.add_argument("--once", action="store_true", help="print one snapshot and exit")
    st.add_argument("--targets", "--sidecar", dest="targets", action="append", metavar="URL",
                    help="worker sidecar base URLs, comma-separated or repeated (default: "
                    "every sidecar found on 127.0.0.1 in --ports)")
    st.add_argument("--ports", type=_port_range, default=range(8004, 8036),
                    metavar="FIRST-LAST", help="ports searched for sidecars without --targets "
                    "(default: 8004-8035, the native stack's range)")
    st.add_argument("--interval", type=_INTERVAL, default=2.0, metavar="SECONDS",
                    help="refresh period (0.2-3600)")
    _json_argument(st, "each snapshot (one document a line)")
    st.set_defaults(fn=cmd_status)


def _add_dlq_parser(sub: argparse._SubParsersAction) -> None:
    dl = sub.add_parser("dlq", help="inspect and replay dead-lettered messages")
    dl_sub = dl.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dl_list = dl_sub.add_parser("list", help="list (the messages stay in the queue)")
    dl_list.add_argument("--limit", type=_LIMIT, default=1000, metavar="N",
                         help="show at most N messages (1-1000000)")
    _json_argument(dl_list, "the list")
    _reveal_argument(dl_list)
    dl_show = dl_sub.add_parser("show", help="one message: headers and body (user id hashed)")
    dl_show.add_argument("id", help="message id (or sha-... from list)")
    _json_argument(dl_show, "the message on one line (default: indented JSON)")
    _reveal_argument(dl_show)
    dl_replay = dl_sub.add_parser("replay", help="re-publish to the work exchange, attempt reset")
    dl_replay.add_argument("ids", nargs="*", metavar="ID", help="message ids from list")
    dl_replay.add_argument("--all", action="store_true", help="every message in the DLQ")
    _json_argument(dl_replay, "what was replayed, kept and not found")
    dl.set_defaults(fn=cmd_dlq)


def _add_quarantine_parser(sub: argparse._SubParsersAction) -> None:
    qa = sub.add_parser("quarantine", help="inspect and release quarantined files")
    qa_sub = qa.add_subparsers(dest="q_command", required=True, metavar="COMMAND")
    qa_list = qa_sub.add_parser("list", help="quarantined files with their reasons")
    _json_argument(qa_list, "the list")
    _reveal_argument(qa_list)
    qa_show = qa_sub.add_parser("show", help="one reason file (user id hashed)")
    qa_show.add_argument("key", help="quarantine key (with or without the prefix; the "
                         "masked key from list works too)")
    _json_argument(qa_show, "the reason on one line (default: indented JSON)")
    _reveal_argument(qa_show)
    inspect_file.add_show_options(qa_show)
    qa_rel = qa_sub.add_parser("release", help="clear dedup, re-publish, wait for the new "
                               "outcome, then delete the copy (kept if quarantined again)")
    qa_rel.add_argument("keys", nargs="+", metavar="KEY", help="quarantine keys from list")
    qa_rel.add_argument("--timeout", "--wait", dest="timeout", type=_SECONDS, default=120.0,
                        metavar="SECONDS", help="how long to wait for the new outcomes; on "
                        "timeout the quarantine is kept")
    qa_rel.add_argument("--dedup-url", default="", metavar="URL",
                        help="the workers' dedup store (default: ETL_DEDUP_URL, required)")
    qa_rel.add_argument("--skip-dedup-check", action="store_true",
                        help="release even when the dedup store has no record of the input "
                        "(only after the fleet's store was flushed)")
    _json_argument(qa_rel, "each key's result")
    qa.set_defaults(fn=cmd_quarantine)


def _add_config_parser(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = cfg_sub.add_parser("check", help="validate the configuration, print the "
                               "effective settings (secrets masked)")
    _json_argument(check, "the effective settings")
    check.set_defaults(fn=cmd_config)


def _add_completion_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("completion", help="print a shell completion script",
                          description="Print the completion script for SHELL.\n"
                          "  bash: eval \"$(etl-engine completion bash)\"   (in ~/.bashrc)\n"
                          "  zsh:  etl-engine completion zsh > ~/.zfunc/_etl-engine   "
                          "(a folder on $fpath)\n"
                          "  tcsh: eval `etl-engine completion tcsh`")
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell")
    comp.set_defaults(fn=cmd_completion)


def _plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands other installed packages add (the dev tools: generate-samples, bench)."""
    for entry in sorted(entry_points(group="etl_engine.commands"), key=lambda e: e.name):
        try:
            entry.load()(sub)
        except Exception as exc:  # a broken tool must not take the worker down with it
            print(f"etl-engine: command {entry.name!r} unavailable ({entry.value}: "
                  f"{type(exc).__name__}: {exc})", file=sys.stderr)


def _default_samples() -> Path:
    from etl_engine.ops.sample_files import bundled_samples

    return bundled_samples()


def _command_name(args: argparse.Namespace) -> str:
    """``dlq list``, ``worker``...: how messages name the command."""
    sub = next((getattr(args, k) for k in ("dlq_command", "q_command", "config_command",
                                            "dataset_command") if getattr(args, k, None)), "")
    return f"{args.command} {sub}".strip()


def _chosen_env_file(parser: argparse.ArgumentParser, given: str | None) -> str | None:
    """The dotenv file to read: ``--env-file`` (usage error 2 if it is not a file), else
    $ETL_ENV_FILE (configuration error 78 if not), else ``.env`` when there is one."""
    source = "--env-file" if given is not None else "ETL_ENV_FILE"
    if given is None:
        given = os.environ.get("ETL_ENV_FILE")
        if given is None:
            return ".env"  # pydantic-settings reads it if present
    if not given:
        return None
    path = Path(given)
    if path.is_file():
        return given
    why = "is a directory" if path.is_dir() else "does not exist (or cannot be reached)"
    text = f"{source} {given}: {why}; give a dotenv file, or '' for none"
    if source == "--env-file":
        parser.error(text)
    raise ConfigError(text)


def main(argv: list[str] | None = None) -> int:
    global _env_file
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _env_file = _chosen_env_file(parser, args.env_file)
    except ConfigError as exc:
        failures.say(_command_name(args), str(exc))
        return ExitCode.CONFIG
    if args.command != "worker":
        failures.quiet_client_libraries()
    return int(failures.guarded(_command_name(args))(args.fn)(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
