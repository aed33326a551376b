"""The published message contract, generated: ``python -m etl_devtools.contract``.

Writes ``schemas/message.schema.json`` (package data, so installs carry it) from the
pydantic model in ``etl_engine.domain.messages``; ``--check`` exits 1 when the file is not
what the model gives (tests/test_contract.py runs the same comparison).
docs/asyncapi.yaml refers to that file for the message payload.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from etl_engine.domain.messages import message_json_schema
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES, schema_dir


def message_schema_path() -> Path:
    return schema_dir() / "message.schema.json"


def render_message_schema() -> str:
    """The file's exact text: two-space JSON, keys in the model's order, a final newline."""
    return json.dumps(message_json_schema(SUPPORTED_RECORD_TYPES), indent=2,
                      ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl_devtools.contract",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file is out of date instead of writing it")
    args = parser.parse_args(argv)
    path, text = message_schema_path(), render_message_schema()
    current = path.read_text() if path.exists() else ""
    if args.check:
        if current != text:
            print(f"{path} is out of date: run python -m etl_devtools.contract",
                  file=sys.stderr)
            return 1
        return 0
    if current != text:
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
