"""Uploads into a ``MemoryObjectStore`` exactly as ``helpers.upload``/``upload_bytes`` put
them into S3: the upload service's key layout, its message and idempotency key.

Why: the pipeline tests on the fakes must feed the pipeline the same inputs as the
end-to-end tests, or they would test a different contract.
"""

from __future__ import annotations

from pathlib import Path

from etl_engine.adapters.publisher import Upload, describe_upload
from etl_engine.settings import Settings
from helpers import labelled_user, new_user, upload_key
from support.fakes import MemoryObjectStore


def upload_bytes_to(store: MemoryObjectStore, settings: Settings, record_type: str,
                    name: str, data: bytes, user_id: str = "") -> Upload:
    """``data`` stored and described as the upload service would, by a fresh user named
    after ``name`` (``helpers.upload_bytes`` on the fake)."""
    user = user_id or labelled_user(new_user(), name)
    key = upload_key(settings, record_type, user)
    store.put_object(settings.bucket, key, data, content_type="avro/binary")
    return describe_upload(settings, record_type, key, data, user)


def upload_to(store: MemoryObjectStore, settings: Settings, record_type: str, path: Path,
              user_id: str = "") -> Upload:
    """``path`` uploaded by a fresh user (``helpers.upload`` on the fake)."""
    return upload_bytes_to(store, settings, record_type, path.name, path.read_bytes(),
                           user_id=user_id or new_user())
