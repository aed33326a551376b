"""``etl-engine`` command line: the worker and the operator tools."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from etl_engine import __version__
from etl_engine.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # imported when a command runs: `etl-engine --help` stays light
    from etl_engine.adapters.storage import Storage


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"etl-engine: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


Command = Callable[[argparse.Namespace], int]


def _traced(name: str) -> Callable[[Command], Command]:
    """Run a publishing command in one root span; its messages carry the traceparent."""
    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            from etl_engine.observability import telemetry

            s = _settings()
            telemetry.configure(s.otlp_endpoint, "etl-engine-cli")
            try:
                with telemetry.span(name):
                    return fn(args)
            finally:
                telemetry.shutdown()  # flush before exit
        return run
    return wrap


# --- worker -----------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from etl_engine.runtime.worker import serve

    return serve(_settings())


# --- publish ----------------------------------------------------------------------------
@_traced("etl-engine publish")
def cmd_publish(args: argparse.Namespace) -> int:
    from etl_engine.adapters.publisher import Publisher, describe_upload, upload_file
    from etl_engine.adapters.storage import Storage, make_client

    s = _settings()
    storage = Storage(make_client(s))
    if args.file:
        storage.ensure_bucket(s.bucket)
        up = upload_file(storage, s, args.record_type, Path(args.file), run_id=args.run_id,
                         user_id=args.user_id)
    else:
        if not args.key:
            print("etl-engine publish: give --file PATH or --key KEY", file=sys.stderr)
            return 2
        # The upload service's message names the file's hash: read the object for it.
        obj = storage.client.get_object(Bucket=args.bucket or s.bucket, Key=args.key)
        up = describe_upload(s, args.record_type, args.key, obj["Body"].read(),
                             args.user_id, bucket=args.bucket or s.bucket)
    body = up.message()
    if args.idempotency_key:  # only accepted by workers with ETL_IDEMPOTENCY_SCHEME=opaque
        body["idempotency_key"] = args.idempotency_key
    if args.priority:  # not part of the upload service's message
        body["priority"] = args.priority

    async def main() -> None:
        async with Publisher(s) as pub:
            await pub.publish(body)

    asyncio.run(main())
    print(f"published message_id={up.message_id} key={up.key}")
    return 0


# --- samples ----------------------------------------------------------------------------
@_traced("etl-engine load-samples")
def cmd_load_samples(args: argparse.Namespace) -> int:
    from etl_engine.adapters.publisher import Publisher, upload_file, wait_for_outcomes
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops.sample_files import iter_sample_files

    s = _settings()
    directory = Path(args.dir)
    files = iter_sample_files(directory)
    if not files:
        print(f"etl-engine load-samples: no Avro sample files under {directory}",
              file=sys.stderr)
        return 1
    storage = Storage(make_client(s))
    storage.ensure_bucket(s.bucket)
    run_id = args.run_id or ""
    uploads = []
    for i, (record_type, path) in enumerate(files, 1):
        uploads.append(upload_file(storage, s, record_type, path, run_id=run_id))
        _progress("uploaded", i, len(files))
    print(file=sys.stderr)
    start = time.monotonic()
    ids = [str(uuid.uuid4()) for _ in uploads]

    async def main() -> tuple[dict[str, str], float]:
        async with Publisher(s) as pub:
            # A fresh AMQP message-id per announcement (as aio-pika gives the upload service):
            # a re-announced file is then counted as this run's duplicate, not as the
            # outcome recorded for the first announcement.
            await pub.publish_many([u.message() for u in uploads], message_ids=ids)
        _progress("published", len(uploads), len(uploads))
        print(file=sys.stderr)
        if not args.wait:
            return {}, 0.0
        return await wait_for_outcomes(
            s, ids, timeout_s=args.timeout,
            on_progress=lambda n: _progress("settled", n, len(uploads)),
        )

    outcomes, _ = asyncio.run(main())
    if not args.wait:
        print(f"published {len(uploads)} messages (run id {run_id or '-'})")
        return 0
    print(file=sys.stderr)
    return _print_summary(outcomes, len(uploads), time.monotonic() - start)


def _print_summary(outcomes: dict[str, str], sent: int, elapsed: float) -> int:
    """The load's outcome table; 1 while some message has not settled."""
    counts = Counter(outcomes.values())
    pending = sent - len(outcomes)
    rows = [
        ("messages", sent),
        ("processed", counts.get("processed", 0)),
        ("duplicates", counts.get("duplicate", 0)),
        ("quarantined", counts.get("quarantined", 0)),
        ("dead-lettered", counts.get("dead_letter", 0)),
        ("not settled", pending),
        ("elapsed", f"{elapsed:.2f} s"),
        ("throughput", f"{len(outcomes) / elapsed:.1f} msg/s" if elapsed else "-"),
    ]
    width = max(len(r[0]) for r in rows)
    print("summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0 if pending == 0 else 1


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r{label:>10} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)


# --- compact ---------------------------------------------------------------------------
def cmd_compact(args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops.compact import CompactionContended, compact_month, legacy_journals
    from etl_engine.ops.conditional import Unsupported

    s = _settings()
    storage = Storage(make_client(s))
    try:
        done = compact_month(storage, s, args.month)
    except ValueError as exc:
        print(f"etl-engine compact: {exc}", file=sys.stderr)
        return 2
    except (CompactionContended, Unsupported) as exc:
        print(f"etl-engine compact: {exc}", file=sys.stderr)
        return 1
    for r in done:
        note = (f"  ({r.superseded} replaced by a later export of the same day)"
                if r.superseded else "")
        print(f"{r.category:<24} {r.records:>7} records  {r.bytes:>10} bytes  "
              f"{r.inputs:>6} inputs  {r.state:<9}  {r.key}{note}")
    if not done:
        print(f"no training records for {args.month}")
    for key in legacy_journals(storage, s, args.month):
        print(f"etl-engine compact: an older journal is still under {s.training_prefix}: {key} "
              f"(a reader of {s.training_prefix} counts its records twice; delete it)",
              file=sys.stderr)
    return 0


# --- status, dead letters, quarantine -----------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from etl_engine.ops.status import LOCAL_SIDECAR, run

    s = _settings()
    return asyncio.run(run(s, args.sidecar or [LOCAL_SIDECAR], once=args.once,
                           interval=args.interval))


def _operator_settings() -> Settings:
    """Settings for a tool that shows user data: pseudonyms keyed like the worker's logs."""
    from etl_engine.observability import logs

    s = _settings()
    logs.configure(s.log_level, s.log_format, user_hash_key=s.user_id_hash_key.get_secret_value())
    return s


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

    s = _operator_settings()
    if args.dlq_command == "list":
        items, total = asyncio.run(dlq.list_dead_letters(s, limit=args.limit,
                                                         reveal=args.reveal))
        if args.json:
            _say_json(items)
            return 0
        _say(f"{total} message(s) in {s.dlq_name}" + (f", showing {len(items)}"
                                                       if len(items) < total else ""))
        if items:
            _say(f"{'id':<38} {'reason':<36} {'stage':<9} {'att':>3} {'age':>5}  routing key")
        for i in items:
            _say(f"{i.id:<38} {i.reason[:36]:<36} {i.stage[:9]:<9} {i.attempts:>3} "
                 f"{dlq.age(i.dead_lettered_at):>5}  {i.routing_key}")
        return 0
    if args.dlq_command == "show":
        found = asyncio.run(dlq.show(s, args.id, reveal=args.reveal))
        if found is None:
            _say(f"etl-engine dlq show: no message {args.id!r} in {s.dlq_name}", err=True)
            return 1
        _say_json(found, indent=True)
        return 0
    if not args.all and not args.ids:
        print("etl-engine dlq replay: give message ids or --all", file=sys.stderr)
        return 2
    from etl_engine.adapters.storage import Storage, make_client

    done = asyncio.run(dlq.replay(s, None if args.all else args.ids, Storage(make_client(s))))
    kept = [k for k, rk in done if rk == dlq.KEPT_ROUTE]
    for key, rk in done:
        if rk == dlq.KEPT_ROUTE:
            _say(f"kept {key}: {rk}", err=True)
        else:
            _say(f"replayed {key} -> {s.exchange} {rk}")
    missing = [] if args.all else sorted(set(args.ids) - {k for k, _ in done})
    for key in missing:
        _say(f"not found in {s.dlq_name}: {key}", err=True)
    print(f"{len(done) - len(kept)} message(s) replayed")
    return 1 if missing or kept else 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from etl_engine.adapters.storage import Storage, make_client
    from etl_engine.ops import quarantine as q

    s = _operator_settings()
    storage = Storage(make_client(s))
    if args.q_command == "list":
        items = q.list_quarantined(storage, s, reveal=args.reveal)
        if args.json:
            _say_json(items)
            return 0
        _say(f"{len(items)} quarantined file(s) under s3://{s.bucket}/{s.quarantine_prefix}")
        for i in items:
            score = "-" if i.quality_score is None else f"{i.quality_score:.2f}"
            _say(f"{i.quarantined_at[:19]:<19} {i.reason[:28]:<28} {i.stage[:9]:<9} "
                 f"{score:>5}  {i.key}")
        return 0
    if args.q_command == "show":
        try:
            reason = q.load_reason(storage, s, q.resolve_key(storage, s, args.key))
        except KeyError:
            _say(f"etl-engine quarantine show: no reason file for {args.key!r}", err=True)
            return 1
        _say_json(reason if args.reveal else q.masked(reason), indent=True)
        return 0
    return _release(s, storage, args)


def _release(s: Settings, storage: Storage, args: argparse.Namespace) -> int:
    """``quarantine release``: only against the fleet's dedup store (see ``_fleet_dedup``)."""
    from etl_engine.ops import quarantine as q

    s = _fleet_dedup(s, args.dedup_url)
    results = asyncio.run(q.release(s, storage, args.keys, timeout_s=args.timeout,
                                    check_dedup=not args.skip_dedup_check))
    for r in results:
        _say(f"{r.status}: {r.key}" + (f"  ({r.detail})" if r.detail else ""))
    return 0 if all(r.status is q.ReleaseStatus.RELEASED for r in results) else 1


def _fleet_dedup(s: Settings, dedup_url: str) -> Settings:
    """Release clears the input's done-marker: in any store but the workers' it would clear
    nothing, and they would answer ``duplicate``. So the store must be named (unset, the
    code's default is a local SQLite file no worker of a fleet reads); that it is the
    workers' store is then checked per key by asking it (``quarantine.known_to_store``)."""
    if dedup_url:
        try:
            return load_settings(dedup_url=dedup_url)
        except ConfigError as exc:
            print(f"etl-engine quarantine release: --dedup-url: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    default = type(s).model_fields["dedup_url"].default
    if "dedup_url" not in s.model_fields_set or s.dedup_url == default:
        print("etl-engine quarantine release: ETL_DEDUP_URL is not set (or is the default "
              f"local {default}): set it to the workers' dedup store, or pass --dedup-url URL. "
              "Release clears the input's done-marker there; in another store it clears "
              "nothing and the workers answer duplicate.", file=sys.stderr)
        raise SystemExit(2)
    return s


# --- config -----------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    s = _settings()
    for name, value in s.masked().items():
        print(f"{name}={value}")
    print("configuration OK", file=sys.stderr)
    return 0


def _reveal_argument(p: argparse.ArgumentParser) -> None:
    """User ids and the user part of keys are pseudonyms unless the operator needs them."""
    p.add_argument("--reveal", "--raw", dest="reveal", action="store_true",
                   help="show user ids and object keys unmasked (personal data: only when "
                   "needed; terminal control characters stay escaped)")


def build_parser() -> argparse.ArgumentParser:
    """Commands are added in the order ``--help`` lists them."""
    p = argparse.ArgumentParser(prog="etl-engine", description=__doc__)
    p.add_argument("--version", action="version", version=f"etl-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="consume and process messages").set_defaults(fn=cmd_worker)
    _add_publish_parser(sub)
    _add_load_samples_parser(sub)
    _add_compact_parser(sub)
    _add_status_parser(sub)
    _add_dlq_parser(sub)
    _add_quarantine_parser(sub)
    _add_config_parser(sub)
    _plugin_commands(sub)
    return p


def _add_publish_parser(sub: argparse._SubParsersAction) -> None:
    pub = sub.add_parser("publish", help="announce an object (optionally uploading it first)")
    pub.add_argument("--record-type", required=True)
    pub.add_argument("--file", help="local Avro file to upload under raw/ first")
    pub.add_argument("--key", help="existing object key (when not uploading)")
    pub.add_argument("--bucket", default="")
    pub.add_argument("--idempotency-key", default="",
                     help="override the derived key (workers with ETL_IDEMPOTENCY_SCHEME="
                     "opaque only)")
    pub.add_argument("--user-id", default="demo-user")
    pub.add_argument("--priority", choices=["low", "normal", "high"], default=None,
                     help="add a priority (not sent by the upload service)")
    pub.add_argument("--run-id", default="")
    pub.set_defaults(fn=cmd_publish)


def _add_load_samples_parser(sub: argparse._SubParsersAction) -> None:
    load = sub.add_parser("load-samples", help="upload a folder of Avro files and announce each")
    load.add_argument("dir", nargs="?", default=str(_default_samples()))
    load.add_argument("--wait", action="store_true", help="wait and print a summary")
    load.add_argument("--timeout", type=float, default=120.0)
    load.add_argument("--run-id", default="",
                      help="upload as user demo-user-{ID}: fresh idempotency keys")
    load.set_defaults(fn=cmd_load_samples)


def _add_compact_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("compact", help="merge a month's records into one journal per category")
    comp.add_argument("--month", required=True, help="YYYY-MM")
    comp.set_defaults(fn=cmd_compact)


def _add_status_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="queue depths, rates and worker figures (live view)")
    st.add_argument("--once", action="store_true", help="print one snapshot and exit")
    st.add_argument("--sidecar", action="append", metavar="URL",
                    help="worker sidecar base URL (repeatable; default http://127.0.0.1:8004)")
    st.add_argument("--interval", type=float, default=2.0, help="refresh period, seconds")
    st.set_defaults(fn=cmd_status)


def _add_dlq_parser(sub: argparse._SubParsersAction) -> None:
    dl = sub.add_parser("dlq", help="inspect and replay dead-lettered messages")
    dl_sub = dl.add_subparsers(dest="dlq_command", required=True)
    dl_list = dl_sub.add_parser("list", help="list (the messages stay in the queue)")
    dl_list.add_argument("--limit", type=int, default=1000)
    dl_list.add_argument("--json", action="store_true")
    _reveal_argument(dl_list)
    dl_show = dl_sub.add_parser("show", help="one message: headers and body (user id hashed)")
    dl_show.add_argument("id", help="message id (or sha-... from list)")
    _reveal_argument(dl_show)
    dl_replay = dl_sub.add_parser("replay", help="re-publish to the work exchange, attempt reset")
    dl_replay.add_argument("ids", nargs="*", metavar="ID")
    dl_replay.add_argument("--all", action="store_true")
    dl.set_defaults(fn=cmd_dlq)


def _add_quarantine_parser(sub: argparse._SubParsersAction) -> None:
    qa = sub.add_parser("quarantine", help="inspect and release quarantined files")
    qa_sub = qa.add_subparsers(dest="q_command", required=True)
    qa_list = qa_sub.add_parser("list", help="quarantined files with their reasons")
    qa_list.add_argument("--json", action="store_true")
    _reveal_argument(qa_list)
    qa_show = qa_sub.add_parser("show", help="one reason file (user id hashed)")
    qa_show.add_argument("key", help="quarantine key (with or without the prefix; the "
                         "masked key from list works too)")
    _reveal_argument(qa_show)
    qa_rel = qa_sub.add_parser("release", help="clear dedup, re-publish, wait for the new "
                               "outcome, then delete the copy (kept if quarantined again)")
    qa_rel.add_argument("keys", nargs="+", metavar="KEY")
    qa_rel.add_argument("--timeout", "--wait", dest="timeout", type=float, default=120.0,
                        metavar="SECONDS", help="how long to wait for the new outcomes "
                        "(default 120); on timeout the quarantine is kept")
    qa_rel.add_argument("--dedup-url", default="", metavar="URL",
                        help="the workers' dedup store (default: ETL_DEDUP_URL, required)")
    qa_rel.add_argument("--skip-dedup-check", action="store_true",
                        help="release even when the dedup store has no record of the input "
                        "(only after the fleet's store was flushed)")
    qa.set_defaults(fn=cmd_quarantine)


def _add_config_parser(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("check", help="validate the environment, print effective settings") \
        .set_defaults(fn=cmd_config)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
