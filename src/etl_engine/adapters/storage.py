"""The S3 edge (MinIO, AWS, moto): plain S3 calls only.

The two calls on every message, GetObject and the conditional PutObject, go through
``HotPath``: obstore (Rust ``object_store``) on the event loop, ~0.3 ms of CPU per call
where botocore spends ~1.2 ms, with SigV4, credential refresh, retries and header
validation maintained upstream. Everything else (list, copy, delete, HEAD, the operator
tools) is the long-lived boto3 client in ``Storage``, whose blocking calls ``AsyncStorage``
runs on a thread pool sized to the worker's concurrency. ``ETL_S3_CLIENT=boto3`` sends the
hot path through boto3 too. ``AsyncStorage`` is the ``ports.ObjectStore`` the runtime sees.

Each client's failures are read in one place (``_boto_error``, ``_obstore_error``) into the
same error taxonomy. A 409 (``ConditionalRequestConflict``: a competing conditional write is
in flight) is ``storage_conflict``, a retry, from every call, never "already exists".

The conditional create is what makes results exactly-once, so the worker checks at start
that the store honours ``If-None-Match: *`` (``check_conditional_writes``) and refuses to
start where it does not. Only under ``ETL_UNSAFE_NO_CONDITIONAL_WRITES=true`` does it fall
back to HEAD-then-PUT (``Storage.put_unless_exists``, not atomic), whichever client asks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import enum
import hashlib
import http.client
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import boto3
import obstore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import (
    AlreadyExistsError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store
from opentelemetry.trace import SpanKind
from urllib3.exceptions import HTTPError as Urllib3Error

from etl_engine.adapters.ports import Download
from etl_engine.errors import Disposition, EtlError, PermanentError, TransientError, classify
from etl_engine.observability import metrics, telemetry
from etl_engine.observability.logs import get_logger
from etl_engine.settings import ConfigError, Settings

__all__ = ["PROBE_KEY", "AsyncStorage", "ConditionalWrites", "Download", "HotPath", "Storage",
           "check_conditional_writes", "make_client", "make_hot_path",
           "probe_conditional_writes", "safe_metadata"]

log = get_logger("etl.storage")

_MISSING = {"NoSuchKey", "404", "NotFound"}
_EXISTS = {"PreconditionFailed", "412"}
# 409 ConditionalRequestConflict: another write to the key was in flight. The object may
# not exist yet, so it is retried, never read as "already exists".
_CONFLICT = {"ConditionalRequestConflict", "409"}
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>")
_T = TypeVar("_T")
# A body cut short: what urllib3/botocore raise mid-read (the connection closed or timed out).
_STREAM_ERRORS = (BotoCoreError, Urllib3Error, http.client.HTTPException, OSError)


def safe_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """User metadata as header-safe values.

    A value may come from a message (the message id): one with CR, LF or other
    non-printable characters could split or forge headers, so it is stored as an RFC 2047
    encoded word (the form S3 itself returns non-ASCII metadata in). Keys are ours and
    must be plain tokens.
    """
    out = {}
    for name, value in metadata.items():
        if not re.fullmatch(r"[a-z0-9-]{1,64}", name):
            raise ValueError(f"metadata key {name!r} is not a lower-case token")
        if not _PRINTABLE.match(value) or value.startswith("=?"):
            value = "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="
        out[name] = value
    return out


def make_client(settings: Settings, *, pool: int | None = None) -> Any:
    cfg = Config(
        region_name=settings.s3_region,
        max_pool_connections=max(pool or settings.concurrency, 4) + 2,
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"config": cfg}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id.get_secret_value():
        kwargs["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return boto3.session.Session().client("s3", **kwargs)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _boto_error(exc: ClientError, stage: str, *, names_object: bool = True) -> EtlError:
    """A boto3 failure in the error taxonomy: the one place boto3 errors are read (the
    twin of ``_obstore_error``). A 404 is a missing object only for a call naming one."""
    code, status = _code(exc), _status(exc)
    if code in _MISSING and names_object:
        return PermanentError("object_missing", stage=stage)
    if code in _CONFLICT or status == 409:
        # Not "exists" and not a bad file: a competing write was in flight (a copy or a
        # quarantine write too). The object may never appear, so the message is retried.
        return TransientError("storage_conflict", code, stage=stage)
    if status >= 500 or status in (408, 429) or code in {"SlowDown", "RequestTimeout"}:
        return TransientError("storage_unavailable", code, stage=stage)
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        # Permissions are operator-fixable: retry, then DLQ, rather than quarantine data.
        return TransientError("storage_access_denied", stage=stage)
    return PermanentError("storage_rejected", code, stage=stage)


class Storage:
    """Blocking S3 operations with the error taxonomy applied."""

    def __init__(self, client: Any) -> None:
        self.client = client
        # Set only by ``check_conditional_writes`` under ETL_UNSAFE_NO_CONDITIONAL_WRITES:
        # the store does not honour If-None-Match, creates are HEAD-then-PUT (not atomic).
        self.unsafe_check_then_put = False

    def _call(self, stage: str, operation: str, /, **params: Any) -> Any:
        """One client call; a refusal is raised in the error taxonomy."""
        try:
            return getattr(self.client, operation)(**params)
        except ClientError as exc:
            raise _boto_error(exc, stage) from None

    def _found(self, stage: str, operation: str, /, **params: Any) -> bool:
        """``_call`` where a missing object is an answer (False), not an error."""
        try:
            self._call(stage, operation, **params)
        except PermanentError as exc:
            if exc.reason == "object_missing":
                return False
            raise
        return True

    def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        resp = self._call("download", "get_object", Bucket=bucket, Key=key)
        size = int(resp.get("ContentLength") or 0)
        stream = resp["Body"]
        if size > max_bytes:
            stream.close()
            raise PermanentError("object_too_large", stage="download")
        try:
            body = stream.read(max_bytes + 1)
        except _STREAM_ERRORS:
            raise TransientError("download_incomplete", stage="download") from None
        finally:
            stream.close()
        if len(body) > max_bytes:
            raise PermanentError("object_too_large", stage="download")
        if "ContentLength" in resp and len(body) != size:
            # The connection broke mid-body and read() handed back what it had: a network
            # failure to retry, not a bad file (it would be judged size_mismatch and quarantined).
            raise TransientError("download_incomplete", stage="download")
        return Download(body=body, size=len(body), sha256=hashlib.sha256(body).hexdigest())

    def put_if_absent(
        self, bucket: str, key: str, body: bytes, *, content_type: str,
        metadata: dict[str, str],
    ) -> bool:
        """Create ``key`` unless it exists. False means another writer got there first."""
        if self.unsafe_check_then_put:
            return self.put_unless_exists(bucket, key, body, content_type=content_type,
                                          metadata=metadata)
        return _created(self.create(bucket, key, body, content_type=content_type,
                                    metadata=metadata))

    def create(self, bucket: str, key: str, body: bytes, *, content_type: str,
               metadata: dict[str, str]) -> bool | None:
        """PutObject with ``If-None-Match: *``: True created, False it exists (412), None:
        the server has no conditional writes (501; ``put_unless_exists`` then)."""
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata=safe_metadata(metadata),
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _code(exc) in _CONFLICT or _status(exc) == 409:  # in flight: never "exists"
                raise TransientError("storage_conflict", stage="write") from None
            if _code(exc) in _EXISTS or _status(exc) == 412:
                return False
            if _code(exc) == "NotImplemented" or _status(exc) == 501:
                return None
            raise _boto_error(exc, "write") from None
        return True

    def put_unless_exists(self, bucket: str, key: str, body: bytes, *, content_type: str,
                          metadata: dict[str, str]) -> bool:
        """The create for stores without conditional writes, used only under
        ETL_UNSAFE_NO_CONDITIONAL_WRITES (either client): a HEAD then a PUT, not atomic. Same
        key + deterministic content means a racing second PUT mostly rewrites identical
        bytes; a second run whose outcome differs can overwrite."""
        if self.exists(bucket, key):
            return False
        self._call("write", "put_object", Bucket=bucket, Key=key, Body=body,
                   ContentType=content_type, Metadata=safe_metadata(metadata))
        return True

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
        self._call("write", "put_object", Bucket=bucket, Key=key, Body=body,
                   ContentType=content_type)

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        """Server-side copy; False when the source does not exist."""
        return self._found("quarantine", "copy_object", Bucket=bucket, Key=key,
                           CopySource={"Bucket": src_bucket, "Key": src_key})

    def exists(self, bucket: str, key: str) -> bool:
        """False for a missing key, and for a missing bucket: a HEAD answer has no body to
        tell them apart, both are a 404."""
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING or _status(exc) == 404:
                return False
            raise _boto_error(exc, "head") from None
        return True

    def get(self, bucket: str, key: str) -> bytes:
        """The whole object; a body cut short is ``download_incomplete`` (botocore checks
        the length read against Content-Length), never returned short."""
        resp = self._call("get", "get_object", Bucket=bucket, Key=key)
        try:
            with resp["Body"] as stream:
                return bytes(stream.read())
        except _STREAM_ERRORS:
            raise TransientError("download_incomplete", stage="get") from None

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_modified(self, bucket: str, prefix: str) -> Iterator[tuple[str, datetime]]:
        """(key, last modified) of every object under ``prefix``, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["LastModified"]

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)

    def ping(self, bucket: str) -> None:
        """Raise unless the bucket answers; a missing bucket is a refusal (its HEAD's 404
        must not read as a missing object)."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            raise _boto_error(exc, "ping", names_object=False) from None


def _error_text(exc: BaseException, key: str) -> str:
    """An obstore error's text without the object key: the key is the uploader's choice
    and must not be able to look like a status or an error code."""
    return str(exc).replace(key, "") if key else str(exc)


def _obstore_status(exc: BaseException, key: str) -> int:
    """The HTTP status in an obstore error's text (0: no answer, e.g. a network error)."""
    found = _STATUS.search(_error_text(exc, key))
    return int(found.group(1)) if found else 0


def _obstore_code(exc: BaseException, key: str) -> str:
    """The S3 error code (``<Code>`` of the XML body) in an obstore error's text."""
    found = _CODE.search(_error_text(exc, key))
    return found.group(1) if found else ""


def _obstore_error(exc: Exception, stage: str, key: str) -> Exception:
    """An obstore failure in the error taxonomy, as ``_boto_error`` does for boto3.

    obstore has already retried 5xx answers, timeouts and broken connections by then. A
    ``ValueError`` is a path obstore will not send (the message's checks should have
    refused it): a bad key, never worth a retry.
    """
    if isinstance(exc, ValueError):
        return PermanentError("invalid_key", stage=stage)
    status, code = _obstore_status(exc, key), _obstore_code(exc, key)
    if isinstance(exc, FileNotFoundError) and code in ("", "NoSuchKey"):
        return PermanentError("object_missing", stage=stage)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
        return TransientError("storage_access_denied", stage=stage)
    if status == 409 or code in _CONFLICT:
        return TransientError("storage_conflict", stage=stage)
    if status in (0, 408, 429) or status >= 500 or code in {"SlowDown", "RequestTimeout"}:
        return TransientError("storage_unavailable", code or type(exc).__name__, stage=stage)
    return PermanentError("storage_rejected", code or str(status), stage=stage)


def _s3_span(method: str, bucket: str) -> Any:
    """Our own client span for a hot-path call (no library instruments obstore); named
    like botocore's so traces look the same whichever client served the call."""
    return telemetry.span(f"S3.{method}", kind=SpanKind.CLIENT, attributes={
        "rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": method,
        "aws.s3.bucket": bucket})


class HotPath:
    """GetObject with a size cap and the conditional create PutObject, on obstore.

    Async on the caller's event loop (obstore's own Tokio runtime does the I/O): no thread
    hand-off per call. One ``S3Store`` per bucket (a store is bound to a bucket), each
    with its own keep-alive pool.
    """

    def __init__(self, settings: Settings, *, pool: int | None = None) -> None:
        self.settings = settings
        self._pool = max(pool or settings.concurrency, 4) + 2
        self._stores: dict[str, S3Store] = {}

    def _store(self, bucket: str) -> S3Store:
        store = self._stores.get(bucket)
        if store is None:
            store = self._stores[bucket] = self._make_store(bucket)
        return store

    def _make_store(self, bucket: str) -> S3Store:
        """Same endpoint, region, credentials, timeouts and retry budget as ``make_client``;
        empty keys: obstore's own AWS credential chain (env, web identity, ECS, IMDS)."""
        settings = self.settings
        config: dict[str, Any] = {"region": settings.s3_region,
                                  "virtual_hosted_style_request": False}
        if settings.s3_endpoint_url:
            config["endpoint"] = settings.s3_endpoint_url
        if settings.s3_access_key_id.get_secret_value():
            config["access_key_id"] = settings.s3_access_key_id.get_secret_value()
            config["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
        read = timedelta(seconds=settings.s3_read_timeout_s)
        connect = timedelta(seconds=settings.s3_connect_timeout_s)
        return S3Store(
            bucket, config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": settings.s3_endpoint_url.startswith("http://"),
                "connect_timeout": connect, "read_timeout": read,
                "timeout": connect + 2 * read,  # a whole call, the body included
                "pool_max_idle_per_host": str(self._pool),
            },
            retry_config={"max_retries": 2, "retry_timeout": connect + read,
                          "backoff": {"init_backoff": timedelta(milliseconds=50),
                                      "max_backoff": timedelta(seconds=1), "base": 2}},
        )

    async def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        """The object, refused from its Content-Length before the body when too large."""
        with _s3_span("GetObject", bucket):
            try:
                result = await obstore.get_async(self._store(bucket), key)
            except Exception as exc:
                raise _obstore_error(exc, "download", key) from None
            if int(result.meta["size"]) > max_bytes:
                raise PermanentError("object_too_large", stage="download")
            try:
                body = bytes(await result.bytes_async())
            except Exception:
                # The connection broke mid-body (after obstore's own retries): a network
                # failure to retry, not a bad file.
                raise TransientError("download_incomplete", stage="download") from None
        if len(body) != int(result.meta["size"]) or len(body) > max_bytes:
            raise TransientError("download_incomplete", stage="download")
        return Download(body=body, size=len(body), sha256=hashlib.sha256(body).hexdigest())

    async def create(self, bucket: str, key: str, body: bytes, *, content_type: str,
                     metadata: dict[str, str]) -> bool | None:
        """PutObject with ``If-None-Match: *``: True created, False it exists (412), None:
        the server has no conditional writes (501); the caller falls back."""
        attributes: dict[str, str] = {"Content-Type": content_type, **safe_metadata(metadata)}
        with _s3_span("PutObject", bucket):
            try:
                await obstore.put_async(self._store(bucket), key, body, mode="create",
                                        attributes=attributes,  # type: ignore[arg-type]
                                        use_multipart=False)
            except AlreadyExistsError as exc:
                if _obstore_status(exc, key) == 409 or _obstore_code(exc, key) in _CONFLICT:
                    raise TransientError("storage_conflict", stage="write") from None
                return False
            except Exception as exc:
                if _obstore_code(exc, key) == "NotImplemented" \
                        or _obstore_status(exc, key) == 501:
                    return None
                raise _obstore_error(exc, "write", key) from None
        return True


def _created(answer: bool | None) -> bool:
    """A conditional create's answer; a 501 (no conditional writes) is refused here: the
    start-up check allows the HEAD-then-PUT fallback only under the unsafe setting. A
    retry, not a quarantine: the file is fine, the store is not (the DLQ after the last)."""
    if answer is None:
        raise TransientError("conditional_writes_unsupported", stage="write")
    return answer


def make_hot_path(settings: Settings, *, pool: int | None = None) -> HotPath | None:
    """The worker's hot-path client per ``ETL_S3_CLIENT`` (None: boto3 serves it)."""
    return HotPath(settings, pool=pool) if settings.s3_client == "obstore" else None


class AsyncStorage:
    """The ``ObjectStore`` the worker uses: ``Storage`` calls on a dedicated thread pool so
    the event loop never blocks, the hot path on obstore when ``hot`` is given."""

    def __init__(self, storage: Storage, *, threads: int, hot: HotPath | None = None
                 ) -> None:
        self.sync = storage
        self.hot = hot  # None: GetObject and the conditional PutObject through boto3 too
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        # run_in_executor does not carry contextvars: copy them, so the S3 client's spans
        # join the caller's trace and log lines keep the message's bound context.
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: ctx.run(fn, *args, **kwargs))

    async def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        if self.hot is not None:
            dl = await self.hot.download(bucket, key, max_bytes=max_bytes)
        else:
            dl = await self.call(self.sync.download, bucket, key, max_bytes=max_bytes)
        metrics.BYTES_DOWNLOADED.inc(dl.size)  # counted here: quarantined files count too
        return dl

    async def create(self, bucket: str, key: str, body: bytes, *, content_type: str,
                     metadata: dict[str, str]) -> bool | None:
        """The conditional create on the hot-path client, no fallback: True created, False
        it exists, None the server has no conditional writes (501)."""
        if self.hot is not None:
            return await self.hot.create(bucket, key, body, content_type=content_type,
                                         metadata=metadata)
        return await self.call(self.sync.create, bucket, key, body,
                               content_type=content_type, metadata=metadata)

    async def put_if_absent(self, bucket: str, key: str, body: bytes, *, content_type: str,
                            metadata: dict[str, str]) -> bool:
        if self.sync.unsafe_check_then_put:  # ETL_UNSAFE_NO_CONDITIONAL_WRITES, see check
            return await self.call(self.sync.put_unless_exists, bucket, key, body,
                                   content_type=content_type, metadata=metadata)
        return _created(await self.create(bucket, key, body, content_type=content_type,
                                          metadata=metadata))

    async def put(self, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
        await self.call(self.sync.put, bucket, key, body, content_type=content_type)

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        return await self.call(self.sync.copy, src_bucket, src_key, bucket, key)

    async def exists(self, bucket: str, key: str) -> bool:
        return await self.call(self.sync.exists, bucket, key)

    async def ping(self, bucket: str) -> None:
        await self.call(self.sync.ping, bucket)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- the start-up check: does the store honour If-None-Match? --------------------------
PROBE_KEY = "conditional-write-probe"


class ConditionalWrites(enum.StrEnum):
    """The probe's verdict on the store."""

    HONOURED = "honoured"  # the second create was refused (412)
    IGNORED = "ignored"  # the second create overwrote: If-None-Match is ignored
    NOT_IMPLEMENTED = "not_implemented"  # 501 to If-None-Match


async def probe_conditional_writes(storage: AsyncStorage, bucket: str, prefix: str
                                   ) -> ConditionalWrites:
    """Create ``{prefix}conditional-write-probe`` twice with ``If-None-Match: *``, on the
    worker's own hot-path client; the second create must be refused.

    Why a fixed key, never deleted: the worker needs only PutObject under the prefix (no
    DeleteObject), one 6-byte object per bucket stays, and a store that honours the header
    refuses even the first create once it exists. Errors are raised in the taxonomy
    (a 409 from a worker starting at the same moment is ``storage_conflict``).
    """
    key = f"{prefix}{PROBE_KEY}"
    answers = [await storage.create(bucket, key, b"probe\n", content_type="text/plain",
                                    metadata={"etl-probe": "conditional-write"})
               for _ in range(2)]
    if None in answers:
        return ConditionalWrites.NOT_IMPLEMENTED
    return ConditionalWrites.IGNORED if answers[1] else ConditionalWrites.HONOURED


async def check_conditional_writes(storage: AsyncStorage, settings: Settings, *,
                                   stop: asyncio.Event | None = None
                                   ) -> ConditionalWrites | None:
    """The worker's start-up gate: raise ``ConfigError`` (exit 78) unless the store honours
    ``If-None-Match: *``, or ETL_UNSAFE_NO_CONDITIONAL_WRITES=true accepts HEAD-then-PUT
    (logged loudly, and ``storage`` switched to it). Waits while the store cannot answer
    (down, access denied: retried until ``stop``); None if stopped before an answer."""
    verdict = await _probe_until_answered(storage, settings, stop)
    if verdict is None or verdict is ConditionalWrites.HONOURED:
        if verdict is not None:
            log.info("conditional_writes_honoured", bucket=settings.bucket)
        return verdict
    if not settings.unsafe_no_conditional_writes:
        raise ConfigError(
            f"ETL_UNSAFE_NO_CONDITIONAL_WRITES: the object store does not honour "
            f"If-None-Match: * (probe under ETL_PROBE_PREFIX in ETL_BUCKET: {verdict}); "
            "results would not be exactly-once. Use a store with conditional writes (AWS "
            "S3, a current MinIO), or set ETL_UNSAFE_NO_CONDITIONAL_WRITES=true to accept "
            "a HEAD-then-PUT that a race can overwrite")
    storage.sync.unsafe_check_then_put = True
    log.warning("unsafe_no_conditional_writes", verdict=str(verdict), bucket=settings.bucket,
                hint="ETL_UNSAFE_NO_CONDITIONAL_WRITES=true: results are written HEAD-then-"
                     "PUT, not atomic; concurrent or repeated runs can overwrite a result")
    return verdict


async def _probe_until_answered(storage: AsyncStorage, settings: Settings,
                                stop: asyncio.Event | None) -> ConditionalWrites | None:
    """The probe, retried with backoff while the store cannot answer; a refusal that no
    retry fixes (no such bucket, a rejected request) is a configuration error. Each try
    is bounded as a whole: a request that never completes (no answer and no error, seen
    once under load) must not hold the start silently; it is logged and tried again."""
    delay = 0.5
    budget = 2 * (settings.s3_connect_timeout_s + 2 * settings.s3_read_timeout_s)
    while stop is None or not stop.is_set():
        try:
            return await asyncio.wait_for(probe_conditional_writes(
                storage, settings.bucket, settings.probe_prefix), budget)
        except Exception as exc:
            disposition, reason = ((Disposition.RETRY, "probe_timeout")
                                   if isinstance(exc, TimeoutError) else classify(exc))
            if disposition is not Disposition.RETRY:
                detail = getattr(exc, "detail", "")
                raise ConfigError(
                    f"ETL_BUCKET: the start-up probe could not write under ETL_PROBE_PREFIX "
                    f"({reason}{': ' + detail if detail else ''})") from None
            log.warning("storage_probe_retry", reason=reason, retry_in=delay,
                        hint="the worker needs s3:PutObject under ETL_PROBE_PREFIX")
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 5.0)
    return None
