"""Print the figures of the last chaos run (``.run/chaos/*.json``) as one table.

    python tests/chaos/summary.py [--markdown]

Columns: ok / quar / dlq / lost per class, dup = duplicated + bad_result, two = inputs with
more than one outcome (tests/chaos/ledger.py); the exit code is 1 unless every one passed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUN_DIR = Path(__file__).resolve().parents[2] / ".run" / "chaos"
COLUMNS = ["scenario", "inputs", "msgs", "ok", "quar", "dlq", "lost", "dup", "two", "faults",
           "redeliv", "drain_s", "total_s", "result"]


def rows() -> list[list[str]]:
    out = []
    for path in sorted(RUN_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        o, f = d["outcomes"], d["figures"]
        out.append([
            d["scenario"], str(d["inputs"]), str(d["messages"]), str(o["processed"]),
            str(o["quarantined"]), str(o["dead_lettered"]), str(o["lost"]),
            str(o["duplicated"] + o["bad_result"]), str(o.get("two_outcomes", 0)),
            str(f.get("faults_injected", "")),
            str(f.get("redeliveries_seen", "")), str(f.get("time_to_drain_s", "")),
            str(f.get("elapsed_s", "")), "PASS" if d["passed"] and f.get("drained") else "FAIL",
        ])
    return out


def main() -> int:
    data = rows()
    if not data:
        print(f"no summaries under {RUN_DIR}")
        return 1
    if "--markdown" in sys.argv:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for r in data:
            print("| " + " | ".join(r) + " |")
        return 0
    widths = [max(len(c), *(len(r[i]) for r in data)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in data:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    total = {k: sum(int(r[i]) for r in data) for i, k in enumerate(COLUMNS)
             if k in ("inputs", "msgs", "lost", "dup", "two")}
    print(f"\n{len(data)} scenarios, {total['inputs']} inputs, {total['msgs']} messages, "
          f"lost {total['lost']}, duplicated {total['dup']}, two_outcomes {total['two']}")
    return 0 if all(r[-1] == "PASS" for r in data) else 1


if __name__ == "__main__":
    raise SystemExit(main())
