"""The dataset card in Markdown, from its JSON form (ops/dataset.py ``build_card``).

Laid out like a Hugging Face dataset README (YAML front matter with one config per
category, then prose and tables), so a dataset hub or a person reads it as it is.
"""

from __future__ import annotations

import json
from typing import Any

_SIZE = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
         (1_000_000, "100K<n<1M"))


def _size_category(records: int) -> str:
    return next((label for bound, label in _SIZE if records < bound), "1M<n<10M")


def _front_matter(card: dict[str, Any], prefix: str) -> list[str]:
    lines = ["---", f"pretty_name: \"ETL Narrative Engine training records, {card['month']}\"",
             "license: other", "language:", "- en", "task_categories:", "- text-generation",
             "size_categories:", f"- {_size_category(int(card['records']))}",
             "tags:", "- health", "- wearables", "- pseudonymous", "configs:"]
    for category, summary in card["categories"].items():
        lines.append(f"- config_name: {category}")
        lines.append("  data_files:")
        for f in summary["files"]:
            lines.append(f"  - {f['key'].removeprefix(prefix)}")
    return [*lines, "---", ""]


def _fields(card: dict[str, Any]) -> list[str]:
    schema = card["schema"]
    rows = ["| field | type | meaning |", "|---|---|---|"]
    top = schema.get("properties", {})
    meta = top.get("metadata", {}).get("properties", {})
    named = [(k, v) for k, v in top.items() if k != "metadata"]
    named += [(f"metadata.{k}", v) for k, v in meta.items()]
    for name, spec in named:
        kind = spec.get("type", "object")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        text = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {text} |")
    return rows


def _contents(card: dict[str, Any]) -> list[str]:
    rows = ["| category | records | subjects | partial records | quality p10 / median / p90 |"
            " record types |", "|---|---:|---:|---:|---|---|"]
    for category, s in card["categories"].items():
        q = s["quality_score"]
        quality = f"{q['p10']} / {q['median']} / {q['p90']}" if q else "n/a"
        types = ", ".join(f"{t} ({n})" for t, n in s["record_types"].items())
        rows.append(f"| {category} | {s['records']} | {s['subjects']} | "
                    f"{s['partial_records']} | {quality} | {types} |")
    return rows


def _quality(card: dict[str, Any]) -> list[str]:
    rows = ["| category | score range | records |", "|---|---|---:|"]
    for category, s in card["categories"].items():
        for b in s["quality_score"].get("histogram", []):
            rows.append(f"| {category} | {b['from']:.1f} to {b['to']:.1f} | {b['records']} |")
    return rows


def _flags(card: dict[str, Any]) -> list[str]:
    out = []
    for category, s in card["categories"].items():
        out.append(f"**{category}** ({s['records']} records)")
        items = [f"- flag `{k}` true in {n}" for k, n in s["flags_true"].items()]
        items += [f"- warning `{k}` on {n}" for k, n in s["warnings"].items()]
        items += [f"- sufficiency `{k}`: min {v['min']}, median {v['median']}, max {v['max']}"
                  for k, v in s["sufficiency"].items()]
        if s["records_with_superseded_days"]:
            items.append(f"- {s['records_with_superseded_days']} records list "
                         "`superseded_days` (a later export speaks for those days)")
        out += [*(items or ["- no flags, warnings or sufficiency figures"]), ""]
    return out


def _provenance(card: dict[str, Any]) -> list[str]:
    out = ["Processor versions: " + ", ".join(
        f"`{v}` ({n} records)" for v, n in card["processor_versions"].items()), "",
        "| settings digest | records | settings |", "|---|---:|---|"]
    for entry in card["settings"]:
        values = entry["values"]
        shown = (", ".join(f"`{k}={v}`" for k, v in values.items()) if values
                 else "made with settings other than this tool's (digest differs)")
        out.append(f"| `{entry['settings_digest']}` | {entry['records']} | {shown} |")
    out += ["", "Definitions the statistics and narratives follow: "
            + ", ".join(f"`{d}`" for d in card["definitions"]) + " (in the engine's repository)."]
    return out


def render(card: dict[str, Any], *, compacted_prefix: str = "compacted/") -> str:
    deid = card["deidentification"]
    parts = [
        *_front_matter(card, compacted_prefix),
        f"# ETL Narrative Engine training records: {card['month']}", "",
        f"{card['records']} records, generated {card['generated_at']} by "
        f"{card['generated_by']} from the month's compacted journals.", "",
        "Each line is one processed Health Connect export: a question about a period "
        "(`instruction`), a plain-language answer written only from the statistics "
        "(`output`), and the pseudonymous lineage, quality and statistics behind it "
        "(`metadata`). Narratives describe; they never diagnose.", "",
        "## Contents", "", *_contents(card), "",
        "## Quality score distribution", "", *_quality(card), "",
        "## Sufficiency, partial days and flags", "", *_flags(card),
        "## How it was made", "", *_provenance(card), "",
        "## De-identification and its limits", "",
        *[f"**Note:** {note}\n" for note in deid.get("notes", [])], deid["method"], "",
        *[f"- {limit}" for limit in deid["limits"]], "",
        "## Loading", "",
        f"`etl-engine dataset pull --month {card['month']} --out DIR "
        "[--split 80/10/10 --by subject]`, then pandas or Hugging Face `datasets` "
        "(docs/dataset.md in the engine's repository).", "",
        "## Fields", "", *_fields(card), "",
        "<details><summary>JSON Schema of a record</summary>", "", "```json",
        json.dumps(card["schema"], indent=2), "```", "", "</details>", "",
    ]
    return "\n".join(parts)
