"""Static checks of the deployment files: Dockerfile, compose stack, Kubernetes, .env.template.

No Docker engine, no cluster, no services: everything is parsed and cross-checked against the
code (settings, metrics, topology). Kubernetes built-in kinds are validated against the
Kubernetes JSON schemas (kubernetes-validate); the KEDA and Prometheus Operator kinds are
checked structurally. Manifests are rendered with `kubectl kustomize` / `kustomize build`
when one is on PATH; the kustomization references are resolved in Python either way.
`promtool`, when installed, checks the Prometheus config and every alert expression.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_engine.adapters.topology import (
    legacy_retry_queue_names,
    retry_queue_arguments,
    work_queue_arguments,
)
from etl_engine.domain import record_types
from etl_engine.observability import metrics
from etl_engine.ops import cli
from etl_engine.settings import ConfigError, Settings, load_settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deployment"
K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
COMPOSE = DEPLOY / "docker-compose.yml"

SECRET_SETTINGS = {
    "ETL_AMQP_URL", "ETL_S3_ACCESS_KEY_ID", "ETL_S3_SECRET_ACCESS_KEY", "ETL_ADMIN_TOKEN",
    "ETL_USER_ID_HASH_KEY", "ETL_LINEAGE_KEY",
    "ETL_DEDUP_URL",  # the Redis URL carries its password
}
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
K8S_SCHEMA_VERSION = "1.30"  # oldest Kubernetes minor the manifests must work on
# Optional secrets: never in the image or a ConfigMap; the Secret template need not list them.
OPTIONAL_SECRETS = {"ETL_ADMIN_AMQP_URL"}
# The cause alerts; "no consumers", "p95 > 30 s" and "no workers" gave way to the SLO
# burn-rate alerts (SLO_ALERTS: tests/test_slo.py tests both with promtool).
REQUIRED_ALERT_TOPICS = {
    "EtlDeadLetterQueueGrowing", "EtlQuarantineRateHigh", "EtlWorkerNotReady",
}
SLO_ALERTS = {f"EtlSlo{slo}Burn{speed}" for slo in ("Freshness", "Correctness", "Availability")
              for speed in ("Fast", "Slow")}


# --- helpers ------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_etl_env() -> Iterator[None]:
    """Settings read the process environment; keep a developer's ETL_ variables out."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith("ETL_")}
    try:
        yield
    finally:
        os.environ.update(saved)


# Required secrets that no checked-in file holds: .env (written by the stack scripts) or the
# Kubernetes Secret supplies them.
FROM_SECRET_STORE = {"ETL_USER_ID_HASH_KEY": "from-the-secret-store",
                     "ETL_LINEAGE_KEY": "from-the-secret-store-too"}


# ETL_CONFIG_FILE as the containers see it -> the file in the repository it is made from.
MOUNTED_FILES = {"/etc/etl/config/worker.env": ROOT / "deployment" / "kubernetes" / "base" /
                 "reloadable.env"}
COMPOSE_MOUNTED_FILES = {"/etc/etl/config/worker.env": ROOT / "deployment" / "worker-config" /
                         "worker.env"}


def _settings(values: dict[str, str], mounted: dict[str, Path] = MOUNTED_FILES) -> Settings:
    """Settings from ETL_ name -> string value, as the worker would read them."""
    values = {**FROM_SECRET_STORE,
              **{k: v for k, v in values.items() if v or k not in FROM_SECRET_STORE}}
    if values.get("ETL_CONFIG_FILE") in mounted:
        values["ETL_CONFIG_FILE"] = str(mounted[values["ETL_CONFIG_FILE"]])
    with _no_etl_env():
        return load_settings(**{name[len("ETL_"):].lower(): v for name, v in values.items()})


def _defaults() -> Settings:
    with _no_etl_env():
        return Settings(**{k[len("ETL_"):].lower(): v  # type: ignore[arg-type]
                           for k, v in FROM_SECRET_STORE.items()})


def _plain(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def _env_lines(path: Path) -> list[tuple[int, str, str]]:
    """NAME=value lines of an env file (comments and blank lines skipped)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not NAME=value: {line!r}"
        out.append((n, name.strip(), value))
    return out


def _metric_sample_names() -> set[str]:
    """Every series name the worker can expose, from the live registry."""
    suffixes = {
        "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"), "info": ("_info",),
    }
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _assert_known_metrics(expr: str, where: str) -> None:
    known = _metric_sample_names()
    unknown = sorted(set(re.findall(r"\betl_[a-z0-9_]+", expr)) - known)
    assert not unknown, (f"{where}: unknown metric(s) {unknown} "
                        "(see src/etl_engine/observability/metrics.py)")


# --- .env.template ------------------------------------------------------------------------
ENV_TEMPLATE = ROOT / ".env.template"


def test_env_template_lists_exactly_the_settings() -> None:
    names = [name for _, name, _ in _env_lines(ENV_TEMPLATE)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed twice: {duplicates}"
    assert sorted(names) == setting_names(), (
        f"missing: {sorted(set(setting_names()) - set(names))}, "
        f"unknown: {sorted(set(names) - set(setting_names()))}"
    )


def test_env_template_follows_settings_order_and_comments_each_line() -> None:
    names = [name for _, name, _ in _env_lines(ENV_TEMPLATE)]
    declared = ["ETL_" + f.upper() for f in Settings.model_fields]
    assert names == declared, "group and order the variables as settings.py declares them"
    lines = ENV_TEMPLATE.read_text().splitlines()
    for n, name, _ in _env_lines(ENV_TEMPLATE):
        assert lines[n - 2].startswith("# "), f"{name}: needs a one-line comment above it"


# Where the template deliberately differs from the code's default (the stack's choice); the
# comment above the line must then name the code's default.
TEMPLATE_NOT_DEFAULT = {"ETL_DEDUP_URL": "redis://127.0.0.1:6379/0"}


def test_env_template_values_are_the_defaults() -> None:
    values = {name: value for _, name, value in _env_lines(ENV_TEMPLATE)}
    for name, value in values.items():
        assert value == value.strip() and not value.startswith(("'", '"')), (
            f"{name}: plain values only (the stack script reads the file verbatim)")
    loaded, defaults = _settings(values), _defaults()
    text = ENV_TEMPLATE.read_text()
    for field_name in Settings.model_fields:
        name = "ETL_" + field_name.upper()
        got, want = _plain(getattr(loaded, field_name)), _plain(getattr(defaults, field_name))
        if name in TEMPLATE_NOT_DEFAULT and got != want:
            assert got == TEMPLATE_NOT_DEFAULT[name], name
            comment = text.split(f"\n{name}=", 1)[0].rsplit("\n", 3)[-2:]
            assert any(str(want) in line for line in comment), (
                f"{name}: the comment must name the code's default {want!r}")
            continue
        assert got == want, f"{name}: template {got!r} != default {want!r}"


def test_set_up_writes_the_local_stacks_endpoint_and_keys_into_env(tmp_path: Path) -> None:
    """scripts/lib/local-stack-env.sh (set-up, and the stack script in native mode): .env
    from the template gets the local S3 server's endpoint and keys, so a plain
    `.venv/bin/etl-engine ...` reads them; values a developer set are kept."""
    lib = ROOT / "scripts" / "lib" / "local-stack-env.sh"
    for script in ("setup-etl-dev.sh", "manage-etl-stack.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "lib/local-stack-env.sh" in text and "ensure_local_stack_env" in text, script
    (tmp_path / ".env").write_text(ENV_TEMPLATE.read_text())
    run = ["bash", "-c", f'set -euo pipefail; . "{lib}"; ensure_local_stack_env']
    subprocess.run(run, cwd=tmp_path, check=True, timeout=30, env={"PATH": os.environ["PATH"]})
    with _no_etl_env():
        s = load_settings(env_file=tmp_path / ".env", user_id_hash_key="k", lineage_key="k")
    assert s.s3_endpoint_url == "http://127.0.0.1:9000"
    assert s.s3_access_key_id.get_secret_value() == "etl-local"
    assert s.s3_secret_access_key.get_secret_value() == "etl-local-secret"
    lines = [name for _, name, _ in _env_lines(tmp_path / ".env")]
    assert len(lines) == len(set(lines)), "a variable written twice"
    custom = (tmp_path / ".env").read_text().replace(
        "ETL_S3_ENDPOINT_URL=http://127.0.0.1:9000", "ETL_S3_ENDPOINT_URL=http://minio:9000")
    (tmp_path / ".env").write_text(custom)
    subprocess.run(run, cwd=tmp_path, check=True, timeout=30, env={"PATH": os.environ["PATH"],
                                                                     "S3_PORT": "9100"})
    assert (tmp_path / ".env").read_text() == custom, "a developer's value was replaced"


# --- Dockerfile -----------------------------------------------------------------------------
@dataclass
class Instruction:
    cmd: str
    flags: dict[str, str]
    args: str
    line: int

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions per stage, continuation lines joined, comments dropped, FROM resolved."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside a continuation) and blank lines
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1]
            continue
        logical.append((start, buf + raw))
        buf = ""
    assert not buf, "dangling line continuation at end of Dockerfile"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text_line in logical:
        cmd, _, rest = text_line.strip().partition(" ")
        cmd, rest = cmd.upper(), rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            key, _, val = token[2:].partition("=")
            flags[key] = val
            rest = rest.strip()
        if cmd == "ARG" and not stages:
            key, _, default = rest.partition("=")
            global_args[key] = default
            continue
        if cmd == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=image, name=name))
            continue
        assert stages, f"line {line}: {cmd} before the first FROM"
        stages[-1].instructions.append(Instruction(cmd, flags, rest, line))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())[1]


def _final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_dockerfile_is_multi_stage_on_a_pinned_python_slim(dockerfile: list[Stage]) -> None:
    assert len(dockerfile) >= 2, "multi-stage: a builder and a runtime stage"
    names = {s.name for s in dockerfile if s.name}
    for stage in dockerfile:
        if stage.base in names:
            continue
        assert re.fullmatch(
            r"python:3\.11\.\d+-slim(-[a-z]+)?@sha256:[0-9a-f]{64}", stage.base
        ), f"FROM {stage.base!r}: pin python:3.11.<patch>-slim[-<debian>]@sha256:<digest>"
    text = (ROOT / "Dockerfile").read_text()
    assert "imagetools inspect" in text, "document how to resolve the digest of a new tag"


def test_dockerfile_runtime_stage(dockerfile: list[Stage]) -> None:
    final = _final(dockerfile)
    users = final.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) >= 1000, (
        f"USER {users[-1].args}: numeric non-root uid (Kubernetes runAsNonRoot checks it)")
    assert "8004" in [p.split("/")[0] for e in final.all("EXPOSE") for p in e.args.split()]
    assert [s.args for s in final.all("STOPSIGNAL")] == ["SIGTERM"]
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["etl-engine"]
    assert final.all("CMD")[-1].exec_form() == ["worker"]

    (health,) = final.all("HEALTHCHECK")
    kind, _, command = health.args.partition(" ")
    assert kind == "CMD", "HEALTHCHECK CMD [...] (exec form)"
    argv = json.loads(command)
    assert argv == ["etl-engine", "worker", "--check", "live"], argv  # no inline Python
    for flag in ("interval", "timeout", "retries"):
        assert flag in health.flags, f"HEALTHCHECK --{flag}"


def test_dockerfile_bakes_in_no_secret(dockerfile: list[Stage]) -> None:
    for stage in dockerfile:
        for instr in stage.all("ENV") + stage.all("ARG"):
            names = {tok.split("=", 1)[0] for tok in shlex.split(instr.args)}
            # ETL_DEDUP_URL: the image's default is a local SQLite path, no password
            assert not names & ((SECRET_SETTINGS | OPTIONAL_SECRETS) - {"ETL_DEDUP_URL"}) \
                and "redis" not in (
                instr.args), f"line {instr.line}: secret in the image"


def test_dockerfile_settings_are_valid_and_write_only_to_data_or_tmp(
    dockerfile: list[Stage],
) -> None:
    env: dict[str, str] = {}
    for instr in _final(dockerfile).all("ENV"):
        env.update(tok.split("=", 1) for tok in shlex.split(instr.args))
    etl = {k: v for k, v in env.items() if k.startswith("ETL_")}
    assert set(etl) <= set(setting_names()), set(etl) - set(setting_names())
    # the code's default is loopback: a container must bind all interfaces for its probes
    assert etl.get("ETL_SIDECAR_HOST") == "0.0.0.0"
    settings = _settings(etl)
    assert settings.sidecar_port == 8004
    if settings.dedup_url.startswith("sqlite:///"):
        path = Path(settings.dedup_url[len("sqlite:///"):])
        assert path.is_absolute() and path.parts[1] in ("data", "tmp"), (
            f"{settings.dedup_url}: the image's root file system is read-only")
    assert env["TMPDIR"] == "/tmp" and env["HOME"] in ("/tmp", "/data")


def test_dockerfile_caches_dependencies_before_the_source(dockerfile: list[Stage]) -> None:
    builder = dockerfile[0]
    seq = builder.instructions
    lock_copy = next(i for i, x in enumerate(seq)
                     if x.cmd == "COPY" and "requirements.lock" in x.args)
    lock_install = next(i for i, x in enumerate(seq)
                        if x.cmd == "RUN" and re.search(r"pip install .*-r \S*requirements\.lock",
                                                        x.args))
    src_copy = next(i for i, x in enumerate(seq) if x.cmd == "COPY" and x.args.startswith("src"))
    assert lock_copy < lock_install < src_copy, "deps layer must come before COPY src"
    assert "--no-deps" in seq[lock_install].args and "pip check" in seq[lock_install].args
    install = [x.args for x in seq if x.cmd == "RUN" and "--no-build-isolation" in x.args]
    assert install and re.search(r"pip install --no-deps --no-build-isolation \.( |$)",
                                 install[0]), "a wheel install (not editable): no source tree"


def _copies(stage: Stage) -> dict[str, str]:
    """COPY source -> destination (absolute, WORKDIR applied) of a stage."""
    workdir, out = "/", {}
    for instr in stage.instructions:
        if instr.cmd == "WORKDIR":
            workdir = instr.args
        elif instr.cmd == "COPY":
            *sources, dest = instr.args.split()
            for src in sources:
                target = dest if dest.startswith("/") else os.path.normpath(
                    os.path.join(workdir, dest))
                if target.endswith("/") or len(sources) > 1 or dest in (".", "./"):
                    target = os.path.join(target, os.path.basename(src.rstrip("/")))
                key = f"{instr.flags['from']}:{src}" if "from" in instr.flags else src
                out[key] = os.path.normpath(target)
    return out


def test_dockerfile_ships_the_package_and_no_development_tooling(
    dockerfile: list[Stage],
) -> None:
    """The image holds the installed wheel only: no source tree, no tools/, no tests."""
    builder, final = dockerfile[0], _final(dockerfile)
    sources = {src for stage in dockerfile for src in _copies(stage)}
    assert {s for s in sources if ":" not in s} <= {
        "pyproject.toml", "README.md", "src", "requirements.lock", "requirements-build.lock",
        "/tmp/"}, sources
    assert not any(s.startswith(("tools", "tests", "schemas", "samples")) for s in sources)
    assert _copies(final) == {f"{builder.name}:/opt/venv": "/opt/venv"}, _copies(final)
    assert "find_spec('etl_devtools') is None" in (ROOT / "Dockerfile").read_text()


def test_wheel_carries_schemas_and_samples_and_no_tooling(tmp_path: Path) -> None:
    """What a non-editable install gets: package data in, development tooling out."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("etl_narrative_engine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for record_type in record_types.SUPPORTED_RECORD_TYPES:
        assert f"etl_engine/schemas/{record_type}.avsc" in names
        assert any(n.startswith(f"etl_engine/samples/{record_type}/") for n in names)
    assert "etl_engine/schemas/training-record.schema.json" in names
    assert "etl_engine/samples/bad/manifest.json" in names
    assert not [n for n in names if n.startswith(("etl_devtools", "tests/"))], names
    assert not [n for n in names if re.search(r"bench|dev_s3|app_corpus", n)], names


@pytest.mark.parametrize("project", ["main", "tools"])
def test_building_and_installing_print_no_warning(project: str, tmp_path: Path) -> None:
    """Issue 17: set-up printed setuptools' `project.license` deprecation three times. The
    wheel and the editable builds (what set-up and the image run) warn about nothing."""
    # a copy: the builds write build/, *.egg-info and bdist_wheel/ beside pyproject.toml
    where = tmp_path / project
    if project == "main":
        shutil.copytree(ROOT / "src" / "etl_engine", where / "src" / "etl_engine",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, where / name)
    else:
        shutil.copytree(ROOT / "tools" / "etl_devtools", where / "etl_devtools",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "tools" / "pyproject.toml", where / "pyproject.toml")
    hooks = ("from setuptools import build_meta as b; import sys; "
             "b.build_wheel(sys.argv[1]); b.build_editable(sys.argv[1])")
    out = subprocess.run([sys.executable, "-W", "always", "-c", hooks, str(tmp_path / "dist")],
                         cwd=where, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stdout + out.stderr
    for word in ("Deprecat", "BuildBackendWarning", "SetuptoolsWarning", "Editable installation",
                 "would be ignored"):
        assert word not in said, said[-3000:]
    meta = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"', meta, re.M), "an SPDX expression"


def test_load_samples_default_folder_works_from_a_wheel_install(tmp_path: Path) -> None:
    """Installed from the wheel (as in the image), away from the source tree, the default
    folder of `load-samples` is the package data and holds every bundled sample."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("etl_narrative_engine-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    probe = ("import etl_engine, sys; from etl_engine.ops import cli; "
             "from etl_engine.ops.sample_files import iter_sample_files; "
             "d = cli._default_samples(); "
             "print(etl_engine.__file__); print(d); print(len(iter_sample_files(d)))")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(target), "ETL_ENV_FILE": ""}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    module, folder, count = out.stdout.split("\n")[:3]
    assert module.startswith(str(target)) and folder.startswith(str(target)), out.stdout
    from etl_engine.ops.sample_files import iter_sample_files
    assert int(count) == len(iter_sample_files(ROOT / "samples")) > 0
    usage = subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", "load-samples",
                            "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 0 and "the bundled samples" in " ".join(usage.stdout.split())


def test_no_script_or_compose_file_reaches_into_the_image_tree() -> None:
    """The image has the installed wheel only: no /app source tree to point a command at."""
    files = [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), *(ROOT / "scripts").rglob("*.sh")]
    assert files
    for path in files:
        assert not re.search(r"/app(/|\b)", path.read_text()), f"{path}: /app is gone"


def test_repository_paths_point_into_the_package() -> None:
    """schemas/ and samples/ at the top are links to the package data (one copy)."""
    assert record_types.schema_dir() == ROOT / "src" / "etl_engine" / "schemas"
    assert cli._default_samples() == ROOT / "src" / "etl_engine" / "samples"
    assert (ROOT / "schemas").resolve() == record_types.schema_dir()
    assert (ROOT / "samples").resolve() == cli._default_samples()


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent dir counts."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_out_and_the_copied_files_in(
    dockerfile: list[Stage],
) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".env", ".git/HEAD", ".venv/bin/python", ".run/worker-1.log",
                 "tests/conftest.py", "src/etl_engine/__pycache__/cli.cpython-311.pyc",
                 "src/etl_narrative_engine.egg-info/PKG-INFO", "samples/.env",
                 "tools/etl_devtools/bench.py"):
        assert _dockerignore_excludes(patterns, path), f"{path} must not reach the build"
    sources = [s for stage in dockerfile for s in _copies(stage) if ":" not in s]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: missing in the repository"
        assert not _dockerignore_excludes(patterns, src), f"COPY {src}: excluded by .dockerignore"
    for path in ("src/etl_engine/runtime/worker.py", "src/etl_engine/schemas/StepsRecord.avsc",
                 "src/etl_engine/samples/StepsRecord/steps_watch.avro"):
        assert not _dockerignore_excludes(patterns, path), path


class _Probe(BaseHTTPRequestHandler):
    status = 200
    path_probed = "/live"

    def do_GET(self) -> None:
        code = self.status if self.path == self.path_probed else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _run_health_command(argv: list[str], env: dict[str, str], path: str,
                        status: int) -> subprocess.CompletedProcess[bytes]:
    """A container health check (``etl-engine ...``) run for real against a local sidecar
    stand-in answering ``status`` on ``path``; ``env`` as the container has it."""
    assert argv[0] == "etl-engine", argv
    handler = type("Probe", (_Probe,), {"status": status, "path_probed": path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**env, "PATH": os.environ.get("PATH", ""), "ETL_ENV_FILE": "",
               "ETL_SIDECAR_PORT": str(server.server_address[1])}
        return subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", *argv[1:]],
                              env=env, capture_output=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_dockerfile_healthcheck_command_runs(
    dockerfile: list[Stage], status: int, healthy: bool
) -> None:
    """The HEALTHCHECK (``etl-engine worker --check live``), run for real against a local
    /live, with the image's ENV (sidecar bound to 0.0.0.0: probed on loopback)."""
    argv = json.loads(_final(dockerfile).all("HEALTHCHECK")[0].args.partition(" ")[2])
    image_env = dict(tok.split("=", 1) for instr in _final(dockerfile).all("ENV")
                     for tok in shlex.split(instr.args) if "=" in tok)
    env = {k: v for k, v in image_env.items() if k.startswith("ETL_")}
    proc = _run_health_command(argv, {**env, "ETL_ENV": "development"}, "/live", status)
    assert (proc.returncode == 0) is healthy, proc.stderr.decode() + proc.stdout.decode()
    assert b"Traceback" not in proc.stderr


# --- lock files -----------------------------------------------------------------------------
def _lock_entries(path: Path) -> list[tuple[str, str, list[str]]]:
    """(normalised name, version, sha256 hashes) per requirement, continuations joined."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        if (buf + line).strip():
            logical.append((buf + line).strip())
        buf = ""
    entries = []
    for line in logical:
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        req = re.sub(r"\s*--hash=\S+", "", line).strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)\s*(;.*)?", req)
        assert m, f"{path.name}: not an exact pin: {req!r}"
        entries.append((re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(2), hashes))
    return entries


def _lock(path: Path) -> dict[str, str]:
    return {name: version for name, version, _ in _lock_entries(path)}


LOCKS = ["requirements.lock", "requirements-dev.lock", "requirements-build.lock"]


@pytest.mark.parametrize("name", LOCKS)
def test_lock_files_carry_hashes_for_every_pin(name: str) -> None:
    entries = _lock_entries(ROOT / name)
    assert entries, f"{name}: empty"
    unhashed = [n for n, _, hashes in entries if not hashes]
    assert not unhashed, f"{name}: no --hash for {unhashed} (scripts/update-locks.sh)"


def test_dockerfile_installs_only_hashed_locks(dockerfile: list[Stage]) -> None:
    installs = [x.args for x in dockerfile[0].instructions
                if x.cmd == "RUN" and "pip install" in x.args]
    assert installs
    for run in installs:
        for command in re.split(r"&&|;", run):
            if "pip install" not in command or re.search(r"--no-deps .*\.\s*$", command):
                continue  # the project itself: local source, --no-deps
            assert "--require-hashes" in command and re.search(r"-r \S*requirements", command), (
                f"every download must be hash-checked: {command.strip()!r}")
    script = (ROOT / "scripts" / "update-locks.sh").read_text()
    assert "--generate-hashes" in script and os.access(ROOT / "scripts" / "update-locks.sh",
                                                       os.X_OK)
    for lock in LOCKS:
        assert lock in script, f"scripts/update-locks.sh does not write {lock}"


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", r).group(0)).lower()
            for r in reqs}


def test_lock_files_pin_every_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _lock(ROOT / "requirements.lock"), _lock(ROOT / "requirements-dev.lock")
    extras = project.get("optional-dependencies", {})
    missing = _requirement_names(project["dependencies"] + extras.get("codecs", [])) - set(runtime)
    assert not missing, f"requirements.lock lacks {sorted(missing)}"
    missing = _requirement_names(extras.get("dev", [])) - set(dev)
    assert not missing, f"requirements-dev.lock lacks {sorted(missing)}"
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, f"runtime and dev locks disagree: {differ}"


# --- docker compose ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # anchors and << merges resolved


REQUIRED_VALUE = "operator-set-value"


def _interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: ${VAR:-default} -> default;
    ${VAR:?message} (compose refuses to start without it) -> what an operator would set."""
    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", REQUIRED_VALUE, value)
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("rabbitmq", "minio", "minio-init", "redis", "jaeger", "prometheus", "worker",
                 "grafana"):
        assert name in services, name
    assert services["grafana"].get("profiles") == ["grafana"]
    assert "management" in services["rabbitmq"]["image"]
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), (
            f"{name}: pin the image tag ({image!r})")


def test_compose_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD", "rabbitmq-diagnostics", "-q", "ping"]
    for name in ("minio", "redis", "worker", "prometheus"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    depends = services["worker"]["depends_on"]
    for name in ("rabbitmq", "minio", "redis"):
        assert depends[name]["condition"] == "service_healthy", name
    assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_compose_worker_is_scalable_and_hardened(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert (COMPOSE.parent / worker["build"]["context"]).resolve() == ROOT
    assert (ROOT / worker["build"]["dockerfile"]).is_file()
    assert worker["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in worker["tmpfs"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert mounts.get("/data") in compose["volumes"], "/data on a named volume"
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > _defaults().shutdown_grace_s
    env_files = [e["path"] if isinstance(e, dict) else e for e in worker["env_file"]]
    assert [(COMPOSE.parent / p).resolve() for p in env_files] == [ROOT / ".env"]
    health = worker["healthcheck"]["test"]
    assert health == ["CMD", "etl-engine", "worker", "--check", "ready"], health


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_compose_worker_healthcheck_command_runs(
    compose: dict[str, Any], status: int, healthy: bool
) -> None:
    """The worker's health check probes /ready with the worker's own compose environment
    (.env from the template, the compose overrides on top)."""
    worker = compose["services"]["worker"]
    base = {name: value for _, name, value in _env_lines(ENV_TEMPLATE)}
    env = {**base, **_service_env(worker)}
    if env.get("ETL_CONFIG_FILE") in COMPOSE_MOUNTED_FILES:  # the container has the mount
        env["ETL_CONFIG_FILE"] = str(COMPOSE_MOUNTED_FILES[env["ETL_CONFIG_FILE"]])
    proc = _run_health_command(worker["healthcheck"]["test"][1:], env, "/ready", status)
    assert (proc.returncode == 0) is healthy, proc.stderr.decode() + proc.stdout.decode()


def test_compose_worker_environment(compose: dict[str, Any]) -> None:
    env = _service_env(compose["services"]["worker"])
    assert env["ETL_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["ETL_DEDUP_URL"] == f"redis://:{REQUIRED_VALUE}@redis:6379/0"
    assert env["ETL_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["ETL_ENV"] == "development", "plain http:// OTLP is refused in production"
    assert env["ETL_SIDECAR_HOST"] == "0.0.0.0"  # the code's default is loopback
    assert re.fullmatch(r"amqp://[^:@]+:[^@]+@rabbitmq:5672/", env["ETL_AMQP_URL"])
    # .env (from the template) with the overrides on top must be a valid configuration.
    base = {name: value for _, name, value in _env_lines(ENV_TEMPLATE)}
    for service in ("worker", "loader", "etl-cli"):
        svc_env = _service_env(compose["services"][service])
        unknown = {k for k in svc_env if k.startswith("ETL_")} - set(setting_names())
        assert not unknown, f"{service}: unknown settings {unknown}"
        try:
            _settings({**base, **svc_env}, COMPOSE_MOUNTED_FILES)
        except ConfigError as exc:  # pragma: no cover - message is the point
            pytest.fail(f"{service}: {exc}")


def test_compose_worker_reloads_from_a_mounted_config_file(compose: dict[str, Any]) -> None:
    """The worker's ETL_CONFIG_FILE is in a read-only folder mount of deployment/
    worker-config/ (a folder: a file mount keeps showing the old version after an editor
    saves by rename), so `kill -s HUP worker` reloads an edit with no change to the compose
    file. As shipped the file sets nothing and documents what it may set."""
    from etl_engine.settings import RELOADABLE, read_config_file

    worker = compose["services"]["worker"]
    path = _service_env(worker)["ETL_CONFIG_FILE"]
    assert path in COMPOSE_MOUNTED_FILES
    mounts = {v.split(":")[1]: v.split(":") for v in worker["volumes"]}
    source, _, *options = mounts[str(Path(path).parent)]
    assert options == ["ro"], "the worker only reads it"
    host = (COMPOSE.parent / source / Path(path).name).resolve()
    assert host == COMPOSE_MOUNTED_FILES[path] and host.is_file()
    assert read_config_file(str(host)) == {}, "shipped empty: comments only"
    text = host.read_text()
    for name in RELOADABLE:
        assert f"ETL_{name.upper()}" in text, name
    assert "kill -s HUP worker" in text and "needs a restart" in text
    # the tools have no such mount: the variable is the worker's alone
    for service in ("loader", "etl-cli"):
        assert "ETL_CONFIG_FILE" not in _service_env(compose["services"][service]), service
    # a restart-only setting there stops the worker (the same rule as in Kubernetes)
    with tempfile.TemporaryDirectory() as scratch:
        edited = Path(scratch) / "worker.env"
        edited.write_text(text + "ETL_QUALITY_THRESHOLD=0.9\n")
        with pytest.raises(ConfigError, match="ETL_QUALITY_THRESHOLD needs a restart"):
            read_config_file(str(edited))


def test_root_compose_includes_the_stack_with_the_root_env() -> None:
    """`docker compose up` from the repository root: compose.yaml includes the stack,
    interpolated from the root .env (the file the services read and set-up writes), under
    the same project name as `-f deployment/docker-compose.yml`.

    The include names no env_file: compose-go stat()s a relative include env_file and
    fails when it is missing (include has no `required: false`), so on a fresh clone
    without .env every command from the root would fail. Without one, the included file
    is interpolated with the project's environment: the shell over the .env that compose
    reads from the project directory, the root (a deployment/.env would win over both:
    compose reads the included file's own folder's .env)."""
    root = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(root) == {"name", "include"}, "the root file only includes the stack"
    (entry,) = root["include"]
    assert (ROOT / entry["path"]).resolve() == COMPOSE
    assert "env_file" not in entry, "a missing .env would fail every compose command"
    assert "project_directory" not in entry, "the stack's paths stay relative to deployment/"
    included = yaml.safe_load(COMPOSE.read_text())
    assert root["name"] == included["name"]
    for name, svc in included["services"].items():  # the containers read that same .env
        for item in svc.get("env_file", []):
            path = item["path"] if isinstance(item, dict) else item
            assert (COMPOSE.parent / path).resolve() == ROOT / ".env", name
    # The README's and deployment/README.md's compose commands work from the root.
    assert "docker compose up" in (ROOT / "README.md").read_text()
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:  # parses without an engine
        env_file = ROOT / ".env"
        if env_file.exists():
            out = subprocess.run([docker, "compose", "config", "--services"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "worker" in out.stdout.split()
        with tempfile.TemporaryDirectory() as fresh:  # a fresh clone: no .env at all
            for name in ("compose.yaml", "Dockerfile"):  # (the build context is the root)
                shutil.copy(ROOT / name, fresh)
            shutil.copytree(COMPOSE.parent, Path(fresh) / "deployment",
                            ignore=shutil.ignore_patterns(".env"))
            env = {**os.environ, "REDIS_PASSWORD": "from-the-shell"}
            env.pop("COMPOSE_FILE", None)
            out = subprocess.run([docker, "compose", "config", "--services"], cwd=fresh,
                                 env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "worker" in out.stdout.split()


def test_compose_dollars_are_interpolations_or_escaped() -> None:
    text = "\n".join(line for line in COMPOSE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for match in re.finditer(r"\$(\$|\{[^}]*\}|\w+)", text):
        token = match.group(0)
        assert token == "$$" or re.fullmatch(r"\$\{\w+:[-?][^}]*\}", token), (
            f"{token}: use ${{VAR:-default}} (works without .env), ${{VAR:?why}} (must be "
            "set) or $$ for a literal $")


def test_compose_network_volumes_and_mounts(compose: dict[str, Any]) -> None:
    assert len(compose["networks"]) == 1
    (network,) = compose["networks"]
    for name, svc in compose["services"].items():
        assert svc.get("networks") == [network], f"{name}: on the one network"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_management" in plugins


def test_compose_published_ports_are_documented(compose: dict[str, Any]) -> None:
    readme = (DEPLOY / "README.md").read_text()
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            container = str(port).rsplit(":", 1)[-1]
            assert container in readme, f"{name}: port {container} not in deployment/README.md"


def test_minio_init_and_policies(compose: dict[str, Any]) -> None:
    defaults = _defaults()
    bucket = f"arn:aws:s3:::{defaults.bucket}"
    policy = json.loads((DEPLOY / "minio" / "etl-worker-policy.json").read_text())
    grants: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] in ("Allow", "Deny")
        if statement["Effect"] == "Deny":
            continue  # test_quarantine_and_training_readable_only_by_the_right_roles
        for action in statement["Action"]:
            assert "*" not in action, f"wildcard action {action}"
            grants.setdefault(action, set()).update(statement["Resource"])
    assert grants == {
        "s3:ListBucket": {bucket},
        "s3:GetBucketLocation": {bucket},
        "s3:GetObject": {f"{bucket}/{defaults.raw_prefix}*",
                         f"{bucket}/{defaults.outcome_prefix}*"},  # the record it obeys
        "s3:PutObject": {f"{bucket}/{defaults.training_prefix}*",
                         f"{bucket}/{defaults.quarantine_prefix}*",
                         f"{bucket}/{defaults.outcome_prefix}*",
                         f"{bucket}/{defaults.probe_prefix}*"},  # the start-up probe
    }
    for name in ("etl-uploader", "etl-operator"):
        json.loads((DEPLOY / "minio" / f"{name}-policy.json").read_text())
    init = compose["services"]["minio-init"]
    env = _service_env(init)
    assert env["BUCKET"] == defaults.bucket
    worker_env = _service_env(compose["services"]["worker"])
    assert env["WORKER_ACCESS_KEY"] == worker_env["ETL_S3_ACCESS_KEY_ID"]
    assert env["WORKER_SECRET_KEY"] == worker_env["ETL_S3_SECRET_ACCESS_KEY"]
    script = DEPLOY / "minio" / "init.sh"
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)


# --- Prometheus, alerts, Grafana ------------------------------------------------------------
def test_prometheus_scrapes_every_worker_and_rabbitmq() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (dns,) = jobs["etl-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["port"] == _defaults().sidecar_port
    assert dns.get("type", "A") == "A"
    rabbit = jobs["rabbitmq"]
    assert rabbit["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    assert rabbit["metrics_path"] == "/metrics/per-object"  # per-queue labels
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def _rule_groups(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def _check_rules(groups: list[dict[str, Any]], where: str) -> set[str]:
    """The alert names; every expression names only metrics the worker exports."""
    names = set()
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                assert rule["record"].startswith("etl:"), rule["record"]
                _assert_known_metrics(rule["expr"], f"{where}:{rule['record']}")
                continue
            assert rule["alert"] not in names, f"{where}: duplicate {rule['alert']}"
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"]
            _assert_known_metrics(rule["expr"], f"{where}:{rule['alert']}")
    return names


def _promtool(*args: str) -> None:
    """promtool (Debian package prometheus): skipped without it, except under CI=true,
    where .ci/run installs it and a missing binary fails the run."""
    if not shutil.which("promtool"):
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_alert_rules() -> None:
    path = DEPLOY / "prometheus" / "alerts.yml"
    slo = DEPLOY / "prometheus" / "slo-rules.yml"
    names = _check_rules(_rule_groups(path), path.name)
    assert names >= REQUIRED_ALERT_TOPICS
    assert _check_rules(_rule_groups(slo), slo.name) >= SLO_ALERTS
    assert not names & {"EtlWorkQueueNoConsumers", "EtlProcessingLatencyP95High", "EtlNoWorkers"}
    _promtool("check", "rules", str(path), str(slo))
    _promtool("check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_grafana_provisioning_and_dashboard() -> None:
    graf = DEPLOY / "grafana"
    datasources = yaml.safe_load((graf / "provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    providers = yaml.safe_load((graf / "provisioning/dashboards/dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = json.loads((graf / "dashboards/etl-narrative-engine.json").read_text())
    exprs = []
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            _assert_known_metrics(target["expr"], f"panel {panel['title']!r}")
            exprs.append(target["expr"])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "outcomes", "stage latency", "queue depth", "dead-letter",
                  "quarantine", "budget remaining", "burn rate", "freshness"):
        assert topic in titles, topic
    joined = "\n".join(exprs)
    for series in ("etl_messages_total", "etl_stage_duration_seconds_bucket",
                   "rabbitmq_queue_messages_ready", "etl_quarantined_total",
                   "etl_publish_to_settle_seconds_bucket"):
        assert series in joined, series
    # the SLO row reads the recorded series of every SLO (slo-rules.yml)
    recorded = {r["record"] for g in _rule_groups(DEPLOY / "prometheus" / "slo-rules.yml")
                for r in g["rules"] if "record" in r}
    used = set(re.findall(r"etl:slo_[a-z_]+:[a-z_0-9]+", joined))
    assert used and used <= recorded, used - recorded
    for slo in ("freshness", "correctness", "availability"):
        assert f"etl:slo_{slo}:error_budget_remaining" in used, slo
        assert f"etl:slo_{slo}:error_ratio_rate1h" in used, slo
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows and rows[0].startswith("Service level objectives"), rows


def _rabbitmq_policies() -> dict[str, dict[str, Any]]:
    policies = json.loads((DEPLOY / "rabbitmq" / "policies.json").read_text())["policies"]
    return {p["name"]: p for p in policies}


def test_rabbitmq_policy_matches_the_topology() -> None:
    settings = _defaults()
    policies = _rabbitmq_policies()
    assert set(policies) == {"etl-work-queue", "etl-retry-tiers", "etl-dead-letter-queue"}
    policy = policies["etl-work-queue"]
    assert re.fullmatch(policy["pattern"], settings.queue)
    assert not re.fullmatch(policy["pattern"], settings.dlq_name)
    args = work_queue_arguments(settings)
    definition = policy["definition"]
    assert definition["delivery-limit"] == args["x-delivery-limit"]
    assert definition["dead-letter-exchange"] == args["x-dead-letter-exchange"]
    assert definition["dead-letter-routing-key"] == args["x-dead-letter-routing-key"]
    assert definition["dead-letter-strategy"] == args["x-dead-letter-strategy"]
    assert definition["overflow"] == args["x-overflow"]


def test_rabbitmq_dlq_policy_keeps_looked_at_messages() -> None:
    """Every look at the DLQ (dlq list/show, GET /admin/dlq...) returns what it fetched; on
    RabbitMQ 4.0-4.2 each return counts towards the quorum queues' default delivery limit of
    20, past which a DLQ message (no DLX of its own) would be dropped. The policy lifts it."""
    settings = _defaults()
    policy = _rabbitmq_policies()["etl-dead-letter-queue"]
    assert re.fullmatch(policy["pattern"], settings.dlq_name)
    for other in (settings.queue, settings.retry_queue_name(0)):
        assert not re.fullmatch(policy["pattern"], other), other
    assert policy["definition"] == {"delivery-limit": 1000000}  # > 0: valid on 3.x and 4.x


def test_rabbitmq_retry_policy_matches_the_quorum_tiers() -> None:
    settings = _defaults()
    policy = _rabbitmq_policies()["etl-retry-tiers"]
    tiers = [settings.retry_queue_name(t) for t in range(len(settings.retry_delays))]
    assert all(re.fullmatch(policy["pattern"], name) for name in tiers), tiers
    for other in [settings.queue, settings.dlq_name, *legacy_retry_queue_names(settings)]:
        assert not re.fullmatch(policy["pattern"], other), other
    definition = policy["definition"]
    for tier, delay in enumerate(settings.retry_delays):
        args = retry_queue_arguments(settings, delay)
        assert args["x-queue-type"] == "quorum" and args["x-message-ttl"] == delay
        assert definition["dead-letter-exchange"] == args["x-dead-letter-exchange"] == ""
        assert definition["dead-letter-routing-key"] == args["x-dead-letter-routing-key"]
        assert args["x-dead-letter-routing-key"] == settings.queue
        assert definition["dead-letter-strategy"] == args["x-dead-letter-strategy"]
        assert args["x-dead-letter-strategy"] == "at-least-once"
        # at-least-once dead-lettering is honoured only with reject-publish
        assert definition["overflow"] == args["x-overflow"] == "reject-publish"
        assert settings.retry_queue_name(tier).endswith(f".retry.q.{delay}ms")


# --- Kubernetes -----------------------------------------------------------------------------
def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _resolve(directory: Path, seen: set[Path] | None = None) -> list[Path]:
    """Every file a kustomization uses (recursively), each checked to exist and parse."""
    seen = seen if seen is not None else set()
    kust = _kustomization(directory)
    files = [directory / "kustomization.yaml"]
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory.name}: resource {entry} missing"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{entry}: no kustomization.yaml"
            assert target not in seen, f"{entry}: cycle"
            seen.add(target)
            files += _resolve(target, seen)
        else:
            assert _yaml_docs(target), f"{entry}: empty"
            files.append(target)
    for patch in kust.get("patches", []) + kust.get("patchesStrategicMerge", []):
        path = patch.get("path") if isinstance(patch, dict) else patch
        if path:
            target = directory / path
            assert target.is_file(), f"{directory.name}: patch {path} missing"
            assert yaml.safe_load(target.read_text()), f"{path}: empty patch"
            files.append(target)
    for generator in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
        for env in generator.get("envs", []):
            target = directory / env
            assert target.is_file(), f"{directory.name}: env file {env} missing"
            _env_lines(target)
            files.append(target)
        for item in generator.get("files", []):
            assert (directory / item.split("=")[-1]).is_file(), item
    return files


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _render_python(directory: Path) -> list[dict[str, Any]]:
    """No kustomize binary: resources, generated ConfigMaps, images, namespace; no patches."""
    docs: list[dict[str, Any]] = []
    kust = _kustomization(directory)
    for entry in kust.get("resources", []):
        target = directory / entry
        docs += _render_python(target) if target.is_dir() else _yaml_docs(target)
    for doc in docs:
        if kust.get("namespace") and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kust["namespace"]
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            name, _, tag = container["image"].partition(":")
            for image in kust.get("images", []):
                if image["name"] == name:
                    name = image.get("newName", name)
                    tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name
    for generator in kust.get("configMapGenerator", []):
        data = {n: v for env in generator.get("envs", [])
                for _, n, v in _env_lines(directory / env)}
        existing = next((d for d in docs if d["kind"] == "ConfigMap"
                         and d["metadata"]["name"] == generator["name"]), None)
        if existing is not None and generator.get("behavior") == "merge":
            existing["data"].update(data)
        else:
            docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": generator["name"]}, "data": data})
    return docs


RENDERED: dict[Path, list[dict[str, Any]]] = {}


def _render(directory: Path) -> list[dict[str, Any]]:
    if directory not in RENDERED:
        cmd = _kustomize_cmd()
        if cmd is None:
            RENDERED[directory] = _render_python(directory)
        else:
            proc = subprocess.run([*cmd, str(directory)], capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, proc.stderr
            RENDERED[directory] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return RENDERED[directory]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _config_map(docs: list[dict[str, Any]], name: str = "etl-worker-config"
                ) -> dict[str, Any]:
    """The ConfigMap of the workers' environment (etl-worker-reloadable is a file)."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and (
        d["metadata"]["name"].startswith(name + "-") or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one ConfigMap {name}, found {len(found)}"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


OVERLAYS = [pytest.param(BASE, id="base"), pytest.param(PRODUCTION, id="production")]


@pytest.mark.parametrize("directory", OVERLAYS)
def test_kustomization_references_resolve(directory: Path) -> None:
    files = _resolve(directory)
    assert files
    template = K8S / "templates" / "etl-worker-secrets.template.yaml"
    assert template.resolve() not in {f.resolve() for f in files}, "the template is never built"


@pytest.mark.parametrize("directory", OVERLAYS)
def test_builtin_kinds_match_the_kubernetes_schemas(directory: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="pip install kubernetes-validate (dev dependency)")
    checked = set()
    for doc in _render(directory):
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(doc, K8S_SCHEMA_VERSION, strict=True)
        except kv.ValidationError as exc:  # pragma: no cover - message is the point
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
        checked.add(doc["kind"])
    assert checked >= {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget",
                       "NetworkPolicy", "ServiceAccount"}


def test_secret_template_is_a_placeholder_only_secret() -> None:
    path = K8S / "templates" / "etl-worker-secrets.template.yaml"
    assert "TEMPLATE ONLY" in path.read_text().splitlines()[0]
    (secret,) = _yaml_docs(path)
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == SECRET_SETTINGS
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{key}: placeholder values only"
    deployment = _one(_render(BASE), "Deployment")
    refs = [e["secretRef"]["name"] for e in
            deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(secret, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_config_map_holds_valid_non_secret_settings(directory: Path) -> None:
    docs = _render(directory)
    config = _config_map(docs)["data"]
    assert set(config) <= set(setting_names()), set(config) - set(setting_names())
    assert not set(config) & (SECRET_SETTINGS | OPTIONAL_SECRETS), (
        "secrets belong in the Secret")
    assert not [k for k in config if k.startswith("CHAOS_")], "test hooks stay in tests/"
    assert config.get("ETL_SIDECAR_HOST") == "0.0.0.0"  # the kubelet probes the pod IP
    _settings(config)  # raises ConfigError naming the variable


@pytest.mark.parametrize("directory", OVERLAYS)
def test_reloadable_settings_are_a_mounted_file(directory: Path) -> None:
    """ETL_CONFIG_FILE: a ConfigMap mounted as a directory (a subPath mount would never see
    an update) without a hash suffix (a change must not roll the pods: they reload)."""
    from etl_engine.runtime.reload import RELOADABLE

    if _kustomize_cmd() is None:
        pytest.skip("the file generator needs kustomize/kubectl")
    docs = _render(directory)
    path = _config_map(docs)["data"]["ETL_CONFIG_FILE"]
    assert path in MOUNTED_FILES
    reloadable = _config_map(docs, "etl-worker-reloadable")
    assert reloadable["metadata"]["name"] == "etl-worker-reloadable", "no hash suffix"
    text = reloadable["data"][Path(path).name]
    assert text == MOUNTED_FILES[path].read_text()
    names = [n for _, n, _ in _env_lines(MOUNTED_FILES[path])]
    assert set(names) <= {"ETL_" + f.upper() for f in RELOADABLE} - {"ETL_ADMIN_TOKEN"}
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") ==
                  "etl-worker-reloadable")
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == str(Path(path).parent) and "subPath" not in mount
    assert mount.get("readOnly") is True


@pytest.mark.parametrize("directory", OVERLAYS)
def test_deployment(directory: Path) -> None:
    docs = _render(directory)
    deployment = _one(docs, "Deployment")
    config_map = _config_map(docs)
    settings = _settings(config_map["data"])
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"

    assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace_s + 10, (
        "terminationGracePeriodSeconds must leave margin above ETL_SHUTDOWN_GRACE_S")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False

    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    image = container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True
    final = _final(parse_dockerfile((ROOT / "Dockerfile").read_text())[1])
    image_uid = int(final.all("USER")[-1].args.split(":")[0])
    assert sc.get("runAsUser", pod["securityContext"].get("runAsUser")) == image_uid

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.sidecar_port == 8004
    probes = {name: container[name]["httpGet"] for name in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/live"
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["startupProbe"]["path"] in ("/live", "/ready")
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == settings.sidecar_port

    env_from = container["envFrom"]
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in env_from
    assert any("secretRef" in e for e in env_from)
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/data"):
        assert "emptyDir" in volumes[mounts[path]], f"{path}: emptyDir"


@pytest.mark.parametrize("directory", OVERLAYS)
def test_service_servicemonitor_pdb_and_networkpolicy(directory: Path) -> None:
    docs = _render(directory)
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one(docs, "Service")
    assert _matches(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8004 and port["targetPort"] in ("http", 8004)

    monitor = _one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"

    pdb = _one(docs, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    policy = _one(docs, "NetworkPolicy")["spec"]
    assert _matches(policy["podSelector"]["matchLabels"], pod_labels)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [8004]
    assert all("namespaceSelector" in peer for peer in ingress["from"])
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5672, 5671, 6379, 9000, 4317, 4318}


# Each egress destination of the workers: its ports and the pods (by name label) serving them.
EGRESS_PEERS = {
    frozenset({53}): ("kube-system", "k8s-app", "kube-dns"),
    frozenset({5672, 5671}): ("etl-data", "app.kubernetes.io/name", "rabbitmq"),
    frozenset({6379}): ("etl-data", "app.kubernetes.io/name", "redis"),
    frozenset({9000}): ("etl-data", "app.kubernetes.io/name", "minio"),
    frozenset({4317, 4318}): ("observability", "app.kubernetes.io/name",
                              "opentelemetry-collector"),
}


@pytest.mark.parametrize("directory", OVERLAYS)
def test_networkpolicy_egress_goes_only_to_the_named_services(directory: Path) -> None:
    """No rule without ``to`` (= any address), no ipBlock by default, DNS kept."""
    policy = _one(_render(directory), "NetworkPolicy")["spec"]
    seen = {}
    for rule in policy["egress"]:
        ports = frozenset(p["port"] for p in rule["ports"])
        assert rule.get("to"), f"egress to {sorted(ports)} is open to every address"
        for peer in rule["to"]:
            assert "ipBlock" not in peer, "ipBlock only in an overlay, for an external S3"
            assert peer.get("namespaceSelector", {}).get("matchLabels"), peer
            assert peer.get("podSelector", {}).get("matchLabels"), peer
        (peer,) = rule["to"]
        seen[ports] = (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                       *next(iter(peer["podSelector"]["matchLabels"].items())))
    assert seen == EGRESS_PEERS
    assert {p["protocol"] for rule in policy["egress"] if 53 in {p["port"] for p in
                                                                 rule["ports"]}
            for p in rule["ports"]} == {"UDP", "TCP"}
    source = (BASE / "networkpolicy.yaml").read_text()
    assert "ipBlock" in source and "0.0.0.0/0" in source, "document the external-S3 override"


# --- Redis requires a password -----------------------------------------------------------
def test_compose_redis_requires_a_password_without_default(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    password = command[command.index("--requirepass") + 1]
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", password), (
        f"{password!r}: no default password, compose must refuse to start without one")
    assert "REDISCLI_AUTH" in redis.get("environment", {}), "the health check must log in"
    assert "PONG" in " ".join(redis["healthcheck"]["test"])
    for service in ("worker", "loader", "etl-cli"):
        url = compose["services"][service]["environment"]["ETL_DEDUP_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD:?") and url.endswith("@redis:6379/0")


def test_kubernetes_redis_url_comes_from_the_secret() -> None:
    for directory in (BASE, PRODUCTION):
        assert "ETL_DEDUP_URL" not in _config_map(_render(directory))["data"], directory
    (secret,) = _yaml_docs(K8S / "templates" / "etl-worker-secrets.template.yaml")
    url = secret["stringData"]["ETL_DEDUP_URL"]
    assert re.fullmatch(r"rediss://:REPLACE_ME[A-Z_]*@[^/]+/\d+", url), url


# --- operator-only data ----------------------------------------------------------------------
def _grants(name: str) -> dict[str, dict[str, set[str]]]:
    """effect -> action -> resources of a MinIO policy file."""
    out: dict[str, dict[str, set[str]]] = {"Allow": {}, "Deny": {}}
    policy = json.loads((DEPLOY / "minio" / f"{name}-policy.json").read_text())
    for statement in policy["Statement"]:
        for action in statement["Action"]:
            out[statement["Effect"]].setdefault(action, set()).update(statement["Resource"])
    return out


def test_quarantine_and_training_readable_only_by_the_right_roles() -> None:
    d = _defaults()
    bucket = f"arn:aws:s3:::{d.bucket}"
    quarantine = f"{bucket}/{d.quarantine_prefix}*"
    training = f"{bucket}/{d.training_prefix}*"
    worker, uploader, operator = (_grants(n) for n in ("etl-worker", "etl-uploader",
                                                        "etl-operator"))
    assert quarantine in operator["Allow"]["s3:GetObject"]
    assert quarantine not in worker["Allow"].get("s3:GetObject", set())
    assert quarantine in worker["Deny"]["s3:GetObject"]
    assert {quarantine, training} <= uploader["Deny"]["s3:GetObject"]
    assert "s3:GetObject" not in uploader["Allow"]


def _rabbitmq_permissions() -> dict[str, tuple[str, str, str]]:
    text = (DEPLOY / "rabbitmq" / "permissions.sh").read_text().replace("\\\n", " ")
    found = re.findall(r"set_permissions -p \"\$VHOST\" (\S+)\s+'([^']*)'\s+'([^']*)'\s+'([^']*)'",
                       text)
    return {user: (conf, write, read) for user, conf, write, read in found}


def test_rabbitmq_dlq_is_readable_by_the_operator_only() -> None:
    d = _defaults()
    perms = _rabbitmq_permissions()
    assert set(perms) == {"etl-worker", "etl-uploader", "etl-operator"}
    can_read = {u for u, (_, _, read) in perms.items() if re.search(read, d.dlq_name)}
    assert can_read == {"etl-operator"}
    worker_conf, worker_write, worker_read = perms["etl-worker"]
    tiers = [d.retry_queue_name(t) for t in range(len(d.retry_delays))]
    # the classic tiers of older releases too, for a rolling upgrade
    for queue in (d.queue, *tiers, *legacy_retry_queue_names(d)):
        assert re.search(worker_read, queue), queue
        assert re.search(worker_conf, queue) and re.search(worker_write, queue), queue
    # copies go through the DLX (no write on amq.default, which reaches every queue)
    assert re.search(worker_write, d.dlx_name) and re.search(worker_conf, d.dlq_name)
    assert not re.search(worker_write, "amq.default")
    assert perms["etl-uploader"] == ("^$", f"^{d.exchange}$", "^$")
    script = DEPLOY / "rabbitmq" / "permissions.sh"
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)


def test_production_image_digest_is_well_formed_and_documented() -> None:
    kust = _kustomization(PRODUCTION)
    (image,) = kust["images"]
    if "digest" in image:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"]), image["digest"]
    text = (PRODUCTION / "kustomization.yaml").read_text()
    assert "kustomize edit set image" in text and "digest" in text


@pytest.mark.parametrize("directory", OVERLAYS)
def test_keda_scaled_object(directory: Path) -> None:
    docs = _render(directory)
    deployment = _one(docs, "Deployment")
    scaled = _one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    if directory == BASE:
        assert spec["minReplicaCount"] == 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    settings = _settings(_config_map(docs)["data"])
    assert meta["mode"] == "QueueLength" and meta["queueName"] == settings.queue
    assert isinstance(meta["value"], str) and int(meta["value"]) > 0
    # the derivation (throughput per worker x drain seconds) is written down
    source = (BASE / "scaledobject.yaml").read_text()
    assert "T x D" in source and "scripts/benchmark.sh" in source
    assert "scale to zero" in source.lower()

    auth = _one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host" and ref["key"] == "ETL_AMQP_URL"
    secret_refs = [e["secretRef"]["name"] for e in
                   deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                   if "secretRef" in e]
    assert ref["name"] in secret_refs


def test_prometheus_rule(tmp_path: Path) -> None:
    rules = {d["metadata"]["name"]: d for d in _render(BASE) if d["kind"] == "PrometheusRule"}
    assert set(rules) == {"etl-worker", "etl-worker-slo"}
    names: set[str] = set()
    for name, rule in rules.items():
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        groups = rule["spec"]["groups"]
        names |= _check_rules(groups, f"PrometheusRule {name}")
        extracted = tmp_path / f"{name}.yml"
        extracted.write_text(yaml.safe_dump({"groups": groups}))
        _promtool("check", "rules", str(extracted))
    assert names >= REQUIRED_ALERT_TOPICS | SLO_ALERTS
    assert not names & {"EtlWorkQueueNoConsumers", "EtlProcessingLatencyP95High"}


def test_production_overlay_sets_image_replicas_and_resources() -> None:
    if _kustomize_cmd() is None:
        pytest.skip("patches need kustomize/kubectl to be applied")
    base, prod = _render(BASE), _render(PRODUCTION)
    base_container = _one(base, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    prod_container = _one(prod, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert prod_container["image"] != base_container["image"]
    assert prod_container["resources"] != base_container["resources"]
    assert _one(prod, "ScaledObject")["spec"]["minReplicaCount"] >= 2
    assert {d["metadata"].get("namespace") for d in prod if d["kind"] != "Namespace"} == {
        _one(prod, "Namespace")["metadata"]["name"]}
