"""``etl-engine inspect FILE.avro``: what a worker would make of one file, with no stack.

The first tool to reach for when a file is quarantined. No broker, S3 or Redis: the file is
read from disk (or, with ``etl-engine quarantine show KEY --inspect``, the quarantined copy
from the bucket) and run through the worker's own CPU stages, ``compute.run_cpu_stages``
(decode, validate, transform), with the limits and domain settings of the environment,
exactly as a worker would run them. Printed:

- the pre-scan's verdict (``avro.scan_container``: codec, records, limits), the writer
  schema against ours (``avro.needs_resolution``, ``schema_check.first_mismatch``) and the
  size against ``ETL_MAX_OBJECT_BYTES`` (a worker refuses a larger object at download);
- the outcome: processed, or quarantined with the reason code and stage;
- the quality report (score, components, reason codes and counts), the statistics, the
  narrative, the warnings and flags, and the training record, as ``transform`` made it.

``--json`` prints one document; ``--html OUT.html`` also writes a one-page report with the
data drawn (``report_html``). Exit status: 0 the file would be processed, 1 it would be
quarantined (or the record type is unknown), 2 usage (no such file, an unknown type).

The record type is the one given, else the one the writer schema names. Without
``--upload-time`` the worker's clock bounds the export times the file may claim, as for a
message without an upload time; ``quarantine show --inspect`` passes the message's.
Nothing here logs: a file's values reach only this command's own output. (The module is
not named ``inspect.py``: run as a script from this folder, that name would shadow the
standard library's ``inspect``, which ``dataclasses`` imports.)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when the command runs: `etl-engine --help` stays light
    from etl_engine.adapters.storage import Storage
    from etl_engine.domain.model import DomainConfig, Lineage, ValidationReport
    from etl_engine.runtime.compute import Limits
    from etl_engine.settings import Settings

EXIT_PROCESSED, EXIT_QUARANTINED, EXIT_USAGE = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``etl-engine inspect`` (``cli.build_parser`` calls this)."""
    p = sub.add_parser("inspect", help="run the worker's CPU stages on a local file, no "
                       "stack: pre-scan, schema, quality, statistics, narrative, record",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("file", metavar="FILE.avro", help="a local Avro export")
    _options(p)
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON document on stdout (for scripts)")
    p.set_defaults(fn=cmd_inspect)


def add_show_options(p: argparse.ArgumentParser) -> None:
    """``quarantine show KEY --inspect``: the same report on the quarantined copy."""
    p.add_argument("--inspect", action="store_true",
                   help="run the worker's CPU stages on the quarantined copy and print "
                   "what inspect prints (with --json: its JSON document)")
    _options(p)


def _options(p: argparse.ArgumentParser) -> None:
    from etl_engine.domain import registry

    p.add_argument("--record-type", default=None, type=_record_type_arg, metavar="TYPE",
                   help="read the file as this type, one of: " + ", ".join(registry.names())
                   + " (default: the type the writer schema names; for a quarantined copy "
                   "the message's)")
    p.add_argument("--upload-time", default=None, type=_iso_arg, metavar="ISO",
                   help="the message's upload time, which bounds the export times the file "
                   "may claim (default: none, the clock bounds them; for a quarantined copy "
                   "the message's)")
    p.add_argument("--html", default=None, metavar="OUT.html",
                   help="also write a one-page HTML report with the data drawn (default: "
                   "none)")


def _record_type_arg(text: str) -> str:
    """A type in any spelling the worker accepts, as its canonical name."""
    from etl_engine.domain import registry

    spec = registry.find(registry.canonical_name(text))
    if spec is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(registry.names())}")
    return spec.name


def _iso_arg(text: str) -> str:
    try:
        _epoch_ms(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date-time") from None
    return text


def cmd_inspect(args: argparse.Namespace) -> int:
    from etl_engine.ops import cli

    # The limits and domain settings of the environment, validated as for a worker; the
    # production-only checks (keys, TLS) do not apply to a command that talks to no service
    # and writes nothing keyed.
    return main(args, cli._settings(env="development"))


@dataclass(frozen=True, slots=True)
class Source:
    """One file to inspect and what is known about it besides its bytes."""

    name: str
    data: bytes
    record_type: str | None = None
    record_type_from: str = "option"
    upload_time: str | None = None
    idempotency_key: str | None = None


def _limits(settings: Settings) -> Limits:
    from etl_engine.runtime.compute import Limits

    return Limits(settings.max_records, settings.max_decompressed_bytes)


def domain_config(settings: Settings) -> DomainConfig:
    """The domain settings a worker with ``settings`` runs the stages with (as the
    pipeline builds them)."""
    from etl_engine import __version__
    from etl_engine.domain.model import DomainConfig

    return DomainConfig(quality_threshold=settings.quality_threshold,
                        max_future_skew_ms=settings.max_future_skew_s * 1000,
                        origin_priority=tuple(settings.origin_priority_list),
                        processor_version=__version__)


def _writer_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    name, ns = str(schema.get("name", "")), schema.get("namespace")
    return name if "." in name or not ns else f"{ns}.{name}"


def _prescan(data: bytes, limits: Limits) -> tuple[dict[str, Any], Any]:
    """The pre-scan's verdict (structure and limits), and the writer schema if it read."""
    from etl_engine.domain import avro
    from etl_engine.errors import PermanentError

    try:
        scan = avro.scan_container(data, max_records=limits.max_records,
                                   max_decompressed_bytes=limits.max_decompressed_bytes)
    except PermanentError as exc:
        return {"passed": False, "reason": exc.reason, "detail": exc.detail}, None
    return {"passed": True, "codec": scan.codec, "records": scan.records,
            "writer_schema": _writer_name(scan.writer)}, scan


def _schema(scan: Any, record_type: str) -> dict[str, Any]:
    """The writer schema against our reader schema for ``record_type``."""
    from etl_engine.domain import avro, schema_check
    from etl_engine.domain.record_types import reader_schema

    reader = reader_schema(record_type)
    names = [str(reader.get("name", "")), *(reader.get("aliases") or [])]
    name_ok = _writer_name(scan.writer).rsplit(".", 1)[-1] in {
        str(n).rsplit(".", 1)[-1] for n in names}
    identical = not avro.needs_resolution(scan.writer, scan.raw_schema, reader)
    mismatch = None if identical else schema_check.first_mismatch(scan.writer, reader)
    verdict = ("mismatch" if not name_ok or mismatch is not None
               else "identical" if identical else "resolvable")
    return {"writer": _writer_name(scan.writer), "reader": _writer_name(reader),
            "name_matches": name_ok, "identical": identical, "first_mismatch": mismatch,
            "verdict": verdict}


def _record_type(src: Source, scan: Any) -> tuple[str | None, str | None]:
    """(record type, where it came from): the one given, else the writer schema's."""
    from etl_engine.domain.record_types import record_type_from_writer_name

    if src.record_type:
        return src.record_type, src.record_type_from
    if scan is None:
        return None, None
    found = record_type_from_writer_name(_writer_name(scan.writer))
    return (found, "writer schema") if found else (None, None)


def _epoch_ms(iso: str | None) -> int | None:
    if not iso:
        return None
    when = datetime.fromisoformat(iso)
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def _lineage(src: Source, record_type: str, lineage_key: bytes) -> Lineage:
    """What the stages know of the message: the type, the upload time, and the key that
    seeds the narrative's wording (the message's, else the file's SHA-256). The record's
    source_id and record_id are computed as the worker would (under ETL_LINEAGE_KEY, empty
    when unset); there is no user, so no subject_id."""
    from dataclasses import replace

    from etl_engine.domain.lineage import pseudonymous

    key = src.idempotency_key or hashlib.sha256(src.data).hexdigest()
    lineage = pseudonymous(lineage_key, bucket="", key=src.name, record_type=record_type,
                           idempotency_key=key, user_id="",
                           upload_timestamp_utc=src.upload_time)
    return replace(lineage, subject_id=None)


def _stages(src: Source, record_type: str, settings: Settings,
            processed_at: datetime) -> dict[str, Any]:
    """The worker's CPU stages over the file: the outcome, the report and the record."""
    from etl_engine.errors import PermanentError
    from etl_engine.runtime.compute import run_cpu_stages

    lineage = _lineage(src, record_type, settings.lineage_key.get_secret_value().encode())
    try:
        cpu = run_cpu_stages(src.data, lineage, _limits(settings),
                             domain_config(settings), processed_at)
    except PermanentError as exc:
        return {"outcome": {"kind": "quarantined", "reason": exc.reason,
                            "stage": exc.stage or "decode", "detail": exc.detail}}
    except MemoryError:
        return {"outcome": {"kind": "quarantined", "reason": "resource_limit_exceeded",
                            "stage": "decode", "detail": ""}}
    out: dict[str, Any] = {"quality": cpu.report,
                           "timings_ms": {k: round(v * 1000, 2) for k, v in cpu.timings.items()}}
    if cpu.output is None:
        out["outcome"] = {"kind": "quarantined", "reason": cpu.quarantine_reason,
                          "stage": "validate", "detail": ""}
        return out
    out["outcome"] = {"kind": "processed", "reason": None, "stage": None, "detail": "",
                      "category": cpu.output.category,
                      "period_date": cpu.output.period_date.isoformat()}
    out["training_record"] = cpu.output.record
    return out


def flags(record: dict[str, Any] | None) -> list[str]:
    """What the record says to be careful about: its warnings, and the statistics that are
    flagged true (``partial``, ``gmi_insufficient_data``, ...)."""
    meta = (record or {}).get("metadata") or {}
    stats = meta.get("statistics") or {}
    found = [k for k, v in stats.items() if v is True]
    if meta.get("partial") is True and "partial" not in found:
        found.insert(0, "partial")
    return found


def inspect_source(src: Source, settings: Settings,
                   processed_at: datetime | None = None) -> dict[str, Any]:
    """Everything ``inspect`` reports about one file, as one JSON-able document."""
    when = processed_at or datetime.now(UTC)
    limits = _limits(settings)
    doc: dict[str, Any] = {
        "file": {"name": src.name, "size_bytes": len(src.data),
                 "sha256": hashlib.sha256(src.data).hexdigest()},
        "size_check": {"max_object_bytes": settings.max_object_bytes,
                       "passed": len(src.data) <= settings.max_object_bytes},
    }
    doc["prescan"], scan = _prescan(src.data, limits)
    record_type, origin = _record_type(src, scan)
    doc["record_type"], doc["record_type_from"] = record_type, origin
    doc["schema"] = _schema(scan, record_type) if scan is not None and record_type else None
    if record_type is None and not doc["prescan"]["passed"]:
        # the stages begin with this pre-scan: whatever the type, they refuse it so
        doc["outcome"] = {"kind": "quarantined", "reason": doc["prescan"]["reason"],
                          "stage": "decode", "detail": doc["prescan"]["detail"]}
    elif record_type is None:
        doc["outcome"] = {"kind": "not_run", "reason": "unknown_record_type", "stage": None,
                          "detail": "the writer schema names no type we know: pass "
                          "--record-type"}
    else:
        doc.update(_stages(src, record_type, settings, when))
    if not doc["size_check"]["passed"]:  # refused at download, before the stages
        doc["stages_outcome"] = doc["outcome"]
        doc["outcome"] = {"kind": "quarantined", "reason": "object_too_large",
                          "stage": "download", "detail": "over ETL_MAX_OBJECT_BYTES; "
                          "stages_outcome: what the stages make of it"}
    doc["flags"] = flags(doc.get("training_record"))
    return doc


def kept_records(src: Source, record_type: str, settings: Settings,
                 processed_at: datetime) -> ValidationReport:
    """The records validation keeps, for drawing: the stages' decode and validate steps
    again, into the type's column store (a long series stays typed arrays)."""
    from etl_engine.domain import avro, validation
    from etl_engine.domain.record_types import reader_schema
    from etl_engine.domain.transform import column_sink

    limits = _limits(settings)
    stream = avro.decode_stream(src.data, record_type, reader_schema(record_type),
                                max_records=limits.max_records,
                                max_decompressed_bytes=limits.max_decompressed_bytes)
    return validation.validate(stream, now_ms=int(processed_at.timestamp() * 1000),
                               config=domain_config(settings),
                               sink=column_sink(record_type),
                               upload_ms=_epoch_ms(src.upload_time))


def write_html(src: Source, doc: dict[str, Any], settings: Settings, out: Path,
               processed_at: datetime) -> None:
    """The one-page report: the drawings need the kept records (none if the stages
    refused the file before validation)."""
    from etl_engine.errors import PermanentError
    from etl_engine.ops import report_html

    kept = None
    if doc.get("quality") and doc["record_type"]:
        try:
            kept = kept_records(src, doc["record_type"], settings, processed_at)
        except (PermanentError, MemoryError):
            kept = None
    out.write_text(report_html.render(doc, kept), encoding="utf-8")


# --- output -------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    return str(value)


def tree_lines(value: Any, indent: int = 2) -> list[str]:
    """A nested document as indented ``key: value`` lines (lists of mappings as items)."""
    pad = " " * indent
    lines: list[str] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        head = f"{pad}{k}:" if isinstance(value, dict) else f"{pad}-"
        if isinstance(v, dict | list) and v and any(isinstance(x, dict | list)
                                                    for x in (v.values() if isinstance(v, dict)
                                                              else v)):
            lines.append(head)
            lines += tree_lines(v, indent + 2)
        elif isinstance(v, dict):
            inner = ", ".join(f"{a}={_fmt(b)}" for a, b in v.items())
            lines.append(f"{head} {inner or '{}'}")
        elif isinstance(v, list):
            lines.append(f"{head} {', '.join(map(_fmt, v)) or '[]'}")
        else:
            lines.append(f"{head} {_fmt(v)}")
    return lines


TYPE_FROM = {"option": "given with --record-type", "writer schema": "named by the writer "
             "schema", "message": "from the quarantined message"}


def _head_lines(doc: dict[str, Any]) -> list[str]:
    f, pre, sch = doc["file"], doc["prescan"], doc["schema"]
    rt = doc["record_type"] or "unknown"
    lines = [f"file         {f['name']}  ({f['size_bytes']:,} bytes, sha256 {f['sha256'][:16]})",
             f"record type  {rt}" + (f"  ({TYPE_FROM[doc['record_type_from']]})"
                                     if doc["record_type_from"] else "")]
    if pre["passed"]:
        lines.append(f"pre-scan     passed: codec {pre['codec']}, {pre['records']:,} records, "
                     f"writer schema {pre['writer_schema']}")
    else:
        detail = f" ({pre['detail']})" if pre.get("detail") else ""
        lines.append(f"pre-scan     refused: {pre['reason']}{detail}")
    if sch:
        say = {"identical": "identical to ours (read without resolution)",
               "resolvable": "differs from ours, resolvable (read with resolution)",
               "mismatch": f"does not match ours: first field that breaks it "
                           f"{sch['first_mismatch']}"}[sch["verdict"]]
        if not sch["name_matches"]:
            say = f"names another record ({sch['writer']}) than ours ({sch['reader']})"
        lines.append(f"schema       {say}")
    size = doc["size_check"]
    lines.append(f"size         {'within' if size['passed'] else 'OVER'} ETL_MAX_OBJECT_BYTES "
                 f"({size['max_object_bytes']:,})")
    return lines


def _outcome_lines(doc: dict[str, Any]) -> list[str]:
    o = doc["outcome"]
    if o["kind"] == "processed":
        lines = [f"outcome      PROCESSED: training category {o['category']}, period date "
                 f"{o['period_date']}"]
    elif o["kind"] == "quarantined":
        detail = f" ({o['detail']})" if o.get("detail") else ""
        lines = [f"outcome      QUARANTINED: {o['reason']} at stage {o['stage']}{detail}"]
    else:
        lines = [f"outcome      NOT RUN: {o['reason']} ({o['detail']})"]
    q = doc.get("quality")
    if q:
        comps = ", ".join(f"{k} {v:.3f}" for k, v in q["components"].items())
        lines.append(f"quality      score {q['quality_score']:.3f} ({comps})")
        lines.append(f"records      {q['total_records']:,} read, {q['valid_records']:,} kept, "
                     f"{q['in_progress_records']:,} still in progress at export")
        issues = ", ".join(f"{k} x{n:,}" for k, n in q["issue_counts"].items())
        lines.append(f"reason codes {issues or 'none'}")
    return lines


def human_lines(doc: dict[str, Any]) -> list[str]:
    """The report as text for a terminal (the caller makes it terminal-safe)."""
    lines = _head_lines(doc) + _outcome_lines(doc)
    record = doc.get("training_record")
    if not record:
        return lines
    meta = record.get("metadata") or {}
    lines.append(f"warnings     {', '.join(meta.get('warnings') or []) or 'none'}")
    lines.append(f"flags        {', '.join(doc['flags']) or 'none'}")
    lines += ["", "statistics", *tree_lines(meta.get("statistics") or {}), "", "narrative"]
    for label, key in (("Q: ", "instruction"), ("A: ", "output")):
        lines += textwrap.wrap(str(record.get(key, "")), 96, initial_indent="  " + label,
                               subsequent_indent="     ")
    import orjson

    lines += ["", "training record (the JSONL line a worker would write)",
              orjson.dumps(record).decode()]
    return lines


def emit(doc: dict[str, Any], *, as_json: bool) -> None:
    """Print the report: publisher-controlled text never reaches the terminal raw."""
    import orjson

    from etl_engine.ops.display import safe, safe_data

    if as_json:
        print(orjson.dumps(safe_data(doc), option=orjson.OPT_INDENT_2).decode())
        return
    for line in human_lines(doc):
        print(safe(line))


def exit_code(doc: dict[str, Any]) -> int:
    return EXIT_PROCESSED if doc["outcome"]["kind"] == "processed" else EXIT_QUARANTINED


def check_html_target(path: str) -> None:
    """``--html OUT.html`` before anything runs: a file that can be created or replaced,
    else one line and exit 2 (``failures.UsageError``), not a traceback at the end."""
    from etl_engine.ops.failures import UsageError

    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    why = ("is a directory" if out.is_dir()
           else f"its folder {parent} does not exist" if not parent.is_dir()
           else "is not writable" if out.exists() and not os.access(out, os.W_OK)
           else f"its folder {parent} is not writable"
           if not out.exists() and not os.access(parent, os.W_OK | os.X_OK)
           else "")
    if why:
        raise UsageError(f"--html {path}: {why}")


def report(src: Source, settings: Settings, args: argparse.Namespace) -> int:
    """Inspect, print, and write the HTML report if asked; the exit status."""
    from etl_engine.ops.failures import UsageError

    when = datetime.now(UTC)
    doc = inspect_source(src, settings, when)
    emit(doc, as_json=args.json)
    if args.html:
        try:
            write_html(src, doc, settings, Path(args.html), when)
        except OSError as exc:  # changed since check_html_target, or a full disk
            raise UsageError(f"--html {args.html}: cannot write it "
                             f"({exc.strerror or type(exc).__name__})") from None
        print(f"report written to {args.html}", file=sys.stderr)
    return exit_code(doc)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``etl-engine inspect FILE.avro [--record-type T] [--json] [--html OUT.html]``."""
    if args.html:
        check_html_target(args.html)
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"etl-engine inspect: cannot read {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    src = Source(name=path.name, data=data, record_type=args.record_type,
                 upload_time=args.upload_time)
    return report(src, settings, args)


def quarantined(storage: Storage, settings: Settings, qkey: str, reason: dict[str, Any],
                args: argparse.Namespace) -> int:
    """``quarantine show KEY --inspect``: the quarantined copy, read as the worker read it
    (the message's record type, upload time and idempotency key)."""
    from etl_engine.errors import EtlError
    from etl_engine.ops import display

    found = reason.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        data = storage.get(settings.bucket, qkey)
    except EtlError as exc:
        if exc.reason != "object_missing":  # S3 refused or failed: ops.failures says it
            raise
        shown = qkey if args.reveal else display.mask({"key": qkey},
                                                      display.user_ids_in(reason))["key"]
        print(display.safe(f"etl-engine quarantine show: no quarantined copy at {shown} "
                           "(the raw file was not copied)"), file=sys.stderr)
        return EXIT_QUARANTINED
    users = display.user_ids_in(reason)
    name = qkey if args.reveal else str(display.mask({"key": qkey}, users)["key"])
    from_message = None
    with contextlib.suppress(argparse.ArgumentTypeError):
        from_message = _record_type_arg(str(message.get("record_type") or ""))
    src = Source(name=name, data=data, record_type=args.record_type or from_message,
                 record_type_from="option" if args.record_type else "message",
                 upload_time=args.upload_time or message.get("upload_timestamp_utc"),
                 idempotency_key=message.get("idempotency_key"))
    return report(src, settings, args)
