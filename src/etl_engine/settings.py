"""One typed settings object, read from ``ETL_*`` environment variables.

Every field here is documented in ``.env.template`` (a test checks both lists agree).
Invalid values fail at start with an error that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "ETL_"
# Query parameters that carry credentials in redis://, amqp:// and similar URLs.
_QUERY_SECRET = re.compile(
    r"((?:^|[&;])(?:password|passwd|pass|pwd|secret|token|auth|access_key|secret_key)=)"
    r"[^&;#]*",
    re.IGNORECASE)


class ConfigError(Exception):
    """Raised when the environment does not describe a valid configuration."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=False
    )

    # --- broker -----------------------------------------------------------------------
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    exchange: str = "health_data_exchange"
    queue: str = "health_data_processing"
    dlq: str = ""  # empty: "{queue}.dlq"
    retry_delays_ms: str = "1000,5000,30000"
    delivery_limit: int = Field(5, ge=1, le=100)
    max_attempts: int = Field(4, ge=1, le=50)
    concurrency: int = Field(8, ge=1, le=1024)
    prefetch: int = Field(0, ge=0, le=4096)  # 0: same as concurrency
    amqp_heartbeat_s: int = Field(15, ge=0, le=600)
    # Longest wait for the broker to confirm a retry or dead-letter copy before the
    # original is nacked back to its queue (never acked without its copy).
    publish_confirm_timeout_s: float = Field(10.0, gt=0, le=600)
    # A message must carry the file's SHA-256 (content_hash or file_hash); false only
    # together with ETL_IDEMPOTENCY_SCHEME=opaque.
    require_content_hash: bool = True
    # upload-service: idempotency_key must be the upload service's derivation from user id
    # and file hash, and the key's file name must start with "{user_id}_"; opaque: any key
    # (a publisher can then claim another upload's key).
    idempotency_scheme: Literal["upload-service", "opaque"] = "upload-service"

    # --- object storage ---------------------------------------------------------------
    s3_endpoint_url: str = ""  # empty: AWS default endpoint
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_connect_timeout_s: float = Field(5.0, gt=0)
    s3_read_timeout_s: float = Field(30.0, gt=0)
    s3_client: Literal["obstore", "boto3"] = "obstore"  # GetObject + conditional PutObject
    # The start-up probe's scratch object (If-None-Match honoured?) lives under this prefix.
    probe_prefix: str = "_etl/probe/"
    # true: start even where the store ignores If-None-Match (HEAD then PUT, not atomic).
    unsafe_no_conditional_writes: bool = False
    bucket: str = "health-data"
    allowed_buckets: str = ""  # empty: only ETL_BUCKET
    raw_prefix: str = "raw/"
    training_prefix: str = "training/"
    quarantine_prefix: str = "quarantine/"
    # one outcome record per input ({prefix}{idempotency key}.json), the commit point
    outcome_prefix: str = "outcomes/"
    # monthly journals (etl-engine compact); outside training/ so that a reader of training/
    # counts each record once
    compacted_prefix: str = "compacted/"

    # --- dedup ------------------------------------------------------------------------
    dedup_url: str = "sqlite:///data/etl-dedup.sqlite3"  # embedded, one host; redis:// for a fleet
    dedup_prefix: str = "etl"
    lease_ttl_s: float = Field(20.0, ge=1)  # renewed every third of it while in flight
    done_ttl_s: int = Field(7 * 24 * 3600, ge=60)

    # --- limits -----------------------------------------------------------------------
    max_message_bytes: int = Field(256 * 1024, ge=1024)
    max_object_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_records: int = Field(2_000_000, ge=1)
    max_decompressed_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    message_timeout_s: float = Field(300.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    decode_processes: int = Field(1, ge=0, le=64)  # 0: decode in the worker process
    # Files decompressing to at most this many bytes run on a thread of the worker, bigger
    # ones in the decode processes; 0: every file in a decode process.
    decode_inline_max_bytes: int = Field(1024 * 1024, ge=0)
    # Files decompressing to at most this many bytes run on the event loop itself (no
    # thread hand-off); 0: never.
    decode_on_loop_max_bytes: int = Field(64 * 1024, ge=0, le=1024 * 1024)
    decode_memory_limit_mb: int = Field(1536, ge=64)

    # --- domain -----------------------------------------------------------------------
    quality_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_future_skew_s: int = Field(300, ge=0)
    origin_priority: str = ""  # comma-separated package names; empty: best coverage wins

    # --- process / observability ------------------------------------------------------
    # production (default): the safe defaults are enforced at start; development relaxes
    # the ones a laptop cannot meet (see .env.template and docs/security.md)
    env: Literal["production", "development"] = "production"
    worker_id: str = ""  # empty: "{hostname}-{pid}"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"  # auto: uvloop if installed
    # NAME=value file (e.g. a mounted ConfigMap) whose values override the environment for
    # the names it sets, at start and on each reload (SIGHUP, POST /admin/config/reload);
    # it may set only the reloadable settings (RELOADABLE)
    config_file: str = ""
    sidecar_host: str = "127.0.0.1"  # containers set 0.0.0.0 (the kubelet probes the pod IP)
    sidecar_port: int = Field(8004, ge=0, le=65535)  # 0: any free port (logged)
    # connections held at once; a new one beyond it closes the oldest
    sidecar_max_connections: int = Field(64, ge=1, le=4096)
    admin_token: SecretStr = SecretStr("")  # empty: no admin routes; else 32+ characters
    # broker URL of the admin API's DLQ reads (a user that may read the DLQ); empty: amqp_url
    admin_amqp_url: SecretStr = SecretStr("")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    otlp_endpoint: str = ""  # empty: tracing disabled
    # share of the traces this worker starts that are kept (a publisher's traceparent decides
    # for its own trace); reloadable
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    # required unless env=development: unkeyed hashes of guessable ids are reversible
    user_id_hash_key: SecretStr = Field(SecretStr(""), validate_default=True)
    # key of the training records' pseudonyms (source_id, subject_id, record_id); required
    # unless env=development. Another key than the log hashes: logs and training data must
    # not join. Changing it changes every new record's ids (docs/dataset.md).
    lineage_key: SecretStr = Field(SecretStr(""), validate_default=True)
    # true: training records also carry the raw lineage (bucket, key, message and
    # correlation ids) -- only for a private deployment; the worker warns at start
    full_lineage: bool = False

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence, highest first: arguments (command-line flags), ETL_CONFIG_FILE, the
        environment, a dotenv file (the CLI's .env), the defaults."""
        return (init_settings, ConfigFileSource(settings_cls, init_settings, dotenv_settings),
                env_settings, dotenv_settings, file_secret_settings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("user_id_hash_key", "lineage_key")
    @classmethod
    def _hash_key(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        if not value.get_secret_value() and info.data.get("env") != "development":
            raise ValueError("required (a random secret, e.g. `openssl rand -hex 32`) "
                             "unless ETL_ENV=development")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr) -> SecretStr:
        """The token stops /admin/drain; a short one can be guessed over the network."""
        token = value.get_secret_value()
        if token and len(token) < 32:
            raise ValueError("must be at least 32 characters when set "
                             "(e.g. `openssl rand -hex 32`); empty turns the admin routes off")
        return value

    @field_validator("raw_prefix", "training_prefix", "quarantine_prefix", "compacted_prefix",
                     "probe_prefix", "outcome_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value:
            raise ValueError("must be a relative prefix such as 'raw/'")
        return value if value.endswith("/") else value + "/"

    @field_validator("dedup_url")
    @classmethod
    def _dedup_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "sqlite:///")):
            raise ValueError("must start with redis://, rediss://, unix:// or sqlite:///")
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_tls(cls, value: str, info: ValidationInfo) -> str:
        """Spans carry message ids, keys' metadata and timings: TLS off the host in
        production. Plain http:// is fine to a collector on this host (loopback)."""
        if value and info.data.get("env", "production") == "production" \
                and not value.lower().startswith("https://") and not _is_loopback(value):
            raise ValueError("must be https:// when ETL_ENV=production (http:// only to a "
                             "loopback collector, or set ETL_ENV=development)")
        return value

    @field_validator("retry_delays_ms")
    @classmethod
    def _delays(cls, value: str) -> str:
        try:
            delays = [int(v) for v in _csv(value)]
        except ValueError as exc:
            raise ValueError("must be comma-separated integers (milliseconds)") from exc
        if not delays or any(d <= 0 for d in delays):
            raise ValueError("needs at least one positive delay")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.message_timeout_s >= 1800:
            raise ValueError("ETL_MESSAGE_TIMEOUT_S must stay under RabbitMQ's 30 min timeout")
        if not self.require_content_hash and self.idempotency_scheme != "opaque":
            raise ValueError("ETL_REQUIRE_CONTENT_HASH=false needs ETL_IDEMPOTENCY_SCHEME="
                             "opaque: the upload-service key is derived from the hash")
        others = (self.raw_prefix, self.training_prefix, self.quarantine_prefix)
        if any(p.startswith(self.compacted_prefix) or self.compacted_prefix.startswith(p)
               for p in others):
            raise ValueError("ETL_COMPACTED_PREFIX must not overlap ETL_RAW_PREFIX, "
                             "ETL_TRAINING_PREFIX or ETL_QUARANTINE_PREFIX (a reader of one "
                             "would count the journals' records again)")
        if any(p.startswith(self.outcome_prefix) or self.outcome_prefix.startswith(p)
               for p in (*others, self.compacted_prefix)):
            raise ValueError("ETL_OUTCOME_PREFIX must not overlap the raw, training, "
                             "quarantine or compacted prefixes")
        return self

    # --- derived ----------------------------------------------------------------------
    @cached_property
    def dlq_name(self) -> str:
        return self.dlq or f"{self.queue}.dlq"

    @cached_property
    def dlx_name(self) -> str:
        return f"{self.exchange}.dlx"

    @cached_property
    def retry_delays(self) -> list[int]:
        return [int(v) for v in _csv(self.retry_delays_ms)]

    def retry_queue_name(self, tier: int) -> str:
        """Quorum delay queue of ``tier`` (".retry.q.": the classic ".retry.{N}ms" queues of
        older releases cannot be redeclared as quorum queues; adapters/topology.py)."""
        return f"{self.queue}.retry.q.{self.retry_delays[tier]}ms"

    @cached_property
    def allowed_bucket_set(self) -> frozenset[str]:
        return frozenset(_csv(self.allowed_buckets)) or frozenset({self.bucket})

    @cached_property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency

    @cached_property
    def effective_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    @cached_property
    def origin_priority_list(self) -> list[str]:
        return _csv(self.origin_priority)

    def masked(self) -> dict[str, str]:
        """Effective settings for display, secrets masked (``config check``)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********" if value.get_secret_value() else ""
                if name in ("amqp_url", "admin_amqp_url"):
                    shown = _mask_url(value.get_secret_value())
                out[ENV_PREFIX + name.upper()] = shown
            elif name in ("dedup_url", "s3_endpoint_url", "otlp_endpoint"):
                out[ENV_PREFIX + name.upper()] = _mask_url(value)
            else:
                out[ENV_PREFIX + name.upper()] = str(value)
        return out


CONFIG_FILE_VAR = ENV_PREFIX + "CONFIG_FILE"
_CONFIG_FILE_MAX_BYTES = 64 * 1024
# The settings a reload swaps in (runtime/reload.py), and the only ones ETL_CONFIG_FILE may
# set: the file is re-read at every start, so a setting that needs a restart would take
# effect pod by pod, as each one happens to restart, and the fleet would run mixed values
# (two quality thresholds at once). Those belong in the environment (the ConfigMap
# config.env), whose change rolls every pod.
RELOADABLE = ("log_level", "log_format", "concurrency", "trace_sample_ratio", "admin_token")


class ConfigFileSource(PydanticBaseSettingsSource):
    """``ETL_CONFIG_FILE``: plain ``ETL_NAME=value`` lines (``#`` comments, blank lines; no
    quotes, as in .env.template), e.g. a ConfigMap mounted as a file. The names it sets
    override the environment; it is read again on every reload. It may set only the
    reloadable settings (``RELOADABLE``). Any other setting (it needs a restart), a name
    that is not a setting, a line that is not NAME=value or an unreadable file is a
    ConfigError naming the file and line, at start as on a reload: a typo must not pass
    silently, nor a setting that would reach the workers one restart at a time."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource,
                 dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init, self._dotenv = init, dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def _path(self) -> str:
        given = getattr(self._init, "init_kwargs", {}).get("config_file")
        if given is None:
            given = next((v for k, v in os.environ.items() if k.upper() == CONFIG_FILE_VAR),
                         None)
        if given is None:
            given = self._dotenv().get("config_file")
        return str(given or "")

    def __call__(self) -> dict[str, Any]:
        path = self._path()
        return read_config_file(path) if path else {}


def read_config_file(path: str) -> dict[str, str]:
    """field name -> value of an ETL_CONFIG_FILE (see ``ConfigFileSource``)."""
    where = f"{CONFIG_FILE_VAR} {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or type(exc).__name__})"
                          ) from None
    if len(data) > _CONFIG_FILE_MAX_BYTES:
        raise ConfigError(f"{where}: larger than {_CONFIG_FILE_MAX_BYTES} bytes")
    known = set(Settings.model_fields)
    out: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        field = name[len(ENV_PREFIX):].lower() if name.upper().startswith(ENV_PREFIX) else ""
        if not sep or not field:
            raise ConfigError(f"{where}:{n}: not an ETL_NAME=value line")
        if field not in known or field == "config_file":
            raise ConfigError(f"{where}:{n}: {name} is not a setting it may set")
        if field not in RELOADABLE:
            raise ConfigError(
                f"{where}:{n}: {ENV_PREFIX + field.upper()} needs a restart: set it in the "
                "environment/ConfigMap config.env (this file may set only "
                f"{', '.join(ENV_PREFIX + f.upper() for f in RELOADABLE)})")
        out[field] = value.strip()
    return out


def _is_loopback(url: str) -> bool:
    """http://localhost:4318, http://127.0.0.1:4318, http://[::1]:4318 stay on the host."""
    try:
        host = (urlsplit(url if "://" in url else "//" + url).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mask_url(url: str) -> str:
    """Mask the password in the userinfo and in query parameters (``?password=``)."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    base, sep, query = rest.partition("?")
    if "@" in base:
        creds, host = base.rsplit("@", 1)
        base = f"{creds.split(':', 1)[0]}:********@{host}"
    return f"{scheme}://{base}{sep}{_QUERY_SECRET.sub(_mask_param, query)}"


def _mask_param(match: re.Match[str]) -> str:
    return match.group(1) + "********"


def load_settings(env_file: str | os.PathLike[str] | None = None,
                  **overrides: object) -> Settings:
    """Read the environment; raise ConfigError naming each bad ``ETL_`` variable.

    ``env_file``: a dotenv file (the CLI's ``.env``) read beneath the environment: a
    variable set in the environment wins over the file. ``overrides`` (command-line flags)
    win over both."""
    if env_file is not None:
        overrides["_env_file"] = env_file
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            var = ENV_PREFIX + str(loc[0]).upper() if loc else "(settings)"
            problems.append(f"{var}: {err.get('msg')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def setting_names() -> list[str]:
    return sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)
