"""The commands a user runs: publish, load-samples, generate-samples, compact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import orjson
import pytest

from etl_engine.ops.compact import compact_month
from helpers import SAMPLES, results, running_worker, sample_files, storage_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_topology")]


async def etl(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etl_engine.ops.cli", *args, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_load_samples_waits_and_summarises(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    async with running_worker(settings):
        rc, out, err = await etl(test_env, "load-samples", str(SAMPLES), "--wait",
                                 "--run-id", "cli1")
    assert rc == 0, err
    n = len([p for p in SAMPLES.rglob("*.avro") if "bad" not in p.parts])
    assert f"messages       {n}" in out and f"processed      {n}" in out
    assert "not settled    0" in out
    assert len(results(settings)) == n
    # The same files again under the same keys: every one is a duplicate.
    async with running_worker(settings):
        rc, out, _ = await etl(test_env, "load-samples", str(SAMPLES), "--wait",
                               "--run-id", "cli1")
    assert rc == 0 and f"duplicates     {n}" in out
    assert len(results(settings)) == n


async def test_publish_uploads_a_file_and_announces_it(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    path = next((SAMPLES / "StepsRecord").glob("*.avro"))
    async with running_worker(settings):
        rc, out, err = await etl(test_env, "publish", "--record-type", "StepsRecord",
                                 "--file", str(path), "--priority", "high")
        assert rc == 0, err
        for _ in range(100):
            if results(settings):
                break
            await asyncio.sleep(0.1)
    assert "published message_id=" in out
    assert len(results(settings)) == 1


async def test_publish_unroutable_is_an_error(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    from etl_engine.adapters.publisher import Publisher

    async with Publisher(settings) as pub:
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await pub.publish({"record_type": "StepsRecord"}, routing="nowhere.at.all")


async def test_generate_samples_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        rc, _, err = await etl({}, "generate-samples", "--out", str(out), "--seed", "3")
        assert rc == 0, err
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.avro"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.avro"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


async def test_compact_month_is_idempotent(settings) -> None:  # type: ignore[no-untyped-def]
    storage = storage_for(settings)
    for day, key in ((2, "b"), (1, "a"), (1, "c")):
        rec = {"instruction": "q", "output": "o",
               "metadata": {"period_start": f"2026-11-0{day}T00:00:00-05:00",
                            "record_id": key}}
        storage.put(settings.bucket, f"training/physical_activity/2026/11/0{day}/{key}.jsonl",
                    orjson.dumps(rec) + b"\n", content_type="application/x-ndjson")
    first = compact_month(storage, settings, "2026-11")
    body1 = storage.get(settings.bucket, first[0].key)
    second = compact_month(storage, settings, "2026-11")
    assert storage.get(settings.bucket, second[0].key) == body1
    # outside training/: a reader of training/ counts every record once
    assert first[0].key == "compacted/physical_activity/2026/11/health_journal_2026_11.jsonl"
    assert (first[0].state, second[0].state) == ("written", "unchanged")
    assert first[0].inputs == second[0].inputs == 3
    keys = [orjson.loads(line)["metadata"]["record_id"] for line in body1.splitlines()]
    assert keys == ["a", "c", "b"]
    with pytest.raises(ValueError):
        compact_month(storage, settings, "2026-13x")


def test_a_broken_tool_plugin_leaves_the_worker_command(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A tool that fails to load (e.g. a missing dev dependency) costs only its command."""
    from importlib.metadata import EntryPoint

    from etl_engine.ops import cli

    broken = EntryPoint("broken-tool", "etl_no_such_module.commands:add", "etl_engine.commands")
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    args = cli.build_parser().parse_args(["worker"])
    assert args.fn is cli.cmd_worker
    err = capsys.readouterr().err
    assert "command 'broken-tool' unavailable" in err and "ModuleNotFoundError" in err


# --- issue 17: conventions against the real services --------------------------------------------
def _bad_folder(tmp_path: Path) -> Path:
    """One good sample and one file the worker quarantines (not Avro at all)."""
    folder = tmp_path / "load"
    rt, good = next((rt, p) for rt, p in sample_files() if rt == "StepsRecord")
    (folder / rt).mkdir(parents=True)
    (folder / rt / good.name).write_bytes(good.read_bytes())
    (folder / rt / "broken.avro").write_bytes(b"this is not an avro container file" * 8)
    return folder


async def test_load_samples_exits_1_for_quarantined_files_unless_allowed(  # type: ignore[no-untyped-def]
        settings, test_env, tmp_path) -> None:
    folder = _bad_folder(tmp_path)
    async with running_worker(settings):
        rc, out, err = await etl(test_env, "load-samples", str(folder), "--wait",
                                 "--run-id", "fail1", "--jobs", "2")
        assert rc == 1, err
        assert "quarantined    1" in out and "processed      1" in out
        assert "quarantined: StepsRecord/broken.avro" in err and "--allow-failures" in err
        # in a pipe: plain lines, no carriage returns, the final counts
        assert "\r" not in err and "\x1b" not in err
        assert "  uploaded 2/2 (100%)" in err and "   settled 2/2 (100%)" in err
        rc, out, err = await etl(test_env, "load-samples", str(folder), "--wait",
                                 "--run-id", "fail2", "--allow-failures", "--json")
    assert rc == 0, err
    report = orjson.loads(out)
    assert (report["messages"], report["processed"], report["quarantined"]) == (2, 1, 1)
    good = next(p.name for p in (folder / "StepsRecord").iterdir() if p.name != "broken.avro")
    outcomes = {f["path"]: f["outcome"] for f in report["files"]}
    assert outcomes == {"StepsRecord/broken.avro": "quarantined",
                        f"StepsRecord/{good}": "processed"}


async def test_load_samples_ctrl_c_is_one_line_and_exit_130(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    import signal

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etl_engine.ops.cli", "load-samples", str(SAMPLES), "--wait",
        "--run-id", "ctrlc", env={**os.environ, **test_env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = b""
    while b"published" not in seen:  # no worker: it waits for outcomes until interrupted
        seen += await asyncio.wait_for(proc.stderr.readline(), 60)
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and err.decode().rstrip().endswith(
        "etl-engine load-samples: interrupted")


async def test_dlq_list_before_any_worker_ran(test_env) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = await etl(test_env, "dlq", "list")
    assert rc == 0, err
    assert "does not exist yet" in out and "Traceback" not in err
    rc, out, _ = await etl(test_env, "dlq", "list", "--json")
    assert rc == 0 and orjson.loads(out) == []
    rc, _, err = await etl(test_env, "dlq", "show", "some-id")
    assert rc == 1 and "does not exist yet" in err


async def test_worker_with_refused_credentials_exits_69(test_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from helpers import WorkerProcess

    bad = test_env["ETL_AMQP_URL"].replace("guest:guest@", "guest:wrong-password@")
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_AMQP_URL=bad)
    try:
        assert await w.wait_exit(60) == 69
    finally:
        w.kill()
    said = (tmp_path / "w.log").read_text()
    assert "etl-engine worker: RabbitMQ refused the login (ACCESS_REFUSED): check " \
           "ETL_AMQP_URL" in said, said[-2000:]
    assert "Traceback" not in said and "wrong-password" not in said


async def test_status_discovers_sidecars_and_worker_check(settings, test_env, tmp_path  # type: ignore[no-untyped-def]
                                                         ) -> None:
    from helpers import WorkerProcess

    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_WORKER_ID="found-me")
    try:
        await w.wait_ready()
        rc, out, err = await etl(test_env, "status", "--once", "--json", "--ports",
                                 f"{w.port - 2}-{w.port + 2}")
        assert rc == 0, err
        doc = orjson.loads(out)
        assert [x["worker_id"] for x in doc["workers"]] == ["found-me"]
        assert doc["workers"][0]["url"] == f"http://127.0.0.1:{w.port}"
        assert doc["queues"][0] == {"role": "work", "name": settings.queue, "ready": 0,
                                    "consumers": 1}
        rc, out, _ = await etl(test_env, "worker", "--check", "--sidecar-port", str(w.port))
        assert rc == 0 and out.startswith(f"http://127.0.0.1:{w.port}/ready: 200")
        rc, out, _ = await etl(test_env, "worker", "--check", "live", "--sidecar-port",
                               str(w.port))
        assert rc == 0 and "/live: 200" in out
    finally:
        w.signal(15)
        await w.wait_exit()
    rc, out, _ = await etl(test_env, "status", "--once", "--ports", f"{w.port}-{w.port}")
    assert rc == 0 and f"no worker sidecar found on 127.0.0.1 ports {w.port};" in out


async def test_publish_and_config_check_print_json(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    path = next((SAMPLES / "StepsRecord").glob("*.avro"))
    rc, out, err = await etl(test_env, "publish", "--record-type", "stepsrecord", "--file",
                             str(path), "--json")
    assert rc == 0, err
    doc = orjson.loads(out)
    assert doc["record_type"] == "StepsRecord" and doc["routing_key"] == \
        "health.processing.stepsrecord" and doc["key"].startswith("raw/StepsRecord/")
    rc, out, _ = await etl(test_env, "config", "check", "--json")
    shown = orjson.loads(out)["settings"]
    assert rc == 0 and shown["ETL_QUEUE"] == settings.queue
    assert shown["ETL_USER_ID_HASH_KEY"] == "********"


async def test_publish_key_of_a_missing_object_says_so(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    """Not "S3 ... check ETL_S3_ENDPOINT_URL": S3 answered, the object is not there."""
    storage_for(settings).ensure_bucket(settings.bucket)
    key = "raw/StepsRecord/2026/01/01/nobody_20260101_000000_000000.avro"
    rc, out, err = await etl(test_env, "publish", "--record-type", "StepsRecord", "--key", key)
    assert rc == 1, err
    assert err.strip() == (f"etl-engine publish: no object {key} in bucket {settings.bucket} "
                           "(--key, --bucket)")
    assert out == ""


async def test_compact_prints_json(settings, test_env) -> None:  # type: ignore[no-untyped-def]
    storage = storage_for(settings)
    rec = {"instruction": "q", "output": "o",
           "metadata": {"period_start": "2026-10-02T00:00:00-05:00", "idempotency_key": "k1"}}
    storage.put(settings.bucket, "training/physical_activity/2026/10/02/k1.jsonl",
                orjson.dumps(rec) + b"\n", content_type="application/x-ndjson")
    rc, out, err = await etl(test_env, "compact", "--month", "2026-10", "--json")
    assert rc == 0, err
    doc = orjson.loads(out)
    assert doc["month"] == "2026-10" and doc["journals"][0]["records"] == 1
    assert doc["journals"][0]["key"].startswith("compacted/physical_activity/2026/10/")


async def test_the_local_env_file_reaches_the_stack(settings, test_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`.venv/bin/etl-engine quarantine list` from a folder whose .env names the stack: no
    ETL_ variable in the environment at all."""
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in test_env.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "AWS_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etl_engine.ops.cli", "quarantine", "list", "--json",
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert orjson.loads(out) == []
