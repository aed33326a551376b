"""The S3 hot path (obstore: GetObject with a size cap, conditional create PutObject)
against the real local S3 server: outcomes, error taxonomy, header safety, spans."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator

import pytest

from etl_engine.adapters.storage import AsyncStorage, HotPath, Storage, make_client, make_hot_path
from etl_engine.errors import PermanentError, TransientError
from etl_engine.settings import Settings
from faultproxy import FaultProxy
from helpers import storage_for

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
    """A server without conditional writes (501 to ``If-None-Match``): whichever client
    asked, ``put_if_absent`` falls back to ``Storage.put_unless_exists``."""
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
