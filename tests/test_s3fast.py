"""The lean S3 path: signatures identical to botocore's, same outcomes as the boto3 path."""

from __future__ import annotations

import datetime
import hashlib
import time
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from etl_engine.errors import PermanentError
from etl_engine.s3fast import FastS3
from etl_engine.settings import Settings
from etl_engine.storage import Storage, make_client

NOW = time.struct_time((2026, 11, 22, 3, 4, 5, 6, 326, 0))


def _botocore_auth(monkeypatch: pytest.MonkeyPatch, creds: Credentials, method: str, url: str,
                   headers: dict[str, str], body: bytes) -> str:
    fixed = datetime.datetime(2026, 11, 22, 3, 4, 5)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: fixed)
    req = AWSRequest(method=method, url=url, headers=headers, data=body)
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
    return str(req.headers["Authorization"])


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("key", ["raw/StepsRecord/2026/11/01/a.avro", "raw/odd key=+&é/ü~x.avro"])
def test_signature_matches_botocore(monkeypatch: pytest.MonkeyPatch, token: str | None,
                                    key: str) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    fast = FastS3("https://s3.example.com:9443", "eu-west-1", creds, pool_size=2,
                  connect_timeout=1, read_timeout=1)
    path = fast._path("bucket", key)
    url = "https://s3.example.com:9443" + path

    get = fast._sign("GET", path, hashlib.sha256(b"").hexdigest(), {}, NOW)
    assert get["authorization"] == _botocore_auth(monkeypatch, creds, "GET", url, {}, b"")

    body = b'{"a": 1}\n'
    extra = {"content-type": "application/x-ndjson", "if-none-match": "*",
             "x-amz-meta-message-id": "m-1", "x-amz-meta-record-type": "StepsRecord"}
    put = fast._sign("PUT", path, hashlib.sha256(body).hexdigest(), extra, NOW)
    theirs = _botocore_auth(monkeypatch, creds, "PUT", url,
                            {k.title(): v for k, v in extra.items()}, body)
    assert put["authorization"] == theirs


def test_only_plain_set_ups_get_the_fast_path(settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert Storage(make_client(settings)).fast is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert Storage(make_client(settings)).fast is None


def test_outcomes_match_the_boto3_path(settings: Settings) -> None:
    fast = Storage(make_client(settings))
    slow = Storage(make_client(settings))
    slow.fast = None
    data = b"Obj\x01" + bytes(range(256)) * 40
    key = "raw/StepsRecord/2026/11/01/odd key=+&é ü.avro"
    fast.client.put_object(Bucket=settings.bucket, Key=key, Body=data)
    for store in (fast, slow):
        got = store.download(settings.bucket, key, max_bytes=1 << 20)
        assert got.body == data and got.sha256 == hashlib.sha256(data).hexdigest()
        for bad_key, limit, reason in ((key + ".gone", 1 << 20, "object_missing"),
                                       (key, 100, "object_too_large")):
            with pytest.raises(PermanentError) as info:
                store.download(settings.bucket, bad_key, max_bytes=limit)
            assert info.value.reason == reason
    meta = {"message-id": "m-1", "record-type": "StepsRecord"}
    out: dict[str, Any] = {}
    for name, store in (("fast", fast), ("slow", slow)):
        rkey = f"training/x/{name} é.jsonl"
        first = store.put_if_absent(settings.bucket, rkey, b"one\n",
                                    content_type="application/x-ndjson", metadata=meta)
        second = store.put_if_absent(settings.bucket, rkey, b"two\n",
                                     content_type="application/x-ndjson", metadata=meta)
        head = fast.client.head_object(Bucket=settings.bucket, Key=rkey)
        out[name] = (first, second, fast.get(settings.bucket, rkey), head["Metadata"],
                     head["ContentType"])
    assert out["fast"] == out["slow"] == (True, False, b"one\n", meta, "application/x-ndjson")


def test_unhandled_answers_fall_back_to_boto3(settings: Settings) -> None:
    store = Storage(make_client(settings))
    assert store.fast is not None
    with pytest.raises(PermanentError) as info:  # NoSuchBucket: boto3's mapping decides
        store.download("no-such-bucket-" + settings.bucket, "raw/x.avro", max_bytes=100)
    assert info.value.reason == "storage_rejected"


class _Server:
    """A tiny HTTP/1.1 server answering every request 200 with a fixed body; counts the
    connections it accepted and can drop a connection after answering (stale keep-alive)."""

    def __init__(self, body: bytes = b"payload") -> None:
        import socketserver
        import threading

        outer = self
        self.connections = 0
        self.drop_after_answer = False

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    length = 0
                    while (h := self.rfile.readline()) not in (b"\r\n", b""):
                        if h.lower().startswith(b"content-length:"):
                            length = int(h.split(b":")[1])
                    self.rfile.read(length)
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
                    self.wfile.flush()
                    if outer.drop_after_answer:
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fast(port: int) -> FastS3:
    return FastS3(f"http://127.0.0.1:{port}", "us-east-1", Credentials("a", "b"),
                  pool_size=4, connect_timeout=1, read_timeout=2)


def test_keep_alive_connections_are_reused_and_stale_ones_retried() -> None:
    server = _Server()
    try:
        fast = _fast(server.port)
        assert [fast.get("b", f"k{i}", max_bytes=100) for i in range(5)] == [b"payload"] * 5
        assert server.connections == 1
        server.drop_after_answer = True  # the idle connection dies under the client
        assert fast.get("b", "k", max_bytes=100) == b"payload"
        assert fast.get("b", "k", max_bytes=100) == b"payload"  # stale: retried afresh
        assert fast.put_if_absent("b", "k", b"x", content_type="a/b", metadata={}) is True
    finally:
        server.close()


def test_unreachable_server_is_a_transient_storage_error(settings: Settings) -> None:
    import socket

    from etl_engine.errors import TransientError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = Storage(make_client(settings))
    store.fast = _fast(port)
    with pytest.raises(TransientError) as info:
        store.download(settings.bucket, "raw/x.avro", max_bytes=100)
    assert (info.value.reason, info.value.stage) == ("storage_unavailable", "download")
    with pytest.raises(TransientError) as info:
        store.put_if_absent(settings.bucket, "training/x.jsonl", b"x", content_type="a/b",
                            metadata={})
    assert (info.value.reason, info.value.stage) == ("storage_unavailable", "write")


async def test_async_path_outcomes_match(settings: Settings) -> None:
    from etl_engine.errors import TransientError
    from etl_engine.storage import AsyncStorage

    store = AsyncStorage(Storage(make_client(settings)), threads=2)
    try:
        data = b"Obj\x01" + bytes(range(256)) * 40
        key = "raw/StepsRecord/2026/11/01/async odd=+&é.avro"
        store.sync.client.put_object(Bucket=settings.bucket, Key=key, Body=data)
        got = await store.download(settings.bucket, key, max_bytes=1 << 20)
        assert store._afast is not None  # the event-loop path was taken
        assert got.body == data and got.sha256 == hashlib.sha256(data).hexdigest()
        for bad_key, limit, reason in ((key + ".gone", 1 << 20, "object_missing"),
                                       (key, 100, "object_too_large")):
            with pytest.raises(PermanentError) as info:
                await store.download(settings.bucket, bad_key, max_bytes=limit)
            assert info.value.reason == reason
        meta = {"message-id": "m-1", "record-type": "StepsRecord"}
        rkey = "training/x/async é.jsonl"
        assert await store.put_if_absent(settings.bucket, rkey, b"one\n",
                                         content_type="application/x-ndjson", metadata=meta)
        assert not await store.put_if_absent(settings.bucket, rkey, b"two\n",
                                             content_type="application/x-ndjson",
                                             metadata=meta)
        head = store.sync.client.head_object(Bucket=settings.bucket, Key=rkey)
        assert head["Metadata"] == meta and store.sync.get(settings.bucket, rkey) == b"one\n"
        with pytest.raises(PermanentError) as info:  # NoSuchBucket: through boto3
            await store.download("no-such-bucket-" + settings.bucket, "raw/x", max_bytes=9)
        assert info.value.reason == "storage_rejected"
        server = _Server()
        try:
            store.sync.fast = _fast(server.port)
            store._afast = None
            assert [await store.download("b", f"k{i}", max_bytes=100) for i in range(3)][
                -1].body == b"payload"
            assert server.connections == 1  # kept alive
            server.drop_after_answer = True
            for _ in range(3):  # the idle connection dies: retried on a fresh one
                assert (await store.download("b", "k", max_bytes=100)).body == b"payload"
            server.close()
            with pytest.raises(TransientError) as terr:
                await store.put_if_absent("b", "k", b"x", content_type="a/b", metadata={})
            assert terr.value.reason == "storage_unavailable"
        finally:
            server.server.server_close()
    finally:
        store.close()


def test_fast_path_can_be_switched_off(settings) -> None:  # type: ignore[no-untyped-def]
    from etl_engine.storage import Storage, make_client

    assert Storage(make_client(settings)).fast is not None
    assert Storage(make_client(settings), fast_path=False).fast is None
