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
from pathlib import Path

from etl_engine import __version__
from etl_engine.settings import ConfigError, Settings, load_settings


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
            from etl_engine import telemetry

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
    from etl_engine import logs, telemetry
    from etl_engine.worker import Worker

    s = _settings()
    logs.configure(s.log_level, s.log_format, user_hash_key=s.user_id_hash_key.get_secret_value())
    telemetry.configure(s.otlp_endpoint, "etl-worker", instance_id=s.effective_worker_id)

    async def main() -> None:
        worker = Worker(s)
        await worker.run()

    try:
        asyncio.run(main())
    finally:
        telemetry.shutdown()
    return 0


# --- publish ----------------------------------------------------------------------------
@_traced("etl-engine publish")
def cmd_publish(args: argparse.Namespace) -> int:
    from etl_engine.publisher import Publisher, Upload, upload_file
    from etl_engine.storage import Storage, make_client

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
        head = storage.client.head_object(Bucket=args.bucket or s.bucket, Key=args.key)
        up = Upload(args.record_type, args.bucket or s.bucket, args.key,
                    int(head["ContentLength"]), "", args.idempotency_key or args.key,
                    str(uuid.uuid4()), user_id=args.user_id)
    body = up.message()
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    if not body["content_hash"]:
        body.pop("content_hash")
    body["priority"] = args.priority

    async def main() -> None:
        async with Publisher(s) as pub:
            await pub.publish(body)

    asyncio.run(main())
    print(f"published message_id={up.message_id} key={up.key}")
    return 0


# --- samples ----------------------------------------------------------------------------
def cmd_generate_samples(args: argparse.Namespace) -> int:
    from etl_engine.samples import generate_samples

    paths = generate_samples(Path(args.out), args.seed, bad=not args.no_bad)
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


@_traced("etl-engine load-samples")
def cmd_load_samples(args: argparse.Namespace) -> int:
    from etl_engine.publisher import Publisher, upload_file, wait_for_outcomes
    from etl_engine.samples import iter_sample_files
    from etl_engine.storage import Storage, make_client

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

    async def main() -> tuple[dict[str, str], float]:
        async with Publisher(s) as pub:
            await pub.publish_many([u.message() for u in uploads])
        _progress("published", len(uploads), len(uploads))
        print(file=sys.stderr)
        if not args.wait:
            return {}, 0.0
        return await wait_for_outcomes(
            s, [u.message_id for u in uploads], timeout_s=args.timeout,
            on_progress=lambda n: _progress("settled", n, len(uploads)),
        )

    outcomes, _ = asyncio.run(main())
    if not args.wait:
        print(f"published {len(uploads)} messages (run id {run_id or '-'})")
        return 0
    print(file=sys.stderr)
    elapsed = time.monotonic() - start
    counts = Counter(outcomes.values())
    pending = len(uploads) - len(outcomes)
    rows = [
        ("messages", len(uploads)),
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
    from etl_engine.compact import compact_month
    from etl_engine.storage import Storage, make_client

    s = _settings()
    try:
        done = compact_month(Storage(make_client(s)), s, args.month)
    except ValueError as exc:
        print(f"etl-engine compact: {exc}", file=sys.stderr)
        return 2
    for r in done:
        print(f"{r.category:<24} {r.records:>7} records  {r.bytes:>10} bytes  {r.key}")
    if not done:
        print(f"no training records for {args.month}")
    return 0


# --- config -----------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    s = _settings()
    for name, value in s.masked().items():
        print(f"{name}={value}")
    print("configuration OK", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etl-engine", description=__doc__)
    p.add_argument("--version", action="version", version=f"etl-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="consume and process messages").set_defaults(fn=cmd_worker)

    pub = sub.add_parser("publish", help="announce an object (optionally uploading it first)")
    pub.add_argument("--record-type", required=True)
    pub.add_argument("--file", help="local Avro file to upload under raw/ first")
    pub.add_argument("--key", help="existing object key (when not uploading)")
    pub.add_argument("--bucket", default="")
    pub.add_argument("--idempotency-key", default="")
    pub.add_argument("--user-id", default="demo-user")
    pub.add_argument("--priority", choices=["low", "normal", "high"], default="normal")
    pub.add_argument("--run-id", default="")
    pub.set_defaults(fn=cmd_publish)

    load = sub.add_parser("load-samples", help="upload a folder of Avro files and announce each")
    load.add_argument("dir", nargs="?", default=str(_default_samples()))
    load.add_argument("--wait", action="store_true", help="wait and print a summary")
    load.add_argument("--timeout", type=float, default=120.0)
    load.add_argument("--run-id", default="", help="prefix file names: fresh idempotency keys")
    load.set_defaults(fn=cmd_load_samples)

    gen = sub.add_parser("generate-samples", help="write realistic sample Avro files")
    gen.add_argument("--out", required=True)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--no-bad", action="store_true", help="skip the deliberately bad files")
    gen.set_defaults(fn=cmd_generate_samples)

    comp = sub.add_parser("compact", help="merge a month's records into one journal per category")
    comp.add_argument("--month", required=True, help="YYYY-MM")
    comp.set_defaults(fn=cmd_compact)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("check", help="validate the environment, print effective settings") \
        .set_defaults(fn=cmd_config)
    return p


def _default_samples() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "samples"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
