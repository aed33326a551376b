#!/usr/bin/env bash
# Benchmark harness: decode floor, storage ceiling, the worker fleet, large files.
# Prints figures side by side (it is not a pass/fail test); see docs/performance.md.
#   scripts/benchmark.sh [--quick] [--messages N] [--workers 1,2] [--decode-processes 1,1c]
#                        [--concurrency C] [--profile] [--no-growth] [--json PATH] ...
# Needs RabbitMQ and Redis on 127.0.0.1 (./scripts/manage-etl-stack.sh start); starts its
# own S3 server (moto behind a keep-alive server: etl_devtools.dev_s3) on a free port unless
# --s3-endpoint is given. Uses its own exchange,
# queues, buckets and Redis prefix, so a running stack is not disturbed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "no $PY: run ./scripts/setup-etl-dev.sh first" >&2; exit 2; }
cd "$ROOT"
exec "$PY" -m etl_engine.ops.cli bench "$@"
