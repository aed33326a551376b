#!/bin/sh
# One-shot MinIO set-up for the compose stack (the `minio-init` service, image minio/mc).
# Idempotent: safe to run on every `docker compose up`.
#   - the bucket (ETL_BUCKET, default health-data)
#   - user etl-worker   with etl-worker-policy.json:   read raw/*, write training/* and
#                        quarantine/*, list/head the bucket (nothing else)
#   - user etl-uploader with etl-uploader-policy.json: write raw/* (what the phone upload
#                        service does; used by `etl-engine load-samples` in compose)
#   - user etl-operator with etl-operator-policy.json: the operator tools (quarantine
#                        list/show/release, compact, dlq replay): read raw/, training/,
#                        quarantine/, compacted/, outcomes/; write raw/* and compacted/*;
#                        delete quarantine/* and outcomes/* (release, replay)
# quarantine/ is operator-only: its copies and .reason.json files hold the full original
# message (user id, key) so that release can re-publish it. The worker writes there but may
# not read it back, the uploader may read neither quarantine/ nor training/ (explicit Deny
# statements, so a policy attached later cannot widen it). docs/security.md, "Operator data".
# Credentials come from the environment (see docker-compose.yml); none are stored here.
set -eu

: "${MINIO_URL:=http://minio:9000}"
: "${BUCKET:=health-data}"
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${WORKER_ACCESS_KEY:?}" "${WORKER_SECRET_KEY:?}"
: "${UPLOADER_ACCESS_KEY:?}" "${UPLOADER_SECRET_KEY:?}"
: "${OPERATOR_ACCESS_KEY:?}" "${OPERATOR_SECRET_KEY:?}"
POLICIES=/policies

mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$BUCKET"

# The policy files name the bucket; refuse to grant on a different one by accident.
for f in "$POLICIES"/etl-*-policy.json; do
  grep -q "arn:aws:s3:::$BUCKET\"" "$f" || {
    echo "minio-init: $f does not grant on bucket $BUCKET; edit it to match ETL_BUCKET" >&2
    exit 1
  }
done

# `policy create` replaces a policy of the same name; `user add` updates the secret.
mc admin policy create local etl-worker "$POLICIES/etl-worker-policy.json"
mc admin policy create local etl-uploader "$POLICIES/etl-uploader-policy.json"
mc admin policy create local etl-operator "$POLICIES/etl-operator-policy.json"
mc admin user add local "$WORKER_ACCESS_KEY" "$WORKER_SECRET_KEY"
mc admin user add local "$UPLOADER_ACCESS_KEY" "$UPLOADER_SECRET_KEY"
mc admin user add local "$OPERATOR_ACCESS_KEY" "$OPERATOR_SECRET_KEY"

attach() {  # attach POLICY USER; "already in effect" is fine, verified below
  mc admin policy attach local "$1" --user "$2" >/dev/null 2>&1 || true
  if ! mc admin user info local "$2" --json | grep -q "\"policyName\":\"[^\"]*$1"; then
    echo "minio-init: policy $1 is not attached to user $2" >&2
    exit 1
  fi
  echo "policy $1 attached to $2"
}
attach etl-worker "$WORKER_ACCESS_KEY"
attach etl-uploader "$UPLOADER_ACCESS_KEY"
attach etl-operator "$OPERATOR_ACCESS_KEY"
echo "minio-init: bucket $BUCKET and users ready"
