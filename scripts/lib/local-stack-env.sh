# Sourced by setup-etl-dev.sh and manage-etl-stack.sh (native mode): the local stack's S3
# endpoint and keys in .env, so a plain `.venv/bin/etl-engine ...` (it reads .env from the
# working directory, beneath the environment) reaches the running local stack. Values a
# developer set already are kept; only missing or empty ones are written.
#   ETL_S3_ENDPOINT_URL       http://127.0.0.1:$S3_PORT (9000): the native S3 server
#   ETL_S3_ACCESS_KEY_ID      etl-local: moto takes any key; a native MinIO is started
#   ETL_S3_SECRET_ACCESS_KEY  etl-local-secret   with these as its root user
# RabbitMQ (guest on 127.0.0.1) and Redis (ETL_DEDUP_URL) come from .env.template already.

ensure_env_value() {  # NAME VALUE: set NAME=VALUE in .env if it is missing or empty
  local name=$1 value=$2 tmp
  grep -qE "^${name}=.+" .env && return 0
  tmp="$(mktemp)"
  awk -v n="$name" -v v="$value" '$0 ~ "^" n "=" { print n "=" v; done = 1; next }
                                  { print } END { if (!done) print n "=" v }' .env >"$tmp"
  cat "$tmp" >.env && rm -f "$tmp"
}

ensure_local_stack_env() {
  ensure_env_value ETL_S3_ENDPOINT_URL "http://127.0.0.1:${S3_PORT:-9000}"
  ensure_env_value ETL_S3_ACCESS_KEY_ID etl-local
  ensure_env_value ETL_S3_SECRET_ACCESS_KEY etl-local-secret
}
