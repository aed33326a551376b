"""The local S3 server (etl_devtools.dev_s3): keep-alive and moto's S3 semantics over a socket."""

from __future__ import annotations

import http.client
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from helpers import start_s3_server

pytest.importorskip("cheroot")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dev_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server of this module's own: it must also stop cleanly (exit 0) on SIGTERM."""
    log = tmp_path_factory.mktemp("dev_s3") / "dev_s3.log"
    port = _free_port()
    proc, _ = start_s3_server(log, port)
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0, log.read_text()[-2000:]


def _new_bucket(host: str, port: int, prefix: str) -> tuple[Any, str]:
    """A boto3 client on the server and a bucket of the test's own."""
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test",
                      config=Config(s3={"addressing_style": "path"}))
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def test_one_socket_serves_several_requests(dev_s3: tuple[str, int]) -> None:
    host, port = dev_s3
    s3, bucket = _new_bucket(host, port, "ka")
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello",
                  ACL="public-read")

    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.connect()
    first = conn.sock
    local = first.getsockname()
    seen = []
    for method, path in [("GET", f"/{bucket}/k"), ("HEAD", f"/{bucket}/k"),
                         ("GET", f"/{bucket}/missing"), ("GET", f"/{bucket}/k")]:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.getheader("Connection", "").lower() != "close"
        seen.append((resp.status, body))
        # http.client drops its socket when the server closes the connection
        assert conn.sock is first and conn.sock.getsockname() == local
    conn.close()
    assert seen[0] == (200, b"hello")
    assert seen[1] == (200, b"")
    assert seen[2][0] in (403, 404)
    assert seen[3] == (200, b"hello")


def test_conditional_put_on_an_existing_key_is_412(dev_s3: tuple[str, int]) -> None:
    s3, bucket = _new_bucket(*dev_s3, "cond")
    s3.put_object(Bucket=bucket, Key="out", Body=b"first",
                  IfNoneMatch="*", Metadata={"message-id": "m1", "under_score": "kept"})
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="out", Body=b"second",
                      IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    got = s3.get_object(Bucket=bucket, Key="out")
    assert got["Body"].read() == b"first"
    assert got["Metadata"] == {"message-id": "m1", "under_score": "kept"}
