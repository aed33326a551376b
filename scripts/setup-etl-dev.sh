#!/usr/bin/env bash
# Set up a development environment: .venv with the project and its dev extras, a .env
# from .env.template, the local services, the bucket; then run the tests.
#   scripts/setup-etl-dev.sh            full set-up, ends by running the tests
#   scripts/setup-etl-dev.sh --no-test  set-up only (used by manage-etl-stack.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_TESTS=1
[[ "${1:-}" == "--no-test" ]] && RUN_TESTS=0

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      PYTHON="$candidate"; break
    fi
  done
fi
[[ -n "$PYTHON" ]] || die "Python 3.11+ is required (apt-get install python3 python3-venv)"

if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv || die "could not create .venv (apt-get install python3-venv)"
fi
say "installing the project and its dev extras"
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# The lock carries hashes (scripts/update-locks.sh): install it hash-checked, then the project
# itself without dependencies (an editable install cannot be hashed, so no -c with the lock).
if [[ -f requirements-dev.lock ]]; then
  # requirements-build.lock: the image's build backend, so a test can build the same wheel
  .venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock \
    -r requirements-build.lock 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install --quiet --no-deps -e '.[dev,codecs]' -e tools 2>&1 \
    | grep -v '^WARNING: Location' || true
else
  .venv/bin/python -m pip install --quiet -e '.[dev,codecs]' -e tools 2>&1 \
    | grep -v '^WARNING: Location' || true
fi
# tools/: the development tooling (sample generator, benchmark, local S3 server), its own
# package so the worker image does not carry it.
.venv/bin/python -c 'import etl_engine, etl_devtools, aio_pika, fastavro, moto' \
  || die "the install did not complete; see the pip output above"

# shellcheck source=lib/secrets.sh
. "$ROOT/scripts/lib/secrets.sh"  # ensure_env_secrets: random keys in .env
# shellcheck source=lib/local-stack-env.sh
. "$ROOT/scripts/lib/local-stack-env.sh"  # ensure_local_stack_env: S3 endpoint and keys

if [[ ! -f .env ]]; then
  say "writing .env from .env.template"
  cp .env.template .env
fi
ensure_env_secrets
# The local stack's S3 endpoint and keys: `.venv/bin/etl-engine ...` reads .env, so it
# reaches the running stack without `manage-etl-stack.sh shell`.
ensure_local_stack_env

if [[ $RUN_TESTS == 1 ]]; then
  say "starting the local services"
  "$ROOT/scripts/manage-etl-stack.sh" --native services
  say "running the tests"
  exec "$ROOT/scripts/manage-etl-stack.sh" test
fi
say "development environment ready"
