#!/usr/bin/env bash
# The fault-injection and adversarial-input suite (tests/chaos, and the chaos-marked
# resource-limit scenarios of tests/security), then its figures.
#
#   scripts/chaos.sh                          CI variant (small message counts, ~5 min)
#   scripts/chaos.sh --long                   soak: larger counts, longer kill storms
#   scripts/chaos.sh -m "chaos and not disruptive"   skip the RabbitMQ / Redis restarts
#   scripts/chaos.sh -k storm                 any other pytest arguments pass through
#
# Needs RabbitMQ and Redis on 127.0.0.1 (./scripts/manage-etl-stack.sh start); the tests
# start their own S3 server. Each scenario uses its own queues, bucket and key prefix; the
# "disruptive" ones restart the local RabbitMQ / Redis briefly and always bring them back.
# Per-scenario summaries: .run/chaos/<scenario>.json (docs/reliability.md quotes them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
[[ -x $PY ]] || { echo "chaos: no .venv (run ./scripts/setup-etl-dev.sh)" >&2; exit 2; }

LONG=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --long) LONG=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) ARGS+=("$arg") ;;
  esac
done

for svc in "RabbitMQ 5672" "Redis 6379"; do
  set -- $svc
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
    echo "chaos: $1 is not reachable on 127.0.0.1:$2 (./scripts/manage-etl-stack.sh start)" >&2
    exit 2
  fi
done

rm -rf .run/chaos
mkdir -p .run/chaos
export ETL_CHAOS_LONG=$LONG
TIMEOUT=300
[[ $LONG == 1 ]] && TIMEOUT=1800
echo "== chaos suite ($([[ $LONG == 1 ]] && echo long || echo CI) variant)"
start=$SECONDS
set +e
"$PY" -m pytest tests/chaos tests/security -m chaos -s -q -p no:cacheprovider --timeout "$TIMEOUT" \
  ${ARGS[@]+"${ARGS[@]}"}
rc=$?
set -e
echo
echo "== chaos figures (.run/chaos/*.json)"
"$PY" tests/chaos/summary.py || true
echo "duration $((SECONDS - start)) s, pytest exit $rc"
exit $rc
