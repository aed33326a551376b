#!/usr/bin/env bash
# Upload the bundled samples (or DIR) under raw/, publish one message each, wait, summarise.
#   scripts/load-sample-data.sh [DIR] [--run-id ID] [--timeout S]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/samples"
if [[ $# -gt 0 && "$1" != --* ]]; then DIR="$1"; shift; fi
exec "$ROOT/scripts/manage-etl-stack.sh" load-sample "$DIR" "$@"
