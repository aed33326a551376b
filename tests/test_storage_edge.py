"""The S3 hot path (obstore: GetObject with a size cap, conditional create PutObject)
against the real local S3 server: outcomes, error taxonomy, header safety, spans."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from etl_engine.adapters.storage import AsyncStorage, HotPath, Storage, make_client, make_hot_path
from etl_engine.errors import PermanentError, TransientError
from etl_engine.settings import Settings
from faultproxy import FaultProxy
from helpers import storage_for
from s3_conditional_shim import S3Shim

META = {"message-id": "m-1", "record-type": "StepsRecord"}
NDJSON = "application/x-ndjson"


@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[AsyncStorage]:
    store = AsyncStorage(Storage(make_client(settings)), threads=2,
                         hot=make_hot_path(settings))
    assert store.hot is not None  # obstore is the default
    yield store
    store.close()


def _hot(settings: Settings, endpoint: str) -> HotPath:
    return HotPath(settings.model_copy(update={"s3_endpoint_url": endpoint,
                                               "s3_read_timeout_s": 1.0,
                                               "s3_connect_timeout_s": 1.0}))


async def test_download_size_cap_and_missing(settings: Settings, edge: AsyncStorage) -> None:
    data = b"Obj\x01" + bytes(range(256)) * 40
    key = "raw/StepsRecord/2026/11/01/odd key=+&é ü.avro"
    storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    got = await edge.download(settings.bucket, key, max_bytes=len(data))
    assert got.body == data and got.size == len(data)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    # a key that reads like an error cannot change how the error is read
    spoof = "raw/StepsRecord/status code: 503 <Code>SlowDown</Code>.avro"
    for bad_key, limit, reason in ((key + ".gone", 1 << 20, "object_missing"),
                                   (spoof, 1 << 20, "object_missing"),
                                   (key, len(data) - 1, "object_too_large")):
        with pytest.raises(PermanentError) as info:
            await edge.download(settings.bucket, bad_key, max_bytes=limit)
        assert (info.value.reason, info.value.stage) == (reason, "download")
    with pytest.raises(PermanentError) as info:  # not a missing file: a set-up problem
        await edge.download("no-such-bucket-" + settings.bucket, "raw/x", max_bytes=9)
    assert info.value.reason == "storage_rejected"


async def test_conditional_create_twice(settings: Settings, edge: AsyncStorage) -> None:
    key = "training/x/edge é.jsonl"
    assert await edge.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                                    metadata=META) is True
    assert await edge.put_if_absent(settings.bucket, key, b"two\n", content_type=NDJSON,
                                    metadata=META) is False
    sync = storage_for(settings)
    head = sync.client.head_object(Bucket=settings.bucket, Key=key)
    assert head["Metadata"] == META and head["ContentType"] == NDJSON
    assert sync.get(settings.bucket, key) == b"one\n"


@pytest.mark.parametrize("client", ["obstore", "boto3"])
async def test_crlf_in_metadata_cannot_split_requests(settings: Settings, client: str) -> None:
    s = settings.model_copy(update={"s3_client": client})
    store = AsyncStorage(Storage(make_client(s)), threads=2, hot=make_hot_path(s))
    sync = storage_for(settings)
    try:
        evil = "m-1\r\nx-amz-meta-evil: 1\r\n\r\nGET /x HTTP/1.1\r\nHost: a"
        key = f"training/x/crlf-{client}.jsonl"
        assert await store.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                                         metadata={"message-id": evil, "record-type": "é"})
        head = sync.client.head_object(Bucket=settings.bucket, Key=key)
        assert set(head["Metadata"]) == {"message-id", "record-type"}  # no forged header
        assert head["Metadata"]["message-id"].startswith("=?UTF-8?B?")  # RFC 2047 word
        # the (pooled) connection still speaks for the right object
        other = "raw/StepsRecord/2026/11/01/after-crlf.avro"
        sync.client.put_object(Bucket=settings.bucket, Key=other, Body=b"right object")
        got = await store.download(settings.bucket, other, max_bytes=100)
        assert got.body == b"right object"
        assert sync.get(settings.bucket, key) == b"one\n"
    finally:
        store.close()


async def test_storage_errors_through_a_fault_proxy(settings: Settings, s3_endpoint: str
                                                    ) -> None:
    proxy = FaultProxy("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1]))
    try:
        hot = _hot(settings, f"http://127.0.0.1:{proxy.port}")
        key = "raw/StepsRecord/2026/11/01/proxied.avro"
        data = bytes(range(256)) * 200
        storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)
        assert (await hot.download(settings.bucket, key, max_bytes=1 << 20)).body == data
        proxy.refuse = True
        proxy.reset_all()
        for call in (hot.download(settings.bucket, key, max_bytes=1 << 20),
                     hot.create(settings.bucket, "training/p.jsonl", b"x",
                                content_type=NDJSON, metadata=META)):
            with pytest.raises(TransientError) as info:
                await call
            assert info.value.reason == "storage_unavailable"
        proxy.refuse = False
        # every connection cut after 20 kB: obstore resumes the body with ranged GETs
        proxy.close_after_bytes, proxy.cuts_left = 20_000, None
        assert (await hot.download(settings.bucket, key, max_bytes=1 << 20)).body == data
        proxy.close_after_bytes = 600  # more cuts than its retry budget: retry later
        with pytest.raises(TransientError) as info:
            await hot.download(settings.bucket, key, max_bytes=1 << 20)
        assert info.value.reason in ("download_incomplete", "storage_unavailable")
    finally:
        proxy.close()


class _Answer:
    """A one-shot HTTP server giving every request the same status and S3 error body."""

    def __init__(self, status: str, code: str) -> None:
        import socketserver
        import threading

        body = f"<Error><Code>{code}</Code><Message>x</Message></Error>".encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while line := self.rfile.readline():
                    length = 0
                    while (h := self.rfile.readline()) not in (b"\r\n", b""):
                        if h.lower().startswith(b"content-length:"):
                            length = int(h.split(b":")[1])
                    self.rfile.read(length)
                    self.wfile.write(b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\n"
                                     b"Content-Length: %d\r\n\r\n%s"
                                     % (status.encode(), len(body), body))
                    self.wfile.flush()
                    del line

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "code", "kind", "reason"), [
    ("409 Conflict", "ConditionalRequestConflict", TransientError, "storage_conflict"),
    ("403 Forbidden", "AccessDenied", TransientError, "storage_access_denied"),
    ("503 Slow Down", "SlowDown", TransientError, "storage_unavailable"),
    ("400 Bad Request", "InvalidRequest", PermanentError, "storage_rejected"),
])
async def test_put_answers_map_to_the_taxonomy(settings: Settings, status: str, code: str,
                                               kind: type[Exception], reason: str) -> None:
    server = _Answer(status, code)
    try:
        hot = _hot(settings, server.url)
        with pytest.raises(kind) as info:
            await hot.create(settings.bucket, "training/a.jsonl", b"x",
                             content_type=NDJSON, metadata=META)
        assert getattr(info.value, "reason", None) == reason  # 409 is never "exists"
        if code != "ConditionalRequestConflict":
            with pytest.raises(kind) as info:
                await hot.download(settings.bucket, "raw/a.avro", max_bytes=100)
            assert getattr(info.value, "reason", None) == reason
    finally:
        server.close()


async def test_servers_without_conditional_writes_fall_back(settings: Settings) -> None:
    server = _Answer("501 Not Implemented", "NotImplemented")
    try:
        hot = _hot(settings, server.url)
        assert await hot.create(settings.bucket, "training/a.jsonl", b"x",
                                content_type=NDJSON, metadata=META) is None
    finally:
        server.close()


@pytest.mark.parametrize("client", ["obstore", "boto3"])
async def test_either_client_falls_back_to_the_one_check_then_put(
    settings: Settings, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without conditional writes (501 to ``If-None-Match``): a retryable refusal,
    unless the start-up check allowed the fallback (ETL_UNSAFE_NO_CONDITIONAL_WRITES); then,
    whichever client asked, ``put_if_absent`` is ``Storage.put_unless_exists``."""
    from botocore.exceptions import ClientError

    server = _Answer("501 Not Implemented", "NotImplemented")
    sync = storage_for(settings)
    real_put = sync.client.put_object

    def no_conditional_writes(**params: object) -> object:
        if "IfNoneMatch" in params:
            raise ClientError({"Error": {"Code": "NotImplemented"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
        return real_put(**params)

    monkeypatch.setattr(sync.client, "put_object", no_conditional_writes)
    store = AsyncStorage(sync, threads=2,
                         hot=_hot(settings, server.url) if client == "obstore" else None)
    try:
        key = f"training/x/fallback-{client}.jsonl"
        # not without ETL_UNSAFE_NO_CONDITIONAL_WRITES: a retry (the file is fine), no write
        with pytest.raises(TransientError) as info:
            await store.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                                      metadata=META)
        assert (info.value.reason, info.value.stage) == ("conditional_writes_unsupported",
                                                         "write")
        assert not sync.exists(settings.bucket, key)
        with pytest.raises(TransientError):
            sync.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                               metadata=META)
        sync.unsafe_check_then_put = True  # what the start-up check sets under the setting
        assert await store.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                                         metadata=META) is True
        assert await store.put_if_absent(settings.bucket, key, b"two\n", content_type=NDJSON,
                                         metadata=META) is False
        assert sync.get(settings.bucket, key) == b"one\n"
        assert sync.client.head_object(Bucket=settings.bucket, Key=key)["Metadata"] == META
    finally:
        store.close()
        server.close()


async def test_unreachable_server_is_transient(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    hot = _hot(settings, f"http://127.0.0.1:{port}")
    with pytest.raises(TransientError) as info:
        await hot.download(settings.bucket, "raw/x.avro", max_bytes=100)
    assert (info.value.reason, info.value.stage) == ("storage_unavailable", "download")


def test_boto3_hot_path_maps_409_to_a_retry(settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    store = storage_for(settings)

    def conflict(**_: object) -> None:
        raise ClientError({"Error": {"Code": "ConditionalRequestConflict"},
                           "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")

    monkeypatch.setattr(store.client, "put_object", conflict)
    with pytest.raises(TransientError) as info:
        store.put_if_absent(settings.bucket, "training/c.jsonl", b"x", content_type=NDJSON,
                            metadata=META)
    assert info.value.reason == "storage_conflict"


def test_client_setting(settings: Settings) -> None:
    assert isinstance(make_hot_path(settings), HotPath)
    assert make_hot_path(settings.model_copy(update={"s3_client": "boto3"})) is None


async def test_hot_path_calls_are_traced(settings: Settings, edge: AsyncStorage,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from etl_engine.observability import telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("etl_engine"))
    key = "training/x/traced.jsonl"
    await edge.put_if_absent(settings.bucket, key, b"x\n", content_type=NDJSON, metadata=META)
    await edge.download(settings.bucket, key, max_bytes=100)
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["S3.PutObject", "S3.GetObject"]
    attrs = dict(exporter.get_finished_spans()[1].attributes or {})
    assert attrs["rpc.method"] == "GetObject" and attrs["aws.s3.bucket"] == settings.bucket
    assert key not in str(attrs)  # object keys are not recorded


# --- 409, bodies cut short: through an HTTP shim in front of the S3 server ----------------
@pytest.fixture
def shim(s3_endpoint: str) -> Iterator[S3Shim]:
    server = S3Shim(s3_endpoint)
    yield server
    server.close()


def _through(settings: Settings, url: str, client: str) -> AsyncStorage:
    s = settings.model_copy(update={"s3_endpoint_url": url, "s3_client": client,
                                    "s3_read_timeout_s": 2.0, "s3_connect_timeout_s": 1.0})
    return AsyncStorage(Storage(make_client(s)), threads=2, hot=make_hot_path(s))


@pytest.mark.parametrize("client", ["obstore", "boto3"])
async def test_409_to_a_conditional_put_is_a_retry_never_exists(
    settings: Settings, shim: S3Shim, client: str
) -> None:
    """S3's 409 ConditionalRequestConflict (a competing conditional write in flight) read as
    "exists" would ack an input whose result may never be written (issue 15, hole 1)."""
    store = _through(settings, shim.url, client)
    key = f"training/x/conflict-{client}.jsonl"
    try:
        shim.if_none_match = "409"
        for _ in range(2):  # every time, not once
            with pytest.raises(TransientError) as info:
                await store.put_if_absent(settings.bucket, key, b"one\n",
                                          content_type=NDJSON, metadata=META)
            assert (info.value.reason, info.value.stage) == ("storage_conflict", "write")
        assert not storage_for(settings).exists(settings.bucket, key)
        shim.if_none_match = "pass"  # the retry: the conflict is over, the object is new
        assert await store.put_if_absent(settings.bucket, key, b"one\n", content_type=NDJSON,
                                         metadata=META) is True
        assert [r for r in shim.requests if r[0] == "PUT" and r[2]], "conditional PUTs sent"
    finally:
        store.close()


async def test_409_to_quarantine_copies_and_writes_is_a_retry(settings: Settings,
                                                              shim: S3Shim) -> None:
    """The quarantine's copy and reason file (boto3 for either client) map 409 alike."""
    sync = storage_for(settings)
    sync.client.put_object(Bucket=settings.bucket, Key="raw/StepsRecord/q.avro", Body=b"x")
    store = _through(settings, shim.url, "obstore")
    try:
        shim.put_conflicts = 2
        with pytest.raises(TransientError) as info:
            await store.copy(settings.bucket, "raw/StepsRecord/q.avro", settings.bucket,
                             "quarantine/StepsRecord/q.avro")
        assert (info.value.reason, info.value.stage) == ("storage_conflict", "quarantine")
        with pytest.raises(TransientError) as info:
            await store.put(settings.bucket, "quarantine/StepsRecord/q.avro.reason.json",
                            b"{}", content_type="application/json")
        assert (info.value.reason, info.value.stage) == ("storage_conflict", "write")
        assert await store.copy(settings.bucket, "raw/StepsRecord/q.avro", settings.bucket,
                                "quarantine/StepsRecord/q.avro") is True
    finally:
        store.close()


@pytest.mark.parametrize("where", ["first_put", "copy"])
async def test_a_quarantine_that_meets_a_409_is_retried(settings: Settings, shim: S3Shim,
                                                        where: str) -> None:
    """End to end in the pipeline: the corrupt file's quarantine meets a 409 (at its first
    write, or at the copy of the raw file), so the message is retried (not dead-lettered,
    not acked), and quarantined the next time."""
    import os

    import orjson

    from etl_engine.runtime.compute import ComputePool
    from etl_engine.runtime.pipeline import Delivery, Pipeline
    from helpers import upload_bytes
    from support.fakes import MemoryDedup

    bad = upload_bytes(settings, "StepsRecord", "garbage.avro", os.urandom(2048))
    store = _through(settings, shim.url, "obstore")
    compute = ComputePool(0, 512, 30)
    pipeline = Pipeline(settings, store, MemoryDedup(), compute, owner="t")
    try:
        if where == "copy":
            shim.copy_conflicts = 1
        else:
            shim.put_conflicts = 1
        first = await pipeline.run(Delivery(body=orjson.dumps(bad.message())))
        assert (first.kind, first.reason) == ("retry", "storage_conflict")
        second = await pipeline.run(Delivery(body=orjson.dumps(bad.message()), attempt=2))
        assert second.kind == "quarantined"
        assert shim.copy_conflicts == shim.put_conflicts == 0
    finally:
        compute.close()
        store.close()


@pytest.mark.parametrize("client", ["obstore", "boto3"])
async def test_a_body_cut_short_is_a_retry_never_accepted(
    settings: Settings, shim: S3Shim, client: str
) -> None:
    """Every answer is cut after 1 kB with its Content-Length announced (issue 15, hole
    10): never a short body handed on (it would be judged size_mismatch or worse, decoded as
    a smaller file). obstore resumes with ranged GETs, each cut too, until it gives up."""
    key = f"raw/StepsRecord/2026/11/01/cut-{client}.avro"
    data = bytes(range(256)) * 100
    sync = storage_for(settings)
    sync.client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    store = _through(settings, shim.url, client)
    try:
        shim.truncate_get_at = 1000
        with pytest.raises(TransientError) as info:
            await store.download(settings.bucket, key, max_bytes=1 << 20)
        assert (info.value.reason, info.value.stage) == ("download_incomplete", "download")
        if client == "boto3":  # the operator tools' whole-object read too
            with pytest.raises(TransientError) as info:
                await store.call(store.sync.get, settings.bucket, key)
            assert info.value.reason == "download_incomplete"
        shim.truncate_get_at = None
        assert (await store.download(settings.bucket, key, max_bytes=1 << 20)).body == data
    finally:
        store.close()


def test_boto3_download_cut_by_the_fault_proxy_is_a_retry(settings: Settings,
                                                           s3_endpoint: str) -> None:
    """The boto3 client, the connection cut mid-body (``close_after_bytes``)."""
    proxy = FaultProxy("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1]))
    key = "raw/StepsRecord/2026/11/01/proxied-boto3.avro"
    data = bytes(range(256)) * 200
    storage_for(settings).client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    via = Storage(make_client(settings.model_copy(update={
        "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}", "s3_read_timeout_s": 2.0})))
    try:
        proxy.close_after_bytes, proxy.cuts_left = 20_000, None
        with pytest.raises(TransientError) as info:
            via.download(settings.bucket, key, max_bytes=1 << 20)
        assert info.value.reason in ("download_incomplete", "storage_unavailable")
        assert proxy.cuts >= 1
        proxy.close_after_bytes = None
        assert via.download(settings.bucket, key, max_bytes=1 << 20).body == data
    finally:
        proxy.close()
