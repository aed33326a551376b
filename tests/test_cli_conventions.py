"""`etl-engine` as users of other tools expect it, without services: help, flags mapped onto
the settings, .env, exit codes, completion, progress lines, the status screen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl_engine.errors import ExitCode
from etl_engine.ops import cli
from etl_engine.ops.progress import Progress, eta
from etl_engine.ops.status import Screen

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``etl-engine ARGS`` with only ``env`` (and PATH): no developer ETL_ variables."""
    base = {"PATH": os.environ["PATH"], "ETL_ENV_FILE": "", "AWS_EC2_METADATA_DISABLED": "true"}
    if "PYTHONPATH" in os.environ:  # the code under test (a worktree), not an installed copy
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", *args],
                          env={**base, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _parsers(parser: argparse.ArgumentParser, name: str = "etl-engine"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


# Development tools' commands (tools/etl_devtools) and the other helpers' ones are checked
# by their own tests; these are the operator commands this module owns.
OWN = ("worker", "publish", "load-samples", "compact", "status", "dlq", "quarantine",
       "config", "completion")


# --- help -------------------------------------------------------------------------------------
def test_every_option_has_help_and_shows_its_default_or_choices() -> None:
    parser = cli.build_parser()
    for name, sub in _parsers(parser):
        if name != "etl-engine" and name.split()[1] not in OWN:
            continue
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if action.dest == "version":
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {label}: no help"
            shown = HelpFormatterProbe(sub).help_for(action)
            if action.default not in (None, False, "", [], argparse.SUPPRESS):
                assert "default" in shown, f"{name} {label}: {shown!r}"
            if action.choices:
                assert all(str(c) in text for c in action.choices), f"{name} {label}"
    assert "``" not in parser.format_help() and "``" not in parser.description


class HelpFormatterProbe:
    """The help line argparse prints for one action (with the default appended)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.formatter = parser._get_formatter()

    def help_for(self, action: argparse.Action) -> str:
        return self.formatter._expand_help(action) if action.help else ""


def test_record_type_has_choices_and_any_case_is_its_canonical_name() -> None:
    args = cli.build_parser().parse_args(["publish", "--record-type", "stepsrecord",
                                          "--file", "x.avro"])
    assert args.record_type == "StepsRecord"
    proc = run("publish", "--record-type", "StepRecord", "--file", "x.avro")
    assert proc.returncode == ExitCode.USAGE
    assert "StepRecord" in proc.stderr and "StepsRecord" in proc.stderr  # the choices


def test_top_level_help_lists_commands_exit_codes_and_precedence() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for text in ("worker", "load-samples", "completion", "69", "78", "ETL_CONFIG_FILE",
                 ".env"):
        assert text in proc.stdout, text


# --- worker flags -------------------------------------------------------------------------------
def test_worker_flags_map_onto_the_typed_settings(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("ETL_")]:  # e.g. the stack's .env
        monkeypatch.delenv(name)
    monkeypatch.setenv("ETL_ENV", "development")
    monkeypatch.setenv("ETL_CONCURRENCY", "3")
    monkeypatch.setenv("ETL_QUEUE", "from-env")
    (tmp_path / ".env").write_text("ETL_LOG_FORMAT=console\nETL_QUEUE=from-dotenv\n")
    monkeypatch.setattr(cli, "_env_file", str(tmp_path / ".env"))
    args = cli.build_parser().parse_args([
        "worker", "--concurrency", "12", "--log-level", "debug", "--sidecar-port", "8123",
        "--dedup-url", "redis://127.0.0.1:6379/3"])
    s = cli._worker_settings(args)
    assert (s.concurrency, s.log_level, s.sidecar_port, s.dedup_url) == (
        12, "DEBUG", 8123, "redis://127.0.0.1:6379/3")  # flags win
    assert s.queue == "from-env"  # the environment wins over .env
    assert s.log_format == "console"  # .env fills what the environment leaves
    assert s.effective_prefetch == 12


@pytest.mark.parametrize(("argv", "word"), [
    (["--concurrency", "0"], "--concurrency"), (["--log-format", "xml"], "--log-format"),
    (["--sidecar-port", "http"], "--sidecar-port"), (["--concurrency", "5000"], "1024")])
def test_a_bad_worker_flag_is_a_usage_error_naming_it(argv: list[str], word: str) -> None:
    proc = run("worker", *argv, env={"ETL_ENV": "development"})
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert word in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "word"), [
    (["--dedup-url", "mysql://x"], "redis://"), (["--dedup-url", "foo"], "sqlite:///"),
    (["--queue", ""], "empty"), (["--queue", "  "], "empty")])
def test_a_flag_its_setting_refuses_is_a_usage_error_too(argv: list[str], word: str) -> None:
    """The field validators run on the flag (README: a bad flag value is 2), not only its
    type: ETL_DEDUP_URL's scheme check, and a queue name a worker cannot consume."""
    proc = run("worker", *argv, env={"ETL_ENV": "development"})
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert f"argument {argv[0]}" in proc.stderr and word in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [
    ["status", "--interval", "0.1"], ["status", "--interval", "nan"],
    ["dlq", "list", "--limit", "0"], ["load-samples", "--progress-interval", "0"],
    ["load-samples", "--timeout", "-1"], ["load-samples", "--timeout", "inf"],
    ["quarantine", "release", "k", "--timeout", "0"]])
def test_numbers_out_of_their_range_are_usage_errors(argv: list[str]) -> None:
    proc = run(*argv)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "is not a number from" in proc.stderr


def test_worker_check_probes_the_sidecar(tmp_path: Path) -> None:
    """`worker --check` for health checks: 0 when /ready answers 200, 1 otherwise (here:
    nothing listens), one line either way."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run("worker", "--check", "--sidecar-port", str(port), env={"ETL_ENV": "development"})
    assert proc.returncode == 1 and "unreachable" in proc.stdout, proc
    assert len(proc.stdout.strip().splitlines()) == 1


def _listener(answer: bytes | None = None) -> tuple[socket.socket, int]:
    """A port that accepts connections and never says anything (``answer`` None), or
    answers every request with ``answer`` and closes: not a broker, not a sidecar."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if answer is None:
                held.append(conn)  # open and silent until the test ends
                continue
            with contextlib.suppress(OSError), conn:
                conn.recv(4096)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server, int(server.getsockname()[1])


GARBAGE = b"SSH-2.0-OpenSSH_9.6 not http\r\n\r\n"


def test_status_discovery_and_worker_check_survive_a_port_that_answers_garbage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The finding: discovery and `worker --check` ended in a BadStatusLine traceback on
    a local service that is not HTTP. And neither goes through $http_proxy."""
    from etl_engine.ops import status

    server, port = _listener(GARBAGE)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy would refuse them
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with server:
        assert status.scrape(f"http://127.0.0.1:{port}").error == "BadStatusLine"
        assert asyncio.run(status.discover(range(port, port + 1))) == []
        healthy, line = status.check("127.0.0.1", port)
        assert not healthy and "unreachable (BadStatusLine)" in line
        proc = run("worker", "--check", "--sidecar-port", str(port),
                   env={"http_proxy": "http://127.0.0.1:9"})
    assert proc.returncode == ExitCode.FAILURES and "Traceback" not in proc.stderr, proc
    assert len(proc.stdout.strip().splitlines()) == 1
    with _sidecar_stub() as sidecar_port:  # a real answer, with the proxy still set
        healthy, line = status.check("127.0.0.1", sidecar_port, "/live")
        assert healthy, line
        figures = status.scrape(f"http://127.0.0.1:{sidecar_port}")
        assert (figures.error, figures.worker_id, figures.in_flight) == (None, "stub", 2)
        assert asyncio.run(status.discover(range(sidecar_port, sidecar_port + 1))) == [
            f"http://127.0.0.1:{sidecar_port}"]


@contextlib.contextmanager
def _sidecar_stub() -> Iterator[int]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = {"/health": b'{"worker_id": "stub", "status": "ok", "uptime_s": 1}',
                    "/metrics": b"etl_messages_in_flight 2\n"}.get(self.path, b"ok")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_worker_check_reads_only_the_sidecar_address(tmp_path: Path) -> None:
    """A bad edit elsewhere in the configuration (a bad value, a line that is not NAME=value)
    must not fail the health check of a worker that runs: only ETL_SIDECAR_HOST/PORT are
    read, here from ETL_CONFIG_FILE over the environment."""
    with _sidecar_stub() as port:
        config = tmp_path / "worker.env"
        config.write_text(f"ETL_SIDECAR_PORT={port}\nnot a setting line\nETL_NOPE=1\n")
        proc = run("worker", "--check", "live", env={
            "ETL_CONFIG_FILE": str(config), "ETL_CONCURRENCY": "lots",
            "ETL_SIDECAR_PORT": "1"})
        assert proc.returncode == ExitCode.OK, proc
        assert f":{port}/live: 200" in proc.stdout
        dotenv = tmp_path / "stack.env"
        dotenv.write_text(f"ETL_SIDECAR_PORT={port}\nETL_MAX_ATTEMPTS=lots\n")
        assert run("--env-file", str(dotenv), "worker", "--check").returncode == ExitCode.OK
    proc = run("worker", "--check", env={"ETL_SIDECAR_PORT": "http"})
    assert proc.returncode == ExitCode.CONFIG and "ETL_SIDECAR_PORT" in proc.stderr


def test_a_sidecar_port_in_use_is_one_line_exit_78(tmp_path: Path) -> None:
    server, port = _listener()
    with server:
        proc = run("worker", "--sidecar-port", str(port), "--log-format", "console",
                   env={"ETL_ENV": "development"}, cwd=tmp_path)
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "sidecar cannot listen" in x)
    assert f"127.0.0.1:{port}" in line and "Address already in use" in line
    assert "ETL_SIDECAR_PORT" in line


# --- .env and exit codes ------------------------------------------------------------------------
def test_the_cli_reads_env_from_the_working_directory_under_the_environment(
        tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# a comment\nETL_ENV=development\nETL_QUEUE=from-dotenv\nETL_CONCURRENCY=5\n"
        "REDIS_PASSWORD=not-a-setting\n")
    proc = subprocess.run(
        [sys.executable, "-m", "etl_engine.ops.cli", "config", "check", "--json"],
        env={"PATH": os.environ["PATH"], "ETL_CONCURRENCY": "7"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    settings = orjson.loads(proc.stdout)["settings"]
    assert settings["ETL_QUEUE"] == "from-dotenv" and settings["ETL_CONCURRENCY"] == "7"
    other = tmp_path / "elsewhere.env"
    other.write_text("ETL_ENV=development\nETL_QUEUE=from-option\n")
    proc = run("--env-file", str(other), "config", "check", "--json", cwd=tmp_path)
    assert orjson.loads(proc.stdout)["settings"]["ETL_QUEUE"] == "from-option"
    proc = run("--env-file", "", "config", "check", cwd=tmp_path)  # none: the hash key
    assert proc.returncode == ExitCode.CONFIG and "ETL_USER_ID_HASH_KEY" in proc.stderr


@pytest.mark.parametrize("name", ["missing.env", "."])
def test_an_env_file_named_explicitly_must_be_a_file(tmp_path: Path, name: str) -> None:
    proc = run("--env-file", str(tmp_path / name), "config", "check", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "--env-file" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("config", "check", env={"ETL_ENV_FILE": str(tmp_path / name)}, cwd=tmp_path)
    assert proc.returncode == ExitCode.CONFIG and "ETL_ENV_FILE" in proc.stderr
    # No option and no variable: a missing .env in the working directory is no error.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    assert subprocess.run(
        [sys.executable, "-m", "etl_engine.ops.cli", "config", "check"], cwd=tmp_path,
        env={**env, "ETL_ENV": "development"}, capture_output=True,
        timeout=60).returncode == ExitCode.OK


def test_config_check_json_reports_an_invalid_configuration() -> None:
    proc = run("config", "check", "--json", env={"ETL_MAX_ATTEMPTS": "lots"})
    assert proc.returncode == ExitCode.CONFIG
    doc = orjson.loads(proc.stdout)
    assert doc["ok"] is False
    settings = {e["setting"] for e in doc["errors"]}
    assert {"ETL_MAX_ATTEMPTS", "ETL_USER_ID_HASH_KEY"} <= settings, doc
    assert all(e["message"] and "Value error" not in e["message"] for e in doc["errors"])


def test_exit_codes_usage_2_config_78() -> None:
    assert run("no-such-command").returncode == ExitCode.USAGE
    assert run("compact", "--month", "2026-13").returncode == ExitCode.USAGE
    proc = run("config", "check", env={"ETL_MAX_ATTEMPTS": "lots"})
    assert proc.returncode == ExitCode.CONFIG and "ETL_MAX_ATTEMPTS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (ExitCode.USAGE, ExitCode.UNAVAILABLE, ExitCode.CONFIG) == (2, 69, 78)


DEAD_BROKER = "amqp://guest:guest@127.0.0.1:9/"  # discard port: nothing listens


@pytest.mark.parametrize("argv", [["dlq", "list"], ["dlq", "replay", "--all"],
                                  ["publish", "--record-type", "StepsRecord", "--key",
                                   "raw/StepsRecord/x.avro"]])
def test_an_unreachable_service_is_one_line_and_exit_69(argv: list[str]) -> None:
    env = {"ETL_ENV": "development", "ETL_AMQP_URL": DEAD_BROKER,
           "ETL_S3_ENDPOINT_URL": "http://127.0.0.1:9", "ETL_S3_ACCESS_KEY_ID": "k",
           "ETL_S3_SECRET_ACCESS_KEY": "s", "ETL_S3_CONNECT_TIMEOUT_S": "1"}
    proc = run(*argv, env=env)
    assert proc.returncode == ExitCode.UNAVAILABLE, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # the client library's own error log is quiet
    line = lines[0]
    assert line.startswith(f"etl-engine {argv[0]}") and "check ETL_" in line, line
    assert ("RabbitMQ" in line and "ETL_AMQP_URL" in line) or (
        "S3" in line and "ETL_S3_ENDPOINT_URL" in line), line


def test_status_once_with_the_broker_unreachable_exits_69() -> None:
    proc = run("status", "--once", "--targets", "http://127.0.0.1:9",
               env={"ETL_ENV": "development", "ETL_AMQP_URL": DEAD_BROKER})
    assert proc.returncode == ExitCode.UNAVAILABLE, proc.stderr
    assert "broker unreachable" in proc.stdout  # the report still shows what it could
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("etl-engine status: RabbitMQ") and "ETL_AMQP_URL" in line


@pytest.fixture
def silent_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A port that accepts the TCP connection and never answers the AMQP handshake:
    aio-pika then raises a bare TimeoutError (its cause a CancelledError), which names no
    client library. The connect timeout is shortened for the test."""
    from etl_engine.adapters import topology

    monkeypatch.setattr(topology, "CONNECT_TIMEOUT_S", 0.5)
    server, port = _listener()
    with server:
        yield f"amqp://guest:guest@127.0.0.1:{port}/"


def test_a_broker_that_never_answers_is_one_line_and_exit_69(
        silent_broker: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ETL_ENV", "development")
    monkeypatch.setenv("ETL_AMQP_URL", silent_broker)
    assert cli.main(["dlq", "list"]) == ExitCode.UNAVAILABLE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("etl-engine dlq list: RabbitMQ is unreachable at amqp://guest:")
    assert "no answer within 0.5 s" in line and line.endswith("check ETL_AMQP_URL")


def test_publishers_say_a_silent_broker_as_unavailable(silent_broker: str) -> None:
    """Publisher (publish, load-samples, quarantine release) and the DLQ reads (dlq) share
    one connect; the uploaders' Announcer raises AnnounceFailed, as documented."""
    from etl_engine.adapters.announce import AnnounceFailed, Announcer
    from etl_engine.adapters.operator_reads import open_dlq
    from etl_engine.adapters.publisher import Publisher
    from etl_engine.adapters.topology import BrokerUnreachable
    from etl_engine.ops import failures
    from etl_engine.settings import Settings

    s = Settings(env="development", amqp_url=silent_broker)

    async def attempts() -> list[BaseException]:
        caught: list[BaseException] = []
        for opener in (lambda: Publisher(s), lambda: open_dlq(s), lambda: Announcer(
                silent_broker)):
            try:
                async with opener():
                    pass
            except Exception as exc:
                caught.append(exc)
        return caught

    publisher, reads, announcer = asyncio.run(attempts())
    assert isinstance(publisher, BrokerUnreachable) and isinstance(reads, BrokerUnreachable)
    assert isinstance(announcer, AnnounceFailed)
    assert isinstance(announcer.__cause__, BrokerUnreachable)
    for exc in (publisher, reads, announcer):
        found = failures.unavailable(exc)
        assert found is not None and found.setting == "ETL_AMQP_URL", exc
    # Refused (nothing listens): the client library's own error, also AnnounceFailed.
    with pytest.raises(AnnounceFailed):
        asyncio.run(Announcer(DEAD_BROKER).__aenter__())


def test_publish_of_a_missing_file_is_a_usage_error_before_any_service() -> None:
    proc = run("publish", "--record-type", "StepsRecord", "--file", "missing.avro",
               env={"ETL_ENV": "development", "ETL_AMQP_URL": DEAD_BROKER,
                    "ETL_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("etl-engine publish: --file missing.avro: cannot read it")


def test_missing_s3_credentials_name_the_settings(tmp_path: Path) -> None:
    """The finding: outside the stack script, quarantine list went to AWS and ended in a
    NoCredentialsError traceback."""
    env = {"ETL_ENV": "development", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no"),
           "AWS_CONFIG_FILE": str(tmp_path / "no"), "HOME": str(tmp_path)}
    proc = run("quarantine", "list", env=env)
    assert proc.returncode == ExitCode.UNAVAILABLE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ETL_S3_ACCESS_KEY_ID" in proc.stderr and "ETL_S3_ENDPOINT_URL" in proc.stderr


# --- completion ---------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    proc = run("completion", "bash")
    assert proc.returncode == 0 and "complete" in proc.stdout
    script = tmp_path / "etl-engine.bash"
    script.write_text(proc.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                 f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; '
                 '_shtab_etl_engine etl-engine; printf "%s\\n" "${COMPREPLY[@]}"')
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.split()

    assert "dlq" in complete("etl-engine", "dl")
    assert "--concurrency" in complete("etl-engine", "worker", "--con")
    assert complete("etl-engine", "worker", "--log-format", '""') == ["json", "console"]
    for shell in ("zsh", "tcsh"):
        assert run("completion", shell).returncode == 0


# --- output -------------------------------------------------------------------------------------
def test_progress_in_a_pipe_is_plain_periodic_lines() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress("uploaded", 100, stream=out, tty=False, interval=5.0, clock=lambda: now[0])
    with bar:
        for i in range(100):
            now[0] = i * 0.2  # 20 s in all, 5 files a second
            bar.advance(1, 1000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert 3 <= len(lines) <= 6, lines  # one every 5 s and the last, not one per file
    assert lines[-1].startswith("  uploaded 100/100 (100%)") and lines[-1].endswith("done")
    assert "files/s" in lines[0] and "ETA" in lines[0]


def test_progress_on_a_terminal_redraws_one_line_with_rate_and_eta() -> None:
    now = [0.0]
    out = io.StringIO()
    with Progress("settled", 10, stream=out, tty=True, clock=lambda: now[0]) as bar:
        for i in range(1, 6):
            now[0] = i * 1.0
            bar.update(i)
        shown = out.getvalue().split("\r")[-1]
        assert "5/10 (50%)" in shown and "1.0 files/s" in shown and "ETA 0:05" in shown
        assert shown.endswith("\x1b[K") and "#" in shown
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
    assert eta(3725) == "1:02:05" and eta(None) == "-"


def test_status_screen_redraws_in_place_without_clearing() -> None:
    out = io.StringIO()
    with Screen(out, enabled=True) as screen:
        screen.draw("a\nb")
        screen.draw("c")
    text = out.getvalue()
    assert "\x1b[2J" not in text, "a full clear flickers"
    assert text.startswith("\x1b[?1049h") and "\x1b[Hc\x1b[K\n\x1b[J" in text
    assert text.endswith("\x1b[?1049lc\n"), "the last frame stays on the normal screen"
    plain = io.StringIO()
    with Screen(plain, enabled=False) as screen:
        screen.draw("x")
    assert "\x1b" not in plain.getvalue()


def _json_flags() -> dict[str, Any]:
    parser = cli.build_parser()
    return {name: any("--json" in a.option_strings for a in sub._actions)
            for name, sub in _parsers(parser)}


def test_every_reporting_command_takes_json() -> None:
    flags = _json_flags()
    for name in ("etl-engine publish", "etl-engine load-samples", "etl-engine compact",
                 "etl-engine status", "etl-engine dlq list", "etl-engine dlq show",
                 "etl-engine dlq replay", "etl-engine quarantine list",
                 "etl-engine quarantine show", "etl-engine quarantine release",
                 "etl-engine config check"):
        assert flags[name], name
