"""``etl-engine lineage`` and ``etl-engine dataset card|pull``: the training data's tools,
for operators (lineage) and ML engineers (card, pull)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from etl_engine.settings import Settings


def _settings() -> Settings:
    """Operators' settings (lineage): the keys are required, user ids masked like logs."""
    from etl_engine.ops import cli

    return cli._operator_settings()


def _reader_settings() -> Settings:
    """The ML team's commands (card, months, pull) read journals only: they neither need
    nor get the operators' keys (placeholders satisfy the validation they never use)."""
    from etl_engine.ops import cli

    return cli._settings(user_id_hash_key="not-used-by-dataset-commands",
                         lineage_key="not-used-by-dataset-commands")


def _storage(settings: Settings, pool: int | None = None) -> Any:
    from etl_engine.adapters.storage import Storage, make_client

    return Storage(make_client(settings, pool=pool))


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


# --- lineage ---------------------------------------------------------------------------------
def cmd_lineage(args: argparse.Namespace) -> int:
    from etl_engine.ops import cli, lineage

    try:
        ident = lineage.parse_id(args.id)
    except lineage.NotAnId as exc:
        print(f"etl-engine lineage: {exc}", file=sys.stderr)
        return 2
    settings = _settings()
    found = [lineage.describe(match, reveal=args.reveal) for match in
             lineage.find(_storage(settings, lineage.READERS), settings, ident)]
    if args.json:
        cli._say_json(found, indent=True)
    for item in [] if args.json else found:
        cli._say("\n".join(f"{k:<18} {v}" for k, v in item.items() if v is not None) + "\n")
    if not found:
        print(f"etl-engine lineage: no outcome record under {settings.outcome_prefix} names "
              f"{ident} (another bucket or ETL_OUTCOME_PREFIX? a record from before outcome "
              "records?)",
              file=sys.stderr)
        return 1
    return 0


# --- dataset ---------------------------------------------------------------------------------
def cmd_dataset_card(args: argparse.Namespace) -> int:
    from etl_engine.ops import dataset

    settings = _reader_settings()
    try:
        dataset.month_parts(args.month)
    except ValueError as exc:
        print(f"etl-engine dataset card: {exc}", file=sys.stderr)
        return 2
    card = dataset.write_card(_storage(settings), settings, args.month)
    if card is None:
        print(f"etl-engine dataset card: no journals for {args.month} under "
              f"{settings.compacted_prefix}: run `etl-engine compact --month {args.month}` "
              "first",
              file=sys.stderr)
        return 1
    if args.json:
        _print_json(card)
    else:
        print(dataset.render_markdown(card, settings))
    print(f"written: {dataset.card_key(settings, args.month, 'md')} and .json", file=sys.stderr)
    return 0


def cmd_dataset_months(args: argparse.Namespace) -> int:
    from etl_engine.ops import dataset

    settings = _reader_settings()
    months = dataset.months_with_records(_storage(settings), settings)
    if args.json:
        _print_json(months)
    else:
        print("\n".join(months))
    return 0


def cmd_dataset_pull(args: argparse.Namespace) -> int:
    from etl_engine.ops import dataset

    try:
        months = dataset.months_between(args.month, args.to or args.month)
        shares = dataset.parse_split(args.split) if args.split else None
        unknown = set(args.category or ()) - set(dataset.training_categories())
        if unknown:
            raise ValueError(f"unknown --category {', '.join(sorted(unknown))} (one of "
                             f"{', '.join(dataset.training_categories())})")
    except ValueError as exc:
        print(f"etl-engine dataset pull: {exc}", file=sys.stderr)
        return 2
    settings = _reader_settings()
    req = dataset.PullRequest(months, Path(args.out), tuple(args.category or ()), shares,
                              args.by, args.seed, args.flat)
    report = dataset.pull(_storage(settings), settings, req)
    manifest = {**report.as_dict(), "months": months, "split": args.split, "by": args.by,
                "seed": args.seed}
    (req.out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if args.json:
        _print_json(manifest)
    else:
        _print_pull(report)
    if len([k for k in report.lineage_key_ids if k != "unknown"]) > 1:
        print("etl-engine dataset pull: the records were made under more than one lineage key "
              f"({', '.join(report.lineage_key_ids)}): one person can have two subject_ids, "
              "so --by subject cannot keep them in one split", file=sys.stderr)
    if report.months_without_journals:
        print("etl-engine dataset pull: no journals for "
              + ", ".join(report.months_without_journals)
              + " (run `etl-engine compact --month YYYY-MM` first)", file=sys.stderr)
    return 0 if report.files else 1


def _print_pull(report: Any) -> None:
    for path, n in report.files.items():
        print(f"{n:>8} records  {report.out / path}")
    for part, n in report.subjects_per_split.items():
        print(f"{part:>10}: {n} subjects")
    for card in report.cards:
        print(f"    card  {card}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    lin = sub.add_parser(
        "lineage", help="map a training record's source_id or record_id back to its input "
                        "(operators: reads the outcome records)")
    lin.add_argument("id", help="source_id or record_id (32 hex digits), or a result's key")
    lin.add_argument("--reveal", action="store_true",
                     help="show the user id in the object key (masked by default)")
    lin.add_argument("--json", action="store_true", help="print JSON")
    lin.set_defaults(fn=cmd_lineage)

    ds = sub.add_parser("dataset", help="the training data as a dataset: card, local pull")
    dsub = ds.add_subparsers(dest="dataset_command", required=True)
    card = dsub.add_parser("card", help="write (and print) a month's dataset card")
    card.add_argument("--month", required=True, help="YYYY-MM")
    card.add_argument("--json", action="store_true", help="print the card's JSON form")
    card.set_defaults(fn=cmd_dataset_card)

    months = dsub.add_parser("months", help="list the months that have training records "
                                            "(one per line: feed them to compact)")
    months.add_argument("--json", action="store_true", help="print a JSON list")
    months.set_defaults(fn=cmd_dataset_months)

    pull = dsub.add_parser("pull", help="download compacted months into a local folder")
    pull.add_argument("--month", required=True, help="YYYY-MM (the first month)")
    pull.add_argument("--to", help="YYYY-MM: the last month of a range (default: --month)")
    pull.add_argument("--out", required=True, help="folder to write JSONL files into")
    pull.add_argument("--category", action="append",
                      help="only this training category (repeatable; default: all)")
    pull.add_argument("--split", help="e.g. 80/10/10: train/validation/test percentages")
    pull.add_argument("--by", choices=("subject", "record"), default="subject",
                      help="what a split keeps together (default: subject, so no person's "
                           "days are in two splits)")
    pull.add_argument("--seed", default="", help="changes which split each subject gets")
    pull.add_argument("--flat", action="store_true",
                      help="rows of fixed columns for Arrow and Hugging Face datasets: "
                           "record_id, subject_id, training_category, record_type, "
                           "period_date, quality_score, partial, and metadata as a JSON "
                           "string (its nested shape differs by category and date)")
    pull.add_argument("--json", action="store_true", help="print the manifest as JSON")
    pull.set_defaults(fn=cmd_dataset_pull)
