#!/bin/sh
# RabbitMQ users and permissions per role, vhost "/" (run once per broker, as an admin:
# `sh deployment/rabbitmq/permissions.sh`; idempotent). Passwords come from the environment,
# none is stored here.
#
#   etl-worker    consumes the work and retry queues, declares the topology, dead-letters
#                 (publishes to the DLX). It may NOT read the DLQ. Retry queues are the
#                 quorum ".retry.q.{N}ms" and, until deleted after an upgrade, the classic
#                 ".retry.{N}ms" of older releases (docs/reliability.md, "The broker path").
#   etl-uploader  the upload service: publishes announcements to the work exchange only.
#   etl-operator  `etl-engine dlq list|show|replay` and `status`: reads the DLQ and the queue
#                 depths, replays to the work exchange.
#
# The DLQ is operator-only: a dead-lettered message is kept whole (user id, object key) so
# that replay can re-publish it. docs/security.md, "Operator data".
# Permission triples are regular expressions: configure, write, read.
set -eu
: "${WORKER_PASSWORD:?}" "${UPLOADER_PASSWORD:?}" "${OPERATOR_PASSWORD:?}"
VHOST=${VHOST:-/}

user() {  # user NAME PASSWORD: create, or update the password
  rabbitmqctl add_user "$1" "$2" 2>/dev/null || rabbitmqctl change_password "$1" "$2"
}
user etl-worker "$WORKER_PASSWORD"
user etl-uploader "$UPLOADER_PASSWORD"
user etl-operator "$OPERATOR_PASSWORD"

rabbitmqctl set_permissions -p "$VHOST" etl-worker \
  '^health_data_(exchange(\.dlx)?|processing(\.dlq|\.retry\.(q\.)?[0-9]+ms)?)$' \
  '^health_data_(exchange(\.dlx)?|processing(\.dlq|\.retry\.(q\.)?[0-9]+ms)?)$' \
  '^health_data_(exchange(\.dlx)?|processing(\.retry\.(q\.)?[0-9]+ms)?)$'
rabbitmqctl set_permissions -p "$VHOST" etl-uploader '^$' '^health_data_exchange$' '^$'
rabbitmqctl set_permissions -p "$VHOST" etl-operator \
  '^$' \
  '^health_data_exchange$' \
  '^health_data_processing(\.dlq|\.retry\.(q\.)?[0-9]+ms)?$'
echo "rabbitmq permissions: etl-worker, etl-uploader, etl-operator set on vhost $VHOST"
