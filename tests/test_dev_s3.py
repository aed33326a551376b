"""The local S3 server (etl_engine.dev_s3): keep-alive and moto's S3 semantics over a socket."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

pytest.importorskip("cheroot")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dev_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = _free_port()
    log = tmp_path_factory.mktemp("dev_s3") / "dev_s3.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl_engine.dev_s3", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dev_s3 did not start: {Path(log).read_text()}") from None
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0, Path(log).read_text()[-2000:]


def _client(host: str, port: int) -> Any:
    return boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(s3={"addressing_style": "path"}))


def test_one_socket_serves_several_requests(dev_s3: tuple[str, int]) -> None:
    host, port = dev_s3
    bucket = f"ka-{uuid.uuid4().hex[:8]}"
    s3 = _client(host, port)
    s3.create_bucket(Bucket=bucket)
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
    host, port = dev_s3
    bucket = f"cond-{uuid.uuid4().hex[:8]}"
    s3 = _client(host, port)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="out", Body=b"first",
                  IfNoneMatch="*", Metadata={"message-id": "m1", "under_score": "kept"})
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="out", Body=b"second",
                      IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    got = s3.get_object(Bucket=bucket, Key="out")
    assert got["Body"].read() == b"first"
    assert got["Metadata"] == {"message-id": "m1", "under_score": "kept"}
