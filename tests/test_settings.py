"""Configuration: typed, from ETL_* variables, failing at start with the variable's name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from etl_engine.settings import ConfigError, load_settings, setting_names


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_USER_ID_HASH_KEY", "k")  # required: no default
    monkeypatch.setenv("ETL_LINEAGE_KEY", "lineage-key")
    s = load_settings()
    assert s.dlq_name == "health_data_processing.dlq"
    assert s.retry_queue_name(0) == "health_data_processing.retry.q.1000ms"
    assert s.effective_prefetch == s.concurrency
    assert s.allowed_bucket_set == frozenset({"health-data"})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ETL_CONCURRENCY", "zero"),
        ("ETL_CONCURRENCY", "0"),
        ("ETL_DEDUP_URL", "memcached://x"),
        ("ETL_RETRY_DELAYS_MS", "1000,-5"),
        ("ETL_RAW_PREFIX", "../raw"),
        ("ETL_QUALITY_THRESHOLD", "1.5"),
        ("ETL_LOG_FORMAT", "xml"),
        ("ETL_EVENT_LOOP", "tokio"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                          value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_AMQP_URL", "amqp://etl:hunter2@broker:5672/")
    monkeypatch.setenv("ETL_S3_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("ETL_USER_ID_HASH_KEY", "hash-key")
    monkeypatch.setenv("ETL_LINEAGE_KEY", "lineage-key")
    shown = load_settings().masked()
    assert "hunter2" not in str(shown) and "very-secret" not in str(shown)
    assert shown["ETL_AMQP_URL"] == "amqp://etl:********@broker:5672/"


def test_config_check_command_fails_fast_naming_the_variable() -> None:
    env = {"ETL_MAX_ATTEMPTS": "lots", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", "config", "check"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78  # EX_CONFIG
    assert "ETL_MAX_ATTEMPTS" in proc.stderr


def test_setting_names_are_prefixed_and_unique() -> None:
    names = setting_names()
    assert len(names) == len(set(names)) and all(n.startswith("ETL_") for n in names)


def test_event_loop_choice() -> None:
    import uvloop

    from etl_engine.runtime.worker import loop_factory

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
