"""Conditional S3 writes and deletes for the operator tools (compact, quarantine release).

Why: a tool that reads, decides, then writes or deletes must not act on a state that changed
in between (a worker's new quarantine, a concurrent compaction). The S3 preconditions do
that check at the store: ``If-None-Match: *`` creates only a new object, ``If-Match: <etag>``
replaces or deletes only the version that was read. A server without conditional deletes
(``NotImplemented``) gets a HEAD re-check of the ETag right before a plain delete instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from etl_engine.adapters.storage import Storage, safe_metadata

_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412"}
_CONFLICT = {"ConditionalRequestConflict", "409"}


class Unsupported(RuntimeError):
    """The store ignores or refuses S3 preconditions; the tool must not run against it."""


class Deleted(StrEnum):
    DELETED = "deleted"
    CHANGED = "changed"  # another version is there now: left alone
    GONE = "gone"  # nothing there any more


@dataclass(frozen=True, slots=True)
class Head:
    """What a HEAD says about an object: its version (ETag), size and user metadata."""

    etag: str
    size: int
    metadata: dict[str, str]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is(exc: ClientError, codes: set[str]) -> bool:
    return _code(exc) in codes or str(_status(exc)) in codes


def head(storage: Storage, bucket: str, key: str) -> Head | None:
    """The object's ETag, size and metadata; None when there is no such object."""
    try:
        resp = storage.client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _is(exc, _MISSING):
            return None
        raise
    return Head(str(resp["ETag"]), int(resp.get("ContentLength") or 0),
                {k.lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()})


def get(storage: Storage, bucket: str, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and the ETag of exactly that version; None when missing."""
    try:
        resp = storage.client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _is(exc, _MISSING):
            return None
        raise
    with resp["Body"] as stream:
        return bytes(stream.read()), str(resp["ETag"])


def put(storage: Storage, bucket: str, key: str, body: bytes, *, replaces: str | None,
        content_type: str, metadata: dict[str, str]) -> str | None:
    """Create ``key`` (``replaces`` None: ``If-None-Match: *``) or replace exactly the version
    ``replaces`` names (``If-Match``). Returns the new ETag, or None when the precondition
    failed (another writer got there first, or the object went away)."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body,
                              "ContentType": content_type, "Metadata": safe_metadata(metadata)}
    if replaces is None:
        params["IfNoneMatch"] = "*"
    else:
        params["IfMatch"] = replaces
    try:
        resp = storage.client.put_object(**params)
    except ClientError as exc:
        if _is(exc, _PRECONDITION | _CONFLICT | _MISSING):
            return None
        if _code(exc) == "NotImplemented" or _status(exc) == 501:
            raise Unsupported("the object store does not support conditional writes "
                              "(If-None-Match / If-Match on PutObject)") from None
        raise
    return str(resp["ETag"])


def delete(storage: Storage, bucket: str, key: str, etag: str) -> Deleted:
    """Delete ``key`` only while it is still the version ``etag``.

    The ETag is re-checked with a HEAD first (the whole check on a server that ignores
    ``If-Match`` on DeleteObject), then the delete itself carries ``If-Match``.
    """
    now = head(storage, bucket, key)
    if now is None:
        return Deleted.GONE
    if now.etag != etag:
        return Deleted.CHANGED
    try:
        storage.client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except ClientError as exc:
        if _is(exc, _PRECONDITION | _CONFLICT):
            return Deleted.CHANGED
        if _is(exc, _MISSING):
            return Deleted.GONE
        if _code(exc) != "NotImplemented" and _status(exc) != 501:
            raise
        storage.client.delete_object(Bucket=bucket, Key=key)  # checked by the HEAD above
    return Deleted.DELETED
