#!/usr/bin/env bash
# The fault-injection and adversarial-input suite (tests/chaos, and the chaos-marked
# resource-limit scenarios of tests/security), then its figures.
#
#   scripts/chaos.sh                          CI variant (small message counts, ~7 min)
#   scripts/chaos.sh --long                   long suite: larger counts, longer kill storms,
#                                             and the soak (20,000 inputs, SIGKILLs, 5xx)
#   scripts/chaos.sh --soak                   the soak alone (ETL_CHAOS_SOAK_INPUTS=N: fewer)
#   scripts/chaos.sh -m "chaos and not disruptive"   skip the RabbitMQ / Redis restarts
#   scripts/chaos.sh -k storm                 any other pytest arguments pass through
#
# Needs RabbitMQ and Redis on 127.0.0.1 (./scripts/manage-etl-stack.sh start) and
# libfaketime (Debian package faketime; .ci/run installs it) for the clock-skew scenario;
# the tests start their own S3 server. Each scenario uses its own queues, bucket and key
# prefix; the "disruptive" ones restart the local RabbitMQ / Redis briefly or raise a
# broker memory alarm, and always put them back. The ledger fails a scenario unless every
# input has exactly one outcome (tests/chaos/ledger.py). Per-scenario summaries:
# .run/chaos/<scenario>.json (docs/reliability.md quotes them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
[[ -x $PY ]] || { echo "chaos: no .venv (run ./scripts/setup-etl-dev.sh)" >&2; exit 2; }

LONG=0
MARKS="chaos and not soak"
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --long) LONG=1; MARKS="chaos" ;;
    --soak) LONG=1; MARKS="chaos and soak" ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
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
[[ $LONG == 1 ]] && TIMEOUT=3600
echo "== chaos suite ($([[ $LONG == 1 ]] && echo long || echo CI) variant: -m \"$MARKS\")"
start=$SECONDS
set +e
"$PY" -m pytest tests/chaos tests/security -m "$MARKS" -s -q -p no:cacheprovider \
  --timeout "$TIMEOUT" ${ARGS[@]+"${ARGS[@]}"}
rc=$?
set -e
echo
echo "== chaos figures (.run/chaos/*.json)"
"$PY" tests/chaos/summary.py || true
echo "duration $((SECONDS - start)) s, pytest exit $rc"
exit $rc
