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
from helpers import SAMPLES, results, running_worker, storage_for

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
                            "idempotency_key": key}}
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
    keys = [orjson.loads(line)["metadata"]["idempotency_key"] for line in body1.splitlines()]
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
