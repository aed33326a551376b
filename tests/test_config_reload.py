"""Hot reload of the configuration: ETL_CONFIG_FILE, POST /admin/config/reload, SIGHUP.

Against a running worker process: a valid change is swapped in (and takes effect), an
invalid candidate changes nothing, a setting that changes outputs or queues is refused with
its reason, SIGHUP does the same as the route. Without services: the file's syntax, the
precedence of the sources, the classification of every setting, the concurrency limit.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import orjson
import pytest

from etl_engine.domain import registry
from etl_engine.observability import metrics
from etl_engine.runtime.reload import RELOADABLE, ConcurrencyLimit, Reloader, refusal
from etl_engine.settings import ConfigError, Settings, load_settings, read_config_file
from helpers import WorkerProcess, publish, sample_files, upload, wait_for, wait_outcomes
from test_sidecar import TOKEN, call

ROTATED = "another-admin-token-of-32-characters-or-more"


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def _reload(w: WorkerProcess, token: str = TOKEN) -> tuple[int, dict[str, object]]:
    status, headers, body = await call(w.port, "/admin/config/reload", "POST", token=token)
    assert headers["Content-Type"] == "application/json", body
    return status, orjson.loads(body)


async def _metrics(w: WorkerProcess) -> str:
    return (await call(w.port, "/metrics"))[2].decode()


def _settled_lines(w: WorkerProcess, message_id: str) -> list[dict[str, object]]:
    return [line for line in w.log_lines()
            if line.get("event") == "message_settled" and line.get("message_id") == message_id]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.env"
    path.write_text("# the ConfigMap's file\nETL_LOG_LEVEL=INFO\n")
    return path


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_a_valid_reload_swaps_in_operational_settings(
    settings, test_env, tmp_path, config_file
) -> None:  # type: ignore[no-untyped-def]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN=TOKEN,
                      ETL_CONFIG_FILE=str(config_file), ETL_TRACE_SAMPLE_RATIO="1.0")
    try:
        await w.wait_ready()
        # a fresh worker exports, at 0, the labelled series the SLOs and alerts take rates
        # of: rate() cannot see a series appear, so the first increment must not create it
        fresh = await _metrics(w)
        for series in [*(f'etl_messages_total{{outcome="{o}",record_type="{t}"}}'
                         for o in metrics.OUTCOMES for t in registry.names()),
                       'etl_messages_total{outcome="rejected",record_type="unknown"}',
                       'etl_dead_lettered_total{reason="attempts_exhausted"}',
                       'etl_dead_lettered_total{reason="delivery_limit"}',
                       *(f'etl_publish_to_settle_seconds_count{{outcome="{o}"}}'
                         for o in ("processed", "quarantined", "dead_lettered")),
                       *(f'etl_config_reloads_total{{result="{r}"}}'
                         for r in ("applied", "unchanged", "refused", "invalid", "failed"))]:
            assert _metric(fresh, series) == 0, series
        assert len(registry.names()) * len(metrics.OUTCOMES) < 100, "bounded labels"
        assert await _reload(w) == (200, {"ok": True, "result": "unchanged",
                                          "config_version": 1, "changed": [], "refused": []})
        rt, path = sample_files()[0]
        first = upload(settings, rt, path)
        await publish(settings, first.message())
        await wait_outcomes(settings, [first.message_id])
        await wait_for(lambda: _settled_lines(w, first.message_id), what="an INFO line")

        # the environment says 4 (test_env); the file overrides it, and more
        config_file.write_text("ETL_LOG_LEVEL=WARNING\nETL_CONCURRENCY=2\n"
                               "ETL_TRACE_SAMPLE_RATIO=0.25\n"
                               f"ETL_ADMIN_TOKEN={ROTATED}\n")
        status, answer = await _reload(w)
        assert status == 200, answer
        assert answer == {"ok": True, "result": "applied", "config_version": 2,
                          "changed": ["ETL_CONCURRENCY", "ETL_ADMIN_TOKEN", "ETL_LOG_LEVEL",
                                      "ETL_TRACE_SAMPLE_RATIO"], "refused": []}
        # the token rotated: the old one is refused, the new one works
        assert (await call(w.port, "/admin/dlq/stats", token=TOKEN))[0] == 401
        assert (await call(w.port, "/admin/dlq/stats", token=ROTATED))[0] == 200
        text = await _metrics(w)
        assert _metric(text, "etl_config_version") == 2
        assert _metric(text, 'etl_config_reloads_total{result="applied"}') == 1
        assert _metric(text, 'etl_config_reloads_total{result="unchanged"}') == 1
        health = orjson.loads((await call(w.port, "/health"))[2])
        assert health["config_version"] == 2

        # the level took effect: an INFO line no longer appears, the worker still works
        second = upload(settings, rt, path)
        await publish(settings, second.message())
        assert (await wait_outcomes(settings, [second.message_id])) == {
            second.message_id: "processed"}
        await asyncio.sleep(0.3)
        assert _settled_lines(w, second.message_id) == []
        assert (await _reload(w, ROTATED))[1]["result"] == "unchanged"
    finally:
        w.kill()


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_invalid_and_restart_only_changes_change_nothing(
    settings, test_env, tmp_path, config_file
) -> None:  # type: ignore[no-untyped-def]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN=TOKEN,
                      ETL_CONFIG_FILE=str(config_file))
    try:
        await w.wait_ready()
        # invalid: nothing changes, not even the valid line next to the bad one
        config_file.write_text("ETL_LOG_LEVEL=WARNING\nETL_CONCURRENCY=0\n")
        status, answer = await _reload(w)
        assert status == 422 and answer["ok"] is False and answer["result"] == "invalid"
        assert answer["config_version"] == 1 and answer["changed"] == []
        assert "ETL_CONCURRENCY" in str(answer["error"])
        config_file.write_text("ETL_LOG_LEVLE=WARNING\n")  # a typo is not ignored
        status, answer = await _reload(w)
        assert status == 422 and "ETL_LOG_LEVLE" in str(answer["error"])
        config_file.unlink()
        status, answer = await _reload(w)
        assert status == 422 and "cannot read" in str(answer["error"])

        # outputs and queues need a restart: the file may not set them (it would reach the
        # fleet one pod start at a time); invalid, and the valid line beside changes nothing
        for line in ("ETL_QUALITY_THRESHOLD=0.9", "ETL_RETRY_DELAYS_MS=100"):
            config_file.write_text(f"ETL_LOG_LEVEL=DEBUG\n{line}\n")
            status, answer = await _reload(w)
            assert status == 422 and answer["result"] == "invalid", answer
            assert answer["changed"] == [] and answer["config_version"] == 1
            name = line.partition("=")[0]
            assert (f"{name} needs a restart: set it in the environment/ConfigMap config.env"
                    in str(answer["error"]))

        # a concurrency above the prefetch granted at start: refused, the rest applied
        config_file.write_text("ETL_CONCURRENCY=64\nETL_LOG_FORMAT=json\n"
                               "ETL_LOG_LEVEL=DEBUG\n")
        status, answer = await _reload(w)
        assert status == 409 and answer["ok"] is False and answer["result"] == "refused"
        assert answer["changed"] == ["ETL_LOG_LEVEL"] and answer["config_version"] == 2
        refused = {r["setting"]: r["reason"] for r in answer["refused"]}  # type: ignore[union-attr]
        assert set(refused) == {"ETL_CONCURRENCY"}
        assert "prefetch" in refused["ETL_CONCURRENCY"]  # 64 > the 4 granted at start
        # still refused on the next reload: the running worker has not changed
        assert (await _reload(w))[1]["refused"] == answer["refused"]
        text = await _metrics(w)
        assert _metric(text, 'etl_config_reloads_total{result="invalid"}') == 5
        assert _metric(text, 'etl_config_reloads_total{result="refused"}') == 2
        assert _metric(text, 'etl_config_reloads_total{result="failed"}') == 0
        assert _metric(text, "etl_config_version") == 2
        # and the worker still processes with the threshold it started with
        rt, path = sample_files()[0]
        u = upload(settings, rt, path)
        await publish(settings, u.message())
        assert (await wait_outcomes(settings, [u.message_id]))[u.message_id] == "processed"
    finally:
        w.kill()


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_sighup_reloads_like_the_route(settings, test_env, tmp_path, config_file
                                             ) -> None:  # type: ignore[no-untyped-def]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_CONFIG_FILE=str(config_file))
    try:
        await w.wait_ready()
        config_file.write_text("ETL_LOG_LEVEL=DEBUG\nETL_CONCURRENCY=64\n")
        w.signal(signal.SIGHUP)

        def reloaded() -> list[dict[str, object]]:
            return [line for line in w.log_lines() if line.get("event") == "config_reload"]

        await wait_for(reloaded, what="the reload's log line")
        (line,) = reloaded()
        assert line["trigger"] == "sighup" and line["result"] == "refused"
        assert line["changed"] == ["ETL_LOG_LEVEL"]
        assert line["refused"] == ["ETL_CONCURRENCY"]  # above the prefetch granted at start
        assert line["config_version"] == 2
        assert _metric(await _metrics(w), "etl_config_version") == 2
        assert w.proc.poll() is None, "SIGHUP does not stop the worker"
        # no admin token, no admin routes: SIGHUP is the way in
        assert (await call(w.port, "/admin/config/reload", "POST", token=TOKEN))[0] == 404
    finally:
        w.kill()


# --- without services -------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("ETL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ETL_ENV", "development")


@pytest.mark.usefixtures("clean_env")
def test_precedence_file_over_environment_over_dotenv_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("ETL_CONCURRENCY=3\nETL_LOG_LEVEL=ERROR\nETL_QUEUE=from-dotenv\n")
    config = tmp_path / "worker.env"
    config.write_text("# comment\n\nETL_LOG_LEVEL=DEBUG\n ETL_LOG_FORMAT = console \n")
    monkeypatch.setenv("ETL_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ETL_CONCURRENCY", "5")
    monkeypatch.setenv("ETL_CONFIG_FILE", str(config))
    s = load_settings(env_file=dotenv)
    assert s.log_level == "DEBUG" and s.log_format == "console"  # the file
    assert s.concurrency == 5  # the environment over the dotenv file
    assert s.queue == "from-dotenv" and s.exchange == "health_data_exchange"
    assert load_settings(env_file=dotenv, log_level="INFO").log_level == "INFO"  # flags
    monkeypatch.delenv("ETL_CONFIG_FILE")
    dotenv.write_text(f"ETL_CONFIG_FILE={config}\n")  # named in the dotenv file works too
    assert load_settings(env_file=dotenv).log_level == "DEBUG"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("text, message", [
    ("ETL_LOG_LEVEL\n", "not an ETL_NAME=value line"),
    ("LOG_LEVEL=DEBUG\n", "not an ETL_NAME=value line"),
    ("ETL_NOT_A_SETTING=1\n", "ETL_NOT_A_SETTING is not a setting"),
    ("ETL_CONFIG_FILE=/elsewhere\n", "ETL_CONFIG_FILE is not a setting it may set"),
    ("ETL_QUALITY_THRESHOLD=0.9\n", "ETL_QUALITY_THRESHOLD needs a restart: set it in the "
                                    "environment/ConfigMap config.env"),
    ("etl_queue=other\n", "ETL_QUEUE needs a restart"),
])
def test_config_file_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.env"
    path.write_text("# ok\n" + text)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        read_config_file(str(path))
    assert f"{path}:2" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_file(str(tmp_path / "missing.env"))
    path.write_text("ETL_CONCURRENCY=-1\n")
    with pytest.raises(ConfigError, match="ETL_CONCURRENCY"):
        load_settings(config_file=str(path))


@pytest.mark.usefixtures("clean_env")
def test_the_config_file_sets_only_reloadable_settings_at_start_too(tmp_path: Path) -> None:
    """Read at every start: a restart-only setting there would take effect pod by pod (a
    fleet with two quality thresholds). The worker refuses to start (exit 78) naming it."""
    import subprocess
    import sys

    path = tmp_path / "worker.env"
    path.write_text("".join(f"ETL_{f.upper()}={v}\n" for f, v in (
        ("log_level", "DEBUG"), ("log_format", "console"), ("concurrency", "3"),
        ("trace_sample_ratio", "0.5"), ("admin_token", ROTATED))))
    loaded = load_settings(config_file=str(path))
    assert (loaded.log_level, loaded.concurrency, loaded.trace_sample_ratio) == ("DEBUG", 3, 0.5)
    assert {line.partition("=")[0] for line in path.read_text().splitlines()} == {
        "ETL_" + f.upper() for f in RELOADABLE}, "the file may set every reloadable one"
    path.write_text("ETL_LOG_LEVEL=DEBUG\nETL_QUALITY_THRESHOLD=0.9\n")
    env = {**{k: v for k, v in os.environ.items() if not k.upper().startswith("ETL_")},
           "ETL_ENV": "development", "ETL_CONFIG_FILE": str(path)}
    for command in (["worker"], ["config", "check"]):
        proc = subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", *command],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 78, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert (f"{path}:2: ETL_QUALITY_THRESHOLD needs a restart: set it in the "
                "environment/ConfigMap config.env") in proc.stderr, proc.stderr


def test_every_setting_is_reloadable_or_refused_with_a_reason() -> None:
    s = Settings(env="development")  # type: ignore[call-arg]
    for name in Settings.model_fields:
        why = refusal(name, s, granted_prefetch=s.effective_prefetch)
        assert (why is None) == (name in RELOADABLE), name
        if why is not None:
            assert why.endswith("restart") or "restart every worker" in why, (name, why)
    assert refusal("quality_threshold", s, 8) is not None
    assert "same outcome" in (refusal("origin_priority", s, 8) or "")
    assert "topology" in (refusal("queue", s, 8) or "")
    bigger = s.model_copy(update={"concurrency": 9})
    assert "prefetch" in (refusal("concurrency", bigger, 8) or "")
    assert refusal("concurrency", bigger, 9) is None


@pytest.mark.usefixtures("clean_env")
async def test_a_reload_is_applied_before_it_is_committed_and_a_failed_apply_changes_nothing(
) -> None:
    base = Settings(env="development")  # type: ignore[call-arg]
    debug = base.model_copy(update={"log_level": "DEBUG"})
    seen: list[tuple[str, list[str], int, int, str]] = []
    fail = True

    def apply(new: Settings, changed: list[str], version: int) -> None:
        # what it is given, and what the reloader holds while it runs
        seen.append((new.log_level, list(changed), version, reloader.version,
                     reloader.current.log_level))
        if fail and new.log_level == "DEBUG":
            raise RuntimeError("a half-done swap")

    reloader = Reloader(base, load=lambda: debug, apply=apply, granted_prefetch=8)
    status, answer = await reloader.reload("test")
    assert (status, answer["ok"], answer["result"]) == (500, False, "failed")
    assert answer["error"] == "RuntimeError" and answer["changed"] == []
    assert answer["config_version"] == 1
    assert reloader.version == 1 and reloader.current is base
    # tried as version 2, then undone: the running configuration put back as version 1
    assert seen == [("DEBUG", ["log_level"], 2, 1, "INFO"), ("INFO", ["log_level"], 1, 1, "INFO")]

    fail = False
    seen.clear()
    status, answer = await reloader.reload("test")
    assert status == 200 and answer["config_version"] == 2
    assert seen == [("DEBUG", ["log_level"], 2, 1, "INFO")], "applied, then committed"
    assert reloader.version == 2 and reloader.current.log_level == "DEBUG"


async def test_concurrency_limit_can_be_lowered_and_raised() -> None:
    limit = ConcurrencyLimit(2)
    running: list[int] = []
    release = asyncio.Event()

    async def job(n: int) -> None:
        await limit.acquire()
        try:
            running.append(n)
            await release.wait()
        finally:
            limit.release()

    tasks = [asyncio.create_task(job(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert running == [0, 1]
    limit.set(4)
    await asyncio.sleep(0.01)
    assert running == [0, 1, 2, 3]
    tasks[4].cancel()  # a waiting delivery cancelled (shutdown) holds no slot
    await asyncio.sleep(0.01)
    limit.set(1)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limit.active == 0 and running == [0, 1, 2, 3]
