"""The ``ObjectStore`` contract: one set of tests, run against the in-memory fake and the
real S3 adapter on both hot-path clients (obstore, boto3) over the local S3 server.

Why: the pipeline tests run on ``MemoryObjectStore``; they only prove something if the fake
answers as S3 does. Each test here must pass for all three, with the same error classes,
reasons and stages. Every real run uses the test's own bucket (``settings``: test-{run id}).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from etl_engine.adapters.ports import ObjectStore
from etl_engine.adapters.storage import AsyncStorage, Storage, make_client, make_hot_path
from etl_engine.errors import PermanentError
from support.fakes import MemoryObjectStore

NDJSON = "application/x-ndjson"
META = {"message-id": "m-1", "record-type": "StepsRecord"}
ODD_KEY = "raw/StepsRecord/2026/11/01/odd key=+&é ü.avro"


@dataclass(frozen=True)
class Subject:
    store: ObjectStore
    bucket: str

    @property
    def absent_bucket(self) -> str:
        return f"{self.bucket}-absent"  # never created


@pytest.fixture(params=["memory", "s3-obstore", "s3-boto3"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        yield Subject(MemoryObjectStore("contract-bucket"), "contract-bucket")
        return
    settings = request.getfixturevalue("settings")  # creates this test's bucket
    s = settings.model_copy(update={"s3_client": request.param.removeprefix("s3-")})
    store = AsyncStorage(Storage(make_client(s)), threads=4, hot=make_hot_path(s))
    assert (store.hot is not None) == (s.s3_client == "obstore")
    try:
        yield Subject(store, s.bucket)
    finally:
        store.close()


async def _expect(call: object, reason: str, stage: str) -> PermanentError:
    with pytest.raises(PermanentError) as info:
        await call  # type: ignore[misc]
    assert (info.value.reason, info.value.stage) == (reason, stage)
    return info.value


async def test_put_then_download_round_trips(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    data = b"Obj\x01" + bytes(range(256)) * 8
    for key, body in ((ODD_KEY, data), ("raw/StepsRecord/empty.avro", b"")):
        await store.put(bucket, key, body, content_type="avro/binary")
        got = await store.download(bucket, key, max_bytes=len(body))
        assert (got.body, got.size) == (body, len(body))
        assert got.sha256 == hashlib.sha256(body).hexdigest()
        assert await store.exists(bucket, key)


async def test_download_is_capped_not_truncated(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put(bucket, "raw/a.avro", b"x" * 1000, content_type="avro/binary")
    assert (await store.download(bucket, "raw/a.avro", max_bytes=1000)).size == 1000
    await _expect(store.download(bucket, "raw/a.avro", max_bytes=999),
                  "object_too_large", "download")


async def test_a_missing_object(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    await _expect(store.download(bucket, "raw/never.avro", max_bytes=100),
                  "object_missing", "download")
    assert await store.exists(bucket, "raw/never.avro") is False
    assert await store.copy(bucket, "raw/never.avro", bucket, "quarantine/never.avro") is False
    assert await store.exists(bucket, "quarantine/never.avro") is False


async def test_a_missing_bucket_is_a_refusal_not_a_missing_object(subject: Subject) -> None:
    store, bucket, absent = subject.store, subject.bucket, subject.absent_bucket
    await _expect(store.download(absent, "raw/x.avro", max_bytes=100),
                  "storage_rejected", "download")
    await _expect(store.put_if_absent(absent, "training/x.jsonl", b"x", content_type=NDJSON,
                                      metadata=META), "storage_rejected", "write")
    await _expect(store.put(absent, "quarantine/x.json", b"{}",
                            content_type="application/json"), "storage_rejected", "write")
    await store.put(bucket, "raw/x.avro", b"x", content_type="avro/binary")
    await _expect(store.copy(absent, "raw/x.avro", bucket, "quarantine/x.avro"),
                  "storage_rejected", "quarantine")
    await _expect(store.copy(bucket, "raw/x.avro", absent, "quarantine/x.avro"),
                  "storage_rejected", "quarantine")
    assert await store.exists(absent, "raw/x.avro") is False  # HEAD: a 404 either way
    await store.ping(bucket)
    await _expect(store.ping(absent), "storage_rejected", "ping")


async def test_put_if_absent_creates_once_and_never_overwrites(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    key = "training/x/2026/11/01/k é.jsonl"
    assert await store.put_if_absent(bucket, key, b"one\n", content_type=NDJSON,
                                     metadata=META) is True
    assert await store.put_if_absent(bucket, key, b"two\n", content_type=NDJSON,
                                     metadata=META) is False
    assert (await store.download(bucket, key, max_bytes=100)).body == b"one\n"
    await store.put(bucket, key, b"three\n", content_type=NDJSON)  # put does overwrite
    assert (await store.download(bucket, key, max_bytes=100)).body == b"three\n"


async def test_concurrent_creates_have_one_winner(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    bodies = [f"writer {i}\n".encode() for i in range(8)]
    created = await asyncio.gather(*(
        store.put_if_absent(bucket, "training/race.jsonl", body, content_type=NDJSON,
                            metadata=META) for body in bodies))
    assert sum(created) == 1
    winner = bodies[created.index(True)]
    assert (await store.download(bucket, "training/race.jsonl", max_bytes=100)).body == winner


async def test_metadata_keys_must_be_tokens(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    with pytest.raises(ValueError, match="lower-case token"):
        await store.put_if_absent(bucket, "training/meta.jsonl", b"x", content_type=NDJSON,
                                  metadata={"Message Id": "m-1"})
    assert await store.exists(bucket, "training/meta.jsonl") is False
    # a value with CR/LF is stored (encoded), never refused: it came from a message
    assert await store.put_if_absent(bucket, "training/meta.jsonl", b"x", content_type=NDJSON,
                                     metadata={"message-id": "m\r\nx-amz-meta-evil: 1"})


async def test_copy_keeps_the_source(subject: Subject) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put(bucket, ODD_KEY, b"raw bytes", content_type="avro/binary")
    assert await store.copy(bucket, ODD_KEY, bucket, "quarantine/copy.avro") is True
    assert (await store.download(bucket, "quarantine/copy.avro", max_bytes=100)).body == \
        b"raw bytes"
    assert (await store.download(bucket, ODD_KEY, max_bytes=100)).body == b"raw bytes"
