# syntax=docker/dockerfile:1
#
# ETL Narrative Engine worker image.
#
#   docker build -t etl-narrative-engine:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp --env-file .env -p 8004:8004 etl-narrative-engine:0.1.0
#
# Layout: the project is built into a wheel and installed (not editable) into /opt/venv;
# the runtime stage copies only that virtualenv. The reader schemas and the bundled samples
# are package data (src/etl_engine/schemas, src/etl_engine/samples, read with
# importlib.resources). Development tooling (tools/: sample generator, benchmark, local
# S3 server) and tests are never in the build context, so never in the image.
#
# Runtime: non-root (uid 10001), read-only root file system friendly: the process writes
# only to /tmp (tmpfs / emptyDir) and /data (volume). No secrets are baked in: every ETL_
# setting comes from the environment at run time (.env.template lists them).
#
# The base image is pinned by digest (a tag can be re-pushed; a digest cannot change). To
# move to a new patch release or a rebuilt tag, resolve the tag's multi-platform digest and
# replace both parts:
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm --format '{{json .Manifest.Digest}}'
#   (or: crane digest python:3.11.13-slim-bookworm; or docker pull and read "Digest:")
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- builder: virtualenv with the pinned dependencies, then the project (a wheel) --------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, in their own layer: it is rebuilt only when requirements.lock
# changes. --require-hashes: every file must match the lock's sha256 (scripts/update-locks.sh
# writes them), a re-uploaded or tampered distribution fails the build. --no-deps + pip
# check: the lock must be complete, nothing unpinned sneaks in.
COPY requirements.lock requirements-build.lock /tmp/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r /tmp/requirements.lock \
    && pip check

# The project, as a wheel. Build backend from requirements-build.lock, hashed (not a
# runtime dependency, removed afterwards). The checks: package data resolves inside
# site-packages, and no development tooling came along.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r /tmp/requirements-build.lock \
    && pip install --no-deps --no-build-isolation . \
    && pip uninstall -y wheel setuptools \
    && pip check \
    && cd / && rm -rf /build \
    && python -m compileall -q /opt/venv/lib \
    && etl-engine --version \
    && python -c "import importlib.util as u; \
from etl_engine.domain import record_types as r; from etl_engine.ops import cli; \
assert 'site-packages' in str(r.schema_dir()), r.schema_dir(); \
[r.reader_schema(t) for t in r.SUPPORTED_RECORD_TYPES]; \
assert cli._default_samples().is_dir(), cli._default_samples(); \
assert u.find_spec('etl_devtools') is None, 'development tooling in the image'"

# --- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="etl-narrative-engine" \
      org.opencontainers.image.description="Message-queue ETL worker for Android Health Connect exports" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 etl \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin etl \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0750 /data

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root file system is read-only at run time (bytecode was
# compiled at build time). HOME and TMPDIR point at the writable tmpfs. The code's default
# dedup store (sqlite:///data/..., relative to the working directory) would land under the
# read-only root: the image's default puts the single-host SQLite store on the /data volume.
# A fleet sets ETL_DEDUP_URL=redis://... (compose and Kubernetes do).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    ETL_SIDECAR_HOST=0.0.0.0 \
    ETL_SIDECAR_PORT=8004 \
    ETL_DEDUP_URL=sqlite:////data/etl-dedup.sqlite3

WORKDIR /data
USER 10001:10001

# Sidecar HTTP server: /live, /ready, /health, /metrics.
EXPOSE 8004

# Liveness of the worker's event loop: `worker --check live` probes this container's
# sidecar (ETL_SIDECAR_PORT) and exits 0 on 200, else 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["etl-engine", "worker", "--check", "live"]

# SIGTERM: stop consuming, finish in-flight work within ETL_SHUTDOWN_GRACE_S, exit 0.
# Give the container a stop timeout above that (compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

ENTRYPOINT ["etl-engine"]
CMD ["worker"]
