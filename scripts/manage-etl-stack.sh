#!/usr/bin/env bash
# Manage the ETL Narrative Engine stack.
#
# Docker mode when a Docker engine answers (deployment/docker-compose.yml), native mode
# otherwise or with --native: RabbitMQ and Redis on localhost (started if installed but
# stopped), an S3 server (MinIO if on PATH, else moto via etl_devtools.dev_s3 from .venv), and
# ETL_WORKERS worker processes; pids and logs under .run/. `stop` ends only those pids.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN="$ROOT/.run"
COMPOSE_FILE="$ROOT/deployment/docker-compose.yml"

say()  { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
ok()   { printf '\033[1;32m ok\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33mwarn:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
usage: scripts/manage-etl-stack.sh [--native|--docker] COMMAND [ARGS]

  demo          set up if needed, start, load the bundled samples, wait, print a summary
  start         start the services and ETL_WORKERS workers (native) or the compose stack
  stop          stop the workers and the S3 server this script started (or compose down)
  restart       stop, then start
  rebuild       reinstall the project into .venv (native) or rebuild the image (docker)
  status        processes, queue depths and worker figures
  health        each worker's /health
  metrics       each worker's /metrics
  logs [worker] follow the logs (all, or worker N / one compose service)
  shell         a shell with .venv and the stack's environment (or in a worker container)
  scale N       run N workers
  load-sample   upload the bundled samples, publish one message each, wait, summarise
  test [ARGS]   run the tests: pytest, then the fault-injection suite (scripts/chaos.sh);
                with ARGS, only pytest with them (ETL_TEST_CHAOS=0 skips the chaos suite)
  services      make sure RabbitMQ, Redis and the S3 server are up (native)
  help          this text

Environment: .env (created from .env.template) and ETL_* variables; ETL_WORKERS (default 2);
S3_PORT for the native S3 server (default 9000); SIDECAR_BASE_PORT (default 8004).
EOF
}

# --- mode ----------------------------------------------------------------------------------
MODE=""
case "${1:-}" in
  --native) MODE=native; shift ;;
  --docker) MODE=docker; shift ;;
esac
if [[ -z "$MODE" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    MODE=docker
  else
    MODE=native
  fi
fi
CMD="${1:-help}"; shift || true

# --- environment -----------------------------------------------------------------------------
# shellcheck source=lib/secrets.sh
. "$ROOT/scripts/lib/secrets.sh"  # ensure_env_secrets: random keys in .env
# shellcheck source=lib/local-stack-env.sh
. "$ROOT/scripts/lib/local-stack-env.sh"  # ensure_local_stack_env: S3 endpoint and keys

load_env() {
  [[ -f .env ]] || { [[ -f .env.template ]] && cp .env.template .env; }
  if [[ -f .env ]]; then
    ensure_env_secrets
    # native: the local S3 server's endpoint and keys, so .venv/bin/etl-engine (which reads
    # .env) reaches this stack from any shell
    if [[ $MODE == native ]]; then ensure_local_stack_env; fi
    # Only ETL_ variables not already set in the environment.
    while IFS='=' read -r name value; do
      [[ "$name" =~ ^ETL_[A-Z0-9_]+$ ]] || continue
      [[ -n "${!name+x}" ]] && continue
      export "$name=$value"
    done < <(grep -E '^ETL_[A-Z0-9_]+=' .env)
  fi
  export ETL_WORKERS="${ETL_WORKERS:-2}"
  export S3_PORT="${S3_PORT:-9000}"
  export SIDECAR_BASE_PORT="${SIDECAR_BASE_PORT:-8004}"
  if [[ $MODE == native ]]; then
    [[ -n "${ETL_S3_ENDPOINT_URL:-}" ]] || export ETL_S3_ENDPOINT_URL="http://127.0.0.1:${S3_PORT}"
    [[ -n "${ETL_DEDUP_URL:-}" ]] || export ETL_DEDUP_URL="redis://127.0.0.1:6379/0"
    [[ -n "${ETL_S3_ACCESS_KEY_ID:-}" ]] || export ETL_S3_ACCESS_KEY_ID="etl-local"
    [[ -n "${ETL_S3_SECRET_ACCESS_KEY:-}" ]] || export ETL_S3_SECRET_ACCESS_KEY="etl-local-secret"
  fi
}

# An older venv (before the layered package and tools/) is not ready: set-up reinstalls.
venv_ready() {
  [[ -x .venv/bin/etl-engine ]] \
    && .venv/bin/python -c 'import etl_engine.ops.cli, etl_devtools' >/dev/null 2>&1
}
ensure_venv() {
  venv_ready || "$ROOT/scripts/setup-etl-dev.sh" --no-test
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    (( SECONDS < deadline )) || die "$what not ready after ${limit}s"
    sleep 0.2
  done
}

# --- native services -------------------------------------------------------------------------
ensure_rabbitmq() {
  if port_open 5672; then ok "RabbitMQ on 127.0.0.1:5672"; return; fi
  command -v rabbitmq-server >/dev/null 2>&1 \
    || die "RabbitMQ is not installed: apt-get install -y rabbitmq-server"
  say "starting RabbitMQ"
  rabbitmq-server -detached
  if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl -q await_startup --timeout 120 >/dev/null 2>&1 || true
  fi
  wait_until 120 "RabbitMQ" port_open 5672
  ok "RabbitMQ started"
}

ensure_redis() {
  if port_open 6379; then ok "Redis on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null 2>&1 \
    || die "Redis is not installed: apt-get install -y redis-server"
  say "starting Redis"
  local dir=/var/lib/redis log=/var/log/redis/ci.log
  [[ -w /var/lib ]] || { dir="$RUN/redis"; log="$RUN/redis.log"; }
  mkdir -p "$dir" "$(dirname "$log")" "$RUN"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir "$dir" --logfile "$log"
  wait_until 30 "Redis" port_open 6379
  ok "Redis started"
}

s3_ready() {
  .venv/bin/python - "$ETL_S3_ENDPOINT_URL" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/", timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
PY
}

ensure_s3() {
  mkdir -p "$RUN"
  if s3_ready; then ok "S3 server at $ETL_S3_ENDPOINT_URL"; else
    local port="${ETL_S3_ENDPOINT_URL##*:}"; port="${port%%/*}"
    if command -v minio >/dev/null 2>&1; then
      say "starting MinIO on port $port"
      MINIO_ROOT_USER="$ETL_S3_ACCESS_KEY_ID" MINIO_ROOT_PASSWORD="$ETL_S3_SECRET_ACCESS_KEY" \
        nohup minio server "$RUN/minio-data" --address "127.0.0.1:$port" >"$RUN/s3.log" 2>&1 &
    else
      say "starting the S3 server (moto, keep-alive: etl_devtools.dev_s3) on port $port"
      nohup .venv/bin/python -m etl_devtools.dev_s3 -H 127.0.0.1 -p "$port" >"$RUN/s3.log" 2>&1 &
    fi
    echo $! >"$RUN/s3.pid"
    wait_until 60 "S3 server" s3_ready
    ok "S3 server at $ETL_S3_ENDPOINT_URL (pid $(cat "$RUN/s3.pid"))"
  fi
  .venv/bin/python - <<'PY'
from etl_engine.settings import load_settings
from etl_engine.adapters.storage import Storage, make_client
s = load_settings()
Storage(make_client(s)).ensure_bucket(s.bucket)
PY
  ok "bucket ${ETL_BUCKET:-health-data}"
}

native_services() { ensure_venv; ensure_rabbitmq; ensure_redis; ensure_s3; }

# --- native workers --------------------------------------------------------------------------
worker_pids() { for f in "$RUN"/worker-*.pid; do [[ -f $f ]] && echo "$f"; done; }
alive() { kill -0 "$1" 2>/dev/null; }

ready_probe() {  # ready_probe PORT
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=1)
PY
}

start_worker() {  # start_worker INDEX
  local i=$1 port=$((SIDECAR_BASE_PORT + $1 - 1))
  local pidfile="$RUN/worker-$i.pid"
  if [[ -f $pidfile ]] && alive "$(cat "$pidfile")"; then ok "worker $i already running"; return; fi
  ETL_WORKER_ID="${ETL_WORKER_ID_PREFIX:-native}-$i" ETL_SIDECAR_PORT=$port \
  ETL_SIDECAR_HOST="${ETL_SIDECAR_HOST:-127.0.0.1}" \
    nohup .venv/bin/etl-engine worker >>"$RUN/worker-$i.log" 2>&1 &
  echo $! >"$pidfile"
  echo "$port" >"$RUN/worker-$i.port"
}

native_start() {
  native_services
  say "starting $ETL_WORKERS worker(s)"
  for ((i = 1; i <= ETL_WORKERS; i++)); do start_worker "$i"; done
  for ((i = 1; i <= ETL_WORKERS; i++)); do
    local port; port=$(cat "$RUN/worker-$i.port")
    local pid; pid=$(cat "$RUN/worker-$i.pid")
    local deadline=$((SECONDS + 60))
    until ready_probe "$port"; do
      alive "$pid" || die "worker $i exited; see $RUN/worker-$i.log:
$(tail -n 20 "$RUN/worker-$i.log")"
      (( SECONDS < deadline )) || die "worker $i not ready after 60s; see $RUN/worker-$i.log"
      sleep 0.2
    done
    ok "worker $i ready (pid $pid, sidecar http://127.0.0.1:$port)"
  done
}

stop_pidfile() {  # stop_pidfile FILE NAME
  local f=$1 name=$2 pid
  pid=$(cat "$f")
  if alive "$pid"; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 45))
    while alive "$pid" && (( SECONDS < deadline )); do sleep 0.2; done
    if alive "$pid"; then warn "$name did not stop in 45s; killing"; kill -KILL "$pid"; fi
    ok "stopped $name (pid $pid)"
  fi
  rm -f "$f" "${f%.pid}.port"
}

native_stop() {
  local any=0
  for f in $(worker_pids); do stop_pidfile "$f" "$(basename "${f%.pid}")"; any=1; done
  if [[ -f "$RUN/s3.pid" ]]; then stop_pidfile "$RUN/s3.pid" "S3 server"; any=1; fi
  [[ $any == 1 ]] || ok "nothing of ours was running"
}

native_scale() {
  local n=${1:?usage: scale N}
  [[ "$n" =~ ^[0-9]+$ ]] || die "scale needs a number"
  native_services
  for f in $(worker_pids); do
    local i; i=$(basename "${f%.pid}"); i=${i#worker-}
    (( i > n )) && stop_pidfile "$f" "worker $i"
  done
  ETL_WORKERS=$n native_start
}

sidecar_ports() { for f in "$RUN"/worker-*.port; do [[ -f $f ]] && cat "$f"; done; }

native_get() {  # native_get PATH
  local path=$1 port any=0
  for port in $(sidecar_ports); do
    any=1
    echo "--- worker sidecar :$port$path"
    .venv/bin/python - "$port" "$path" <<'PY' || true
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=3)
    print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.read().decode())
except OSError as e:
    print(f"unreachable: {e}")
PY
  done
  [[ $any == 1 ]] || die "no native workers are running (start them with: $0 start)"
}

native_status() {
  local f
  for f in $(worker_pids); do
    local pid; pid=$(cat "$f")
    if alive "$pid"; then ok "$(basename "${f%.pid}") running (pid $pid)"; else warn "$(basename "${f%.pid}") not running"; fi
  done
  if [[ -f "$RUN/s3.pid" ]] && alive "$(cat "$RUN/s3.pid")"; then ok "S3 server (pid $(cat "$RUN/s3.pid"))"; fi
  if .venv/bin/etl-engine status --help >/dev/null 2>&1; then
    .venv/bin/etl-engine status --once $(for p in $(sidecar_ports); do printf -- '--targets http://127.0.0.1:%s ' "$p"; done)
  fi
}

load_sample() {  # load_sample [DIR] [ARGS...]
  local dir="$ROOT/samples"
  if [[ $# -gt 0 && "$1" != --* ]]; then dir=$1; shift; fi
  .venv/bin/etl-engine load-samples "$dir" --wait --timeout "${LOAD_TIMEOUT:-90}" "$@"
}

run_tests() {
  ensure_venv
  ensure_rabbitmq
  ensure_redis
  local rc=0
  if [[ $# -eq 0 ]]; then  # the whole suite: the static checks first (~30 s)
    say "static checks: ruff, mypy"
    set +e
    .venv/bin/ruff check src tools tests && .venv/bin/mypy
    rc=$?
    set -e
  fi
  say "running the tests"
  set +e
  .venv/bin/python -m pytest "$@"
  local test_rc=$?
  set -e
  (( rc != 0 )) || rc=$test_rc
  # With no arguments, the whole suite: then the fault-injection suite (CI variant, ~7 min).
  # ETL_TEST_CHAOS=0 skips it.
  if [[ $# -eq 0 && "${ETL_TEST_CHAOS:-1}" != 0 ]]; then
    say "running the fault-injection suite (scripts/chaos.sh)"
    set +e
    "$ROOT/scripts/chaos.sh"
    local chaos_rc=$?
    set -e
    (( rc != 0 )) || rc=$chaos_rc
  fi
  return $rc
}

demo() {
  local t0=$SECONDS
  native_start
  say "loading the bundled samples"
  load_sample --run-id "demo-$(date -u +%Y%m%dT%H%M%S)"
  say "compacting each month into journals, with its dataset card"
  local month
  for month in $(.venv/bin/etl-engine dataset months); do
    .venv/bin/etl-engine compact --month "$month"
  done
  say "demo finished in $((SECONDS - t0))s; results under s3://${ETL_BUCKET:-health-data}/training/"
  echo "    the month's journals and dataset cards: s3://${ETL_BUCKET:-health-data}/compacted/;"
  echo "    load one: .venv/bin/etl-engine dataset pull --month YYYY-MM --out data/ (docs/dataset.md)"
  echo "    the workers keep running: '$0 status', '$0 logs', '$0 stop'"
}

# --- docker mode -----------------------------------------------------------------------------
compose() { docker compose -f "$COMPOSE_FILE" --env-file "$ROOT/.env" "$@"; }

docker_cmd() {
  [[ -f "$COMPOSE_FILE" ]] || die "missing $COMPOSE_FILE"
  case "$CMD" in
    start) compose up -d --wait --scale "worker=${ETL_WORKERS}" ;;
    stop) compose down ;;
    restart) compose down && compose up -d --wait --scale "worker=${ETL_WORKERS}" ;;
    rebuild) compose build --pull worker && compose up -d --wait --scale "worker=${ETL_WORKERS}" ;;
    logs) compose logs -f "${1:-worker}" ;;
    shell) compose exec worker /bin/sh ;;
    scale) compose up -d --wait --scale "worker=${1:?usage: scale N}" ;;
    status) compose ps && compose run --rm -T etl-cli status --once --targets http://worker:8004 ;;
    health) for c in $(compose ps -q worker); do docker exec "$c" python -c \
        'import urllib.request;print(urllib.request.urlopen("http://127.0.0.1:8004/health").read().decode())' || true; done ;;
    metrics) for c in $(compose ps -q worker); do docker exec "$c" python -c \
        'import urllib.request;print(urllib.request.urlopen("http://127.0.0.1:8004/metrics").read().decode())'; done ;;
    # The loader runs as the uploader user: the workers' own S3 user may not write raw/.
    load-sample) compose run --rm -T loader load-samples --wait "$@" ;;
    demo) compose up -d --wait --scale "worker=${ETL_WORKERS}" \
        && compose run --rm -T loader load-samples --wait \
             --run-id "demo-$(date -u +%Y%m%dT%H%M%S)" \
        && for month in $(compose run --rm -T etl-cli dataset months); do
             compose run --rm -T etl-cli compact --month "$month"; done ;;
    test) MODE=native; run_tests "$@" ;;
    *) die "unknown command '$CMD' (try: $0 help)" ;;
  esac
}

# --- dispatch --------------------------------------------------------------------------------
case "$CMD" in
  help|-h|--help) usage; exit 0 ;;
esac
load_env
if [[ $MODE == docker && $CMD != test ]]; then docker_cmd "$@"; exit $?; fi
case "$CMD" in
  start) native_start ;;
  stop) native_stop ;;
  restart) native_stop; native_start ;;
  rebuild) "$ROOT/scripts/setup-etl-dev.sh" --no-test; native_stop; native_start ;;
  services) native_services ;;
  status) ensure_venv; native_status ;;
  health) ensure_venv; native_get /health ;;
  metrics) ensure_venv; native_get /metrics ;;
  logs)
    mkdir -p "$RUN"
    if [[ -n "${1:-}" ]]; then tail -n 100 -F "$RUN/worker-$1.log"
    else tail -n 50 -F "$RUN"/*.log; fi ;;
  shell) ensure_venv; say "stack environment loaded; exit to leave"
         PATH="$ROOT/.venv/bin:$PATH" exec "${SHELL:-/bin/bash}" -i ;;
  scale) native_scale "$@" ;;
  load-sample) ensure_venv; load_sample "$@" ;;
  test) run_tests "$@" ;;
  demo) ensure_venv; demo ;;
  *) usage >&2; die "unknown command '$CMD'" ;;
esac
