"""Metrics, logs and traces of a worker, checked after known workloads on the real services."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from etl_engine.domain.outcomes import outcome_key
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES
from etl_engine.errors import TransientError
from helpers import (
    SAMPLES,
    WorkerProcess,
    delete_topology,
    publish,
    running_worker,
    sample_files,
    storage_for,
    upload,
    upload_bytes,
    wait_outcomes,
)

pytestmark = pytest.mark.integration

USER = "patient-SECRET-4242"
HASH_KEY = "test-hash-key"
GOOD_LEVEL = "173.9876"  # every glucose value of the crafted good file starts like this
BAD_LEVEL = "7777.123"  # ... and of the crafted bad (out of range) file


@pytest.fixture(autouse=True)
async def _cleanup(settings):  # type: ignore[no-untyped-def]
    yield
    await delete_topology(settings)


def crafted_glucose(level: Callable[[int], float]) -> tuple[bytes, list[str]]:
    """The CGM sample with distinctive values and fresh record ids (to grep logs for)."""
    with (SAMPLES / "BloodGlucoseRecord" / "cgm_day1.avro").open("rb") as f:
        reader = fastavro.reader(f)
        schema = reader.writer_schema
        records = list(reader)
    ids = []
    for i, rec in enumerate(records):
        rec["levelInMilligramsPerDeciliter"] = level(i)
        rec["metadata"]["id"] = str(uuid.uuid4())
        ids.append(rec["metadata"]["id"])
    buf = io.BytesIO()
    fastavro.writer(buf, schema, records)
    return buf.getvalue(), ids


# --- metrics ------------------------------------------------------------------------------
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def test_metrics_after_a_known_workload(settings) -> None:  # type: ignore[no-untyped-def]
    from etl_engine.adapters.dedup import open_store

    files = sample_files()
    by_type = {rt: p for rt, p in files}
    good = [upload(settings, "StepsRecord", by_type["StepsRecord"], run="m1"),
            upload(settings, "HeartRateRecord", by_type["HeartRateRecord"], run="m1")]
    contended = upload(settings, "SleepSessionRecord", by_type["SleepSessionRecord"], run="m1")
    dup = {**good[0].message(), "message_id": "dup-" + good[0].message_id}
    bad_bytes, _ = crafted_glucose(lambda i: 7777.12345)
    bad = upload_bytes(settings, "BloodGlucoseRecord", "out_of_range.avro", bad_bytes)
    flaky = upload_bytes(settings, "StepsRecord", "flaky.avro", by_type["StepsRecord"].read_bytes())

    async with running_worker(settings.model_copy(update={"sidecar_host": "127.0.0.1"})
                              ) as worker:
        real_download = worker.storage.download

        async def flaky_download(bucket: str, key: str, *, max_bytes: int) -> Any:
            if key == flaky.key:
                raise TransientError("storage_unavailable", stage="download")
            return await real_download(bucket, key, max_bytes=max_bytes)

        worker.storage.download = flaky_download  # type: ignore[method-assign]
        port = worker.state.sidecar_port
        await asyncio.sleep(0.3)  # first dependency checks
        before = samples_of(await asyncio.to_thread(_scrape, port))
        await publish(settings, *[u.message() for u in good])
        await wait_outcomes(settings, [u.message_id for u in good])
        store = open_store(settings.dedup_url, settings.dedup_prefix)
        claim = await store.claim(contended.idempotency_key, "another-worker", 2000)
        assert claim.state == "acquired"  # held by "another worker" for two seconds
        await store.close()
        await publish(settings, dup, contended.message(), bad.message(), flaky.message())
        await publish(settings, b"{not json", routing="health.processing.stepsrecord",
                      message_id="m-json")
        outcomes = await wait_outcomes(
            settings, [dup["message_id"], contended.message_id, bad.message_id,
                       flaky.message_id, "m-json"], timeout=60)
        text = await asyncio.to_thread(_scrape, port)
    assert outcomes == {dup["message_id"]: "duplicate", contended.message_id: "processed",
                        bad.message_id: "quarantined", flaky.message_id: "dead_letter",
                        "m-json": "dead_letter"}
    after = samples_of(text)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("etl_messages_total", outcome="processed") == 3
    assert delta("etl_messages_total", outcome="processed", record_type="StepsRecord") == 1
    assert delta("etl_messages_total", outcome="duplicate") == 1
    assert delta("etl_messages_total", outcome="quarantined",
                 record_type="BloodGlucoseRecord") == 1
    assert delta("etl_messages_total", outcome="rejected", record_type="unknown") == 1
    assert delta("etl_messages_total", outcome="dead_lettered", record_type="StepsRecord") == 1
    # flaky: attempts 1 and 2 retried; the contended one waited at least once for the lease
    assert delta("etl_messages_total", outcome="retried") >= 3
    assert delta("etl_retries_total", reason="storage_unavailable") == 2
    assert delta("etl_lease_contention_total") >= 1
    assert delta("etl_dead_lettered_total", reason="attempts_exhausted") == 1
    assert delta("etl_quarantined_total") == 1
    assert delta("etl_records_decoded_total") > 0
    sizes = sum(u.size for u in (*good, contended, bad))
    # and the duplicate's read of the input's outcome record (is it the same input?)
    record = storage_for(settings).get(settings.bucket,
                                       outcome_key(settings.outcome_prefix,
                                                   good[0].idempotency_key))
    assert delta("etl_downloaded_bytes_total") == sizes + len(record)
    assert delta("etl_uploaded_bytes_total") > 0
    for stage, at_least in (("download", 4), ("decode", 4), ("validate", 4), ("transform", 3),
                            ("write", 3)):
        got = delta("etl_stage_duration_seconds_count", stage=stage)
        assert got >= at_least, (stage, got)
    assert delta("etl_processing_duration_seconds_count") == 3
    assert delta("etl_quality_score_count") == 4  # three processed, one failed validation
    assert total(after, "etl_messages_in_flight") == 0
    for dep in ("rabbitmq", "redis", "s3"):
        assert total(after, "etl_dependency_up", dependency=dep) == 1, dep
    assert total(after, "etl_build_info") == 1
    # bounded labels only: never a message id, key or user id
    allowed_types = {*SUPPORTED_RECORD_TYPES, "unknown"}
    for (_, labels), _ in after.items():
        for key, value in labels:
            if key == "record_type":
                assert value in allowed_types, value
            assert "m-json" not in value and "dup-" not in value and ".avro" not in value

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'): metric deltas were "
                    "checked, only the exposition-format lint is skipped")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


# --- logs ---------------------------------------------------------------------------------
async def test_logs_carry_context_and_no_personal_data(settings, test_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good_bytes, good_ids = crafted_glucose(lambda i: 173.98765 + i * 1e-7)
    bad_bytes, bad_ids = crafted_glucose(lambda i: 7777.12345)
    good = upload_bytes(settings, "BloodGlucoseRecord", "cgm_good.avro", good_bytes, USER)
    bad = upload_bytes(settings, "BloodGlucoseRecord", "cgm_bad.avro", bad_bytes, USER)
    poison = {**good.message(), "bucket": "not-ours", "message_id": "m-poison"}
    bodies = [{**u.message(), "user_id": USER} for u in (good, bad)]
    poison["user_id"] = USER
    trace_id = uuid.uuid4().hex
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_LOG_FORMAT="json",
                      ETL_USER_ID_HASH_KEY=HASH_KEY)
    try:
        await w.wait_ready()
        await publish(settings, *bodies, poison,
                      headers={"traceparent": f"00-{trace_id}-{'ab' * 8}-01"})
        await publish(settings, f'{{"user_id": "{USER}", broken'.encode(),
                      routing="health.processing.bloodglucoserecord", message_id="m-json")
        outcomes = await wait_outcomes(
            settings, [good.message_id, bad.message_id, "m-poison", "m-json"])
    finally:
        w.signal(15)
        await w.wait_exit()
    assert outcomes == {good.message_id: "processed", bad.message_id: "quarantined",
                        "m-poison": "dead_letter", "m-json": "dead_letter"}

    raw = w.log_path.read_text()
    lines = w.log_lines()
    assert len(lines) == len([x for x in raw.splitlines() if x.strip()]), "JSON lines only"
    settled = {line["message_id"]: line for line in lines if line["event"] == "message_settled"}
    assert set(settled) == {good.message_id, bad.message_id, "m-poison", "m-json"}
    context = ("message_id", "correlation_id", "record_type", "worker_id", "attempt",
               "trace_id")
    handling = [line for line in lines if "message_id" in line]
    assert len(handling) >= 4
    for line in handling:
        missing = [k for k in context if k not in line]
        assert not missing, (line["event"], missing)
        assert line["attempt"] == 1
    assert settled[good.message_id]["trace_id"] == trace_id  # continued from the header
    assert settled[good.message_id]["record_type"] == "BloodGlucoseRecord"
    assert settled[bad.message_id]["outcome"] == "quarantined"
    assert settled["m-poison"]["outcome"] == "dead_letter"
    assert settled["m-poison"]["reason"] == "bucket_not_allowed"
    expected_hash = hashlib.blake2b(USER.encode(), key=HASH_KEY.encode(),
                                    digest_size=8).hexdigest()
    assert settled[good.message_id]["user"] == expected_hash
    # nothing personal: not the user id, not a value, not a record id
    assert USER not in raw
    assert GOOD_LEVEL not in raw and BAD_LEVEL not in raw
    for rid in good_ids[:50] + bad_ids[:50]:
        assert rid not in raw


# --- traces -------------------------------------------------------------------------------
class _Collector:
    """A minimal OTLP/HTTP receiver: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                collector.bodies.append(body)
                collector.requests.append(req)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> Iterator[tuple[str, str, Any]]:
        """(service name, instrumentation scope, span) for everything received."""
        for req in self.requests:
            for rs in req.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes
                                if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        yield service, ss.scope.name, span

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


async def test_one_trace_from_publish_through_worker_stages_and_s3(
    settings, test_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    collector = _Collector()
    endpoint = {"ETL_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}"}
    rt, path = next((rt, p) for rt, p in sample_files() if rt == "StepsRecord")
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_DECODE_PROCESSES="1", **endpoint)
    try:
        await w.wait_ready(60)
        env = {**test_env, **endpoint}
        import os

        pub = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "etl_engine.ops.cli", "publish", "--record-type", rt,
             "--file", str(path), "--user-id", USER, "--run-id", "trace"],
            env={**os.environ, **env}, capture_output=True, timeout=60)
        assert pub.returncode == 0, pub.stderr.decode()
        message_id = pub.stdout.decode().split("message_id=")[1].split()[0]
        outcomes = await wait_outcomes(settings, [message_id])
        assert outcomes == {message_id: "processed"}
    finally:
        w.signal(15)
        await w.wait_exit()  # the worker flushes its spans on the way out
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        services = {s for s, _, _ in collector.spans()}
        if {"etl-engine-cli", "etl-worker"} <= services:
            break
        await asyncio.sleep(0.2)
    collector.close()
    spans = list(collector.spans())

    producers = [s for svc, _, s in spans if svc == "etl-engine-cli"
                 and s.name == f"publish {settings.exchange}"]
    assert len(producers) == 1, [s.name for _, _, s in spans]
    publish_span = producers[0]
    trace = publish_span.trace_id
    pattrs = _attrs(publish_span)
    assert pattrs["messaging.system"] == "rabbitmq"
    assert pattrs["messaging.destination.name"] == settings.exchange
    assert pattrs["messaging.operation"] == "publish"
    assert pattrs["messaging.message.id"] == message_id
    # the upload service's routing key (no priority)
    assert pattrs["messaging.rabbitmq.destination.routing_key"] == f"health.processing.{rt.lower()}"

    in_trace = [(svc, scope, s) for svc, scope, s in spans if s.trace_id == trace]
    worker = {s.name: s for svc, _, s in in_trace if svc == "etl-worker"}
    consume = worker[f"process {settings.queue}"]
    assert consume.parent_span_id == publish_span.span_id, "the worker continues the publish"
    cattrs = _attrs(consume)
    assert cattrs["messaging.system"] == "rabbitmq"
    assert cattrs["messaging.operation"] == "process"
    assert cattrs["messaging.destination.name"] == settings.exchange
    assert cattrs["messaging.message.id"] == message_id
    assert cattrs["messaging.rabbitmq.destination.routing_key"] == f"health.processing.{rt.lower()}"
    assert cattrs["etl.outcome"] == "processed"
    for stage in ("parse", "dedup", "download", "compute", "write", f"ack {settings.queue}"):
        assert worker[stage].parent_span_id == consume.span_id, stage
    for stage in ("decode", "validate", "transform"):  # timed in the decode child process
        cpu = worker[stage]
        assert cpu.parent_span_id == worker["compute"].span_id, stage
        assert worker["compute"].start_time_unix_nano <= cpu.start_time_unix_nano
        assert cpu.end_time_unix_nano <= worker["compute"].end_time_unix_nano
    assert (worker["decode"].end_time_unix_nano <= worker["validate"].start_time_unix_nano
            <= worker["transform"].start_time_unix_nano)

    by_id = {s.span_id: s for _, _, s in in_trace}
    # botocore's instrumentation, or our own client spans around the obstore hot path
    s3 = [(svc, s) for svc, scope, s in in_trace if s.name.startswith("S3.")]
    worker_s3 = {s.name: by_id[s.parent_span_id].name for svc, s in s3 if svc == "etl-worker"}
    assert worker_s3.get("S3.GetObject") == "download", worker_s3
    assert worker_s3.get("S3.PutObject") == "write", worker_s3
    assert any(svc == "etl-engine-cli" and s.name == "S3.PutObject" for svc, s in s3), \
        "the CLI's upload is in the same trace"
    redis_parents = {by_id[s.parent_span_id].name for svc, scope, s in in_trace
                     if "redis" in scope}
    assert "dedup" in redis_parents

    # no personal data anywhere in what was exported
    for body in collector.bodies:
        assert USER.encode() not in body
    for _, _, s in spans:
        for value in _attrs(s).values():
            assert USER not in str(value)
    roots = {s.name for svc, _, s in spans if svc == "etl-worker" and not s.parent_span_id}
    assert roots == set(), "background checks start no traces of their own"
    names = Counter(s.name for _, _, s in in_trace)
    assert names[f"process {settings.queue}"] == 1
    settled = [line for line in w.log_lines() if line.get("event") == "message_settled"]
    assert settled[0]["trace_id"] == trace.hex(), "log lines name the trace"


def test_a_failing_observer_is_logged_and_the_others_still_run(capsys) -> None:  # type: ignore[no-untyped-def]
    """Observers see the worker, they never steer it: an error stays inside the hook."""
    from etl_engine.runtime.hooks import Observers, PipelineObserver

    seen: list[str] = []

    class Broken(PipelineObserver):
        def consuming(self) -> None:
            raise RuntimeError("observer bug")

    class Counting(PipelineObserver):
        def consuming(self) -> None:
            seen.append("consuming")

    Observers([Broken(), Counting()]).consuming()
    assert seen == ["consuming"]
    said = capsys.readouterr()
    assert "observer_failed" in said.out + said.err  # stderr once logs.configure ran
