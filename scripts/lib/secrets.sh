# Sourced by manage-etl-stack.sh and setup-etl-dev.sh: random secrets in .env when it has
# none. Written into .env only, never into .env.template or a commit.
#   ETL_USER_ID_HASH_KEY  workers refuse to start without it unless ETL_ENV=development
#   ETL_LINEAGE_KEY       likewise: the key of the training records' pseudonyms
#   REDIS_PASSWORD        the compose stack's Redis requires one (deployment/docker-compose.yml)

ensure_env_secret() {  # NAME: set NAME=<64 hex digits> in .env if it is missing or empty
  local name=$1 value tmp
  grep -qE "^${name}=.+" .env && return 0
  value="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
  tmp="$(mktemp)"
  awk -v n="$name" -v v="$value" '$0 ~ "^" n "=" { print n "=" v; done = 1; next }
                                  { print } END { if (!done) print n "=" v }' .env >"$tmp"
  cat "$tmp" >.env && rm -f "$tmp"
}

ensure_env_secrets() {
  ensure_env_secret ETL_USER_ID_HASH_KEY
  ensure_env_secret ETL_LINEAGE_KEY
  ensure_env_secret REDIS_PASSWORD
}
