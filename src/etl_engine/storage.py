"""The S3 edge: one long-lived boto3 client, plain S3 calls only (MinIO, AWS, moto).

Calls are blocking; ``AsyncStorage`` runs them on a thread pool sized to the worker's
concurrency, which matches the client's connection pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from etl_engine import metrics, s3fast
from etl_engine.errors import PermanentError, TransientError
from etl_engine.settings import Settings

_MISSING = {"NoSuchKey", "404", "NotFound"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


@dataclass(frozen=True, slots=True)
class Download:
    body: bytes
    size: int
    sha256: str


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


def _transient_or_raise(exc: ClientError, stage: str) -> TransientError:
    status = _status(exc)
    if status >= 500 or status in (408, 429) or _code(exc) in {"SlowDown", "RequestTimeout"}:
        return TransientError("storage_unavailable", _code(exc), stage=stage)
    if _code(exc) in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        # Permissions are operator-fixable: retry, then DLQ, rather than quarantine data.
        return TransientError("storage_access_denied", stage=stage)
    raise PermanentError("storage_rejected", _code(exc), stage=stage) from None


def _fast_error(exc: Exception, stage: str) -> Exception:
    """The fast path's answers in the error taxonomy (others propagate unchanged)."""
    if isinstance(exc, s3fast.Missing):
        return PermanentError("object_missing", stage=stage)
    if isinstance(exc, s3fast.TooLarge):
        return PermanentError("object_too_large", stage=stage)
    if isinstance(exc, s3fast.Incomplete):
        return TransientError("download_incomplete", stage=stage)
    if isinstance(exc, s3fast.Unavailable):
        return TransientError("storage_unavailable", str(exc), stage=stage)
    return exc


class Storage:
    """Blocking S3 operations with the error taxonomy applied."""

    def __init__(self, client: Any, *, fast_path: bool = True) -> None:
        self.client = client
        # GetObject and the conditional PutObject skip botocore's per-call overhead when
        # the set-up allows it (s3fast); anything unusual is repeated through boto3.
        # ETL_S3_FAST_PATH=false is the operator's way back to boto3 for every call.
        self.fast = s3fast.FastS3.from_client(client) if fast_path else None

    def _fast(self) -> s3fast.FastS3 | None:
        if self.fast is None:
            return None
        telemetry = sys.modules.get("etl_engine.telemetry")
        if telemetry is not None and telemetry.enabled():
            return None  # tracing on: let the botocore instrumentation see every call
        return self.fast

    def download(self, bucket: str, key: str, *, max_bytes: int, use_fast: bool = True
                 ) -> Download:
        fast = self._fast() if use_fast else None
        if fast is not None:
            try:
                body = fast.get(bucket, key, max_bytes=max_bytes)
            except s3fast.Fallback:
                pass
            except Exception as exc:
                raise _fast_error(exc, "download") from None
            else:
                return Download(body=body, size=len(body),
                                sha256=hashlib.sha256(body).hexdigest())
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise PermanentError("object_missing", stage="download") from None
            raise _transient_or_raise(exc, "download") from None
        size = int(resp.get("ContentLength") or 0)
        stream = resp["Body"]
        if size > max_bytes:
            stream.close()
            raise PermanentError("object_too_large", stage="download")
        try:
            body = stream.read(max_bytes + 1)
        finally:
            stream.close()
        if len(body) > max_bytes:
            raise PermanentError("object_too_large", stage="download")
        if "ContentLength" in resp and len(body) != size:
            # The connection broke mid-body and read() handed back what it had: a network
            # fault to retry, not a bad file (it would be judged size_mismatch and quarantined).
            raise TransientError("download_incomplete", stage="download")
        return Download(body=body, size=len(body), sha256=hashlib.sha256(body).hexdigest())

    def put_if_absent(
        self, bucket: str, key: str, body: bytes, *, content_type: str,
        metadata: dict[str, str], use_fast: bool = True,
    ) -> bool:
        """Create ``key`` unless it exists. False means another writer got there first."""
        fast = self._fast() if use_fast else None
        if fast is not None:
            try:
                return fast.put_if_absent(bucket, key, body, content_type=content_type,
                                          metadata=metadata)
            except s3fast.Fallback:
                pass
            except Exception as exc:
                raise _fast_error(exc, "write") from None
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata=metadata,
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _code(exc) in _EXISTS or _status(exc) in (409, 412):
                return False
            if _code(exc) == "NotImplemented":
                return self._put_if_absent_fallback(bucket, key, body, content_type, metadata)
            raise _transient_or_raise(exc, "write") from None
        return True

    def _put_if_absent_fallback(
        self, bucket: str, key: str, body: bytes, content_type: str, metadata: dict[str, str]
    ) -> bool:
        # Servers without conditional writes: same key + deterministic content means a
        # racing second PUT rewrites identical bytes, never a second object.
        if self.exists(bucket, key):
            return False
        self.client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata
        )
        return True

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        except ClientError as exc:
            raise _transient_or_raise(exc, "write") from None

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        """Server-side copy; False when the source does not exist."""
        try:
            self.client.copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise _transient_or_raise(exc, "quarantine") from None
        return True

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING or _status(exc) == 404:
                return False
            raise _transient_or_raise(exc, "head") from None
        return True

    def get(self, bucket: str, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise PermanentError("object_missing", stage="get") from None
            raise _transient_or_raise(exc, "get") from None
        with resp["Body"] as stream:
            return stream.read()

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)

    def ping(self, bucket: str) -> None:
        self.client.head_bucket(Bucket=bucket)


class AsyncStorage:
    """Runs ``Storage`` calls on a dedicated pool so the event loop never blocks."""

    def __init__(self, storage: Storage, *, threads: int) -> None:
        self.sync = storage
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")
        self._afast: s3fast.AsyncFastS3 | None = None
        self._afast_loop: asyncio.AbstractEventLoop | None = None

    def _async_fast(self) -> s3fast.AsyncFastS3 | None:
        """The hot-path calls on the event loop itself (no thread hand-off), when the fast
        path applies; its connections belong to the loop that made them."""
        fast = self.sync._fast()
        if fast is None:
            return None
        loop = asyncio.get_running_loop()
        if self._afast is None or self._afast_loop is not loop:
            self._afast, self._afast_loop = s3fast.AsyncFastS3(fast), loop
        return self._afast

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # run_in_executor does not carry contextvars: copy them, so the S3 client's spans
        # join the caller's trace and log lines keep the message's bound context.
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: ctx.run(fn, *args, **kwargs))

    async def download(self, bucket: str, key: str, *, max_bytes: int) -> Download:
        dl: Download | None = None
        afast = self._async_fast()
        if afast is not None:
            try:
                body = await afast.get(bucket, key, max_bytes=max_bytes)
                dl = Download(body=body, size=len(body),
                              sha256=hashlib.sha256(body).hexdigest())
            except s3fast.Fallback:
                pass
            except Exception as exc:
                raise _fast_error(exc, "download") from None
        if dl is None:
            dl = await self.call(self.sync.download, bucket, key, max_bytes=max_bytes,
                                 use_fast=afast is None)
        metrics.BYTES_DOWNLOADED.inc(dl.size)  # counted here: quarantined files count too
        return dl

    async def put_if_absent(self, bucket: str, key: str, body: bytes, **kw: Any) -> bool:
        afast = self._async_fast()
        if afast is not None:
            try:
                return await afast.put_if_absent(bucket, key, body, **kw)
            except s3fast.Fallback:
                pass
            except Exception as exc:
                raise _fast_error(exc, "write") from None
        return bool(await self.call(self.sync.put_if_absent, bucket, key, body,
                                    use_fast=afast is None, **kw))

    async def put(self, bucket: str, key: str, body: bytes, **kw: Any) -> None:
        await self.call(self.sync.put, bucket, key, body, **kw)

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> bool:
        return await self.call(self.sync.copy, src_bucket, src_key, bucket, key)

    async def exists(self, bucket: str, key: str) -> bool:
        return await self.call(self.sync.exists, bucket, key)

    async def ping(self, bucket: str) -> None:
        await self.call(self.sync.ping, bucket)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
