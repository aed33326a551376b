"""Operator displays (dlq, quarantine, status) are terminal-safe and mask user ids.

No services: the broker queue and the object store are replaced by small fakes at the two
seams the commands use (``dlq._dlq`` and ``storage.Storage``/``make_client``), so the real
command code, from argument parsing to what reaches stdout, runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from etl_engine.errors import PermanentError
from etl_engine.observability import logs
from etl_engine.ops import cli, display, dlq, quarantine, status
from etl_engine.settings import ConfigError, load_settings

USER = "patient-SECRET-9090"
TS = "1767225600"
RAW_KEY = f"raw/StepsRecord/2026/01/01/{USER}_{TS}.avro"
QKEY = f"quarantine/StepsRecord/2026/01/01/{USER}_{TS}.avro"
ESC = "\x1b"
EVIL = f"{ESC}]0;pwned{chr(7)}{ESC}[2J{ESC}[31mred\x9b31m\r\u202eevil"
# Anything that can drive a terminal: C0 (but for none), DEL, C1 (CSI U+009B), bidi.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _raw_control(text: str) -> list[str]:
    return RAW_CONTROL.findall(text)


# --- fakes ----------------------------------------------------------------------------------
class FakeMessage:
    def __init__(self, body: dict[str, Any], headers: dict[str, Any], message_id: str) -> None:
        self.body = orjson.dumps(body)
        self.headers = headers
        self.message_id = message_id

    async def ack(self) -> None:
        pass


class FakeQueue:
    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = list(messages)

    async def get(self, **_: Any) -> FakeMessage | None:
        return self.messages.pop(0) if self.messages else None


def _poison() -> FakeMessage:
    body = {"idempotency_key": RAW_KEY, "bucket": "health-data", "key": RAW_KEY,
            "record_type": f"StepsRecord{EVIL}", "user_id": USER, "correlation_id": "c1"}
    headers = {"x-etl-reason": f"bucket_not_allowed{EVIL}", "x-etl-stage": "parse",
               f"x-evil{ESC}[8m": EVIL, "x-etl-worker": f"w1{ESC}[1A"}
    return FakeMessage(body, headers, message_id=f"m-1{ESC}[2K")


class FakeStorage:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def get(self, bucket: str, key: str) -> bytes:
        if key not in self.objects:
            raise PermanentError("object_missing", stage="download")
        return self.objects[key]


def _reason() -> dict[str, Any]:
    message = {"idempotency_key": RAW_KEY, "bucket": "health-data", "key": RAW_KEY,
               "record_type": "StepsRecord", "user_id": USER, "correlation_id": "c1"}
    return {"reason": f"object_missing{EVIL}", "detail": EVIL, "stage": "download",
            "message_id": "m-2", "idempotency_key": RAW_KEY, "record_type": "StepsRecord",
            "source": {"bucket": "health-data", "key": RAW_KEY}, "raw_copied": False,
            "quality_report": None, "quarantined_at": "2026-01-01T00:00:00+00:00",
            "message": message}


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A production-like configuration with a hash key; logging and the key restored."""
    for name in [n for n in list(__import__("os").environ) if n.startswith("ETL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ETL_USER_ID_HASH_KEY", "test-hash-key")
    monkeypatch.setenv("ETL_LINEAGE_KEY", "lineage-key")

    def configure(*_: Any, user_hash_key: str = "", **__: Any) -> None:
        # only the hash key: structlog bound to pytest's capture would outlive this test
        logs._HASH_KEY = user_hash_key.encode()[:64]

    monkeypatch.setattr(logs, "configure", configure)
    saved_key, saved_handlers = logs._HASH_KEY, logging.getLogger().handlers[:]
    try:
        yield
    finally:
        logs._HASH_KEY = saved_key
        logging.getLogger().handlers[:] = saved_handlers


@pytest.fixture
def fake_dlq(monkeypatch: pytest.MonkeyPatch, operator_env: None) -> None:
    @contextlib.asynccontextmanager
    async def fake(_settings: Any, *, confirms: bool = False) -> AsyncIterator[Any]:
        yield None, FakeQueue([_poison()]), 1

    monkeypatch.setattr(dlq, "_dlq", fake)


@pytest.fixture
def fake_storage(monkeypatch: pytest.MonkeyPatch, operator_env: None) -> None:
    import etl_engine.adapters.storage as storage_module

    objects = {QKEY: b"avro", QKEY + ".reason.json": orjson.dumps(_reason())}
    monkeypatch.setattr(storage_module, "make_client", lambda _s: None)
    monkeypatch.setattr(storage_module, "Storage", lambda _c: FakeStorage(objects))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _pseudonym() -> str:
    logs._HASH_KEY = b"test-hash-key"
    return display.pseudonym(USER)


# --- the helper ------------------------------------------------------------------------------
@pytest.mark.parametrize("char", [ESC, "\x07", "\r", "\n", "\x08", "\x7f", "\x9b", "\u202e",
                                  "\u2066", "\u2028"])
def test_safe_escapes_every_terminal_control(char: str) -> None:
    shown = display.safe(f"a{char}b")
    assert char not in shown and shown.startswith("a\\") and shown.endswith("b")


def test_safe_keeps_ordinary_text() -> None:
    for text in ("bucket_not_allowed", "Grüße 名前 ✓", "a b\u00a0c", ""):
        assert display.safe(text) == text
    assert display.safe_data({"k\x1b": ["v\x9b", 1, None]}) == {"k\\x1b": ["v\\x9b", 1, None]}


def test_mask_key_hides_only_the_user_part() -> None:
    masked = display.mask_key(RAW_KEY)
    assert USER not in masked
    assert masked == f"raw/StepsRecord/2026/01/01/{display.pseudonym(USER)}_{TS}.avro"
    assert display.mask_key(masked) == masked  # idempotent
    assert "dotted.user" not in display.mask_key("raw/T/2026/01/01/dotted.user_1.avro")


# --- dlq -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [("dlq", "list"), ("dlq", "list", "--json"),
                                  ("dlq", "show", f"m-1{ESC}[2K"),
                                  ("dlq", "show", f"m-1{ESC}[2K", "--reveal")])
def test_dlq_output_never_carries_raw_escapes(capsys: pytest.CaptureFixture[str],
                                              fake_dlq: None, argv: tuple[str, ...]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert not _raw_control(out.replace("\n", "")), _raw_control(out)
    assert "\\x1b" in out  # shown, escaped: the operator sees that something was there


def test_dlq_list_and_show_mask_the_user_by_default(capsys: pytest.CaptureFixture[str],
                                                    fake_dlq: None) -> None:
    for argv in (("dlq", "list"), ("dlq", "list", "--json"), ("dlq", "show", f"m-1{ESC}[2K")):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and USER not in out, argv
    _, out, _ = run(capsys, "dlq", "show", f"m-1{ESC}[2K")
    doc = orjson.loads(out)
    assert doc["body"]["user_id"] == _pseudonym()
    assert doc["body"]["key"] == display.mask_key(RAW_KEY)
    assert doc["body"]["idempotency_key"] == display.mask_key(RAW_KEY)


def test_dlq_show_reveal_shows_the_user(capsys: pytest.CaptureFixture[str],
                                        fake_dlq: None) -> None:
    code, out, _ = run(capsys, "dlq", "show", f"m-1{ESC}[2K", "--reveal")
    doc = orjson.loads(out)
    assert code == 0 and doc["body"]["user_id"] == USER and doc["body"]["key"] == RAW_KEY
    code, out, _ = run(capsys, "dlq", "list", "--json", "--reveal")
    assert code == 0 and orjson.loads(out)[0]["id"].startswith("m-1")


# --- quarantine --------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [("quarantine", "list"), ("quarantine", "list", "--json"),
                                  ("quarantine", "show", QKEY),
                                  ("quarantine", "show", QKEY, "--reveal")])
def test_quarantine_output_never_carries_raw_escapes(
    capsys: pytest.CaptureFixture[str], fake_storage: None, argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert not _raw_control(out.replace("\n", "")), _raw_control(out)
    assert "\\x1b" in out


def test_quarantine_masks_by_default_and_reveals_on_request(
    capsys: pytest.CaptureFixture[str], fake_storage: None
) -> None:
    pseudonym = _pseudonym()
    masked_qkey = display.mask_key(QKEY)
    for argv in (("quarantine", "list"), ("quarantine", "list", "--json"),
                 ("quarantine", "show", QKEY)):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and USER not in out, argv
    _, out, _ = run(capsys, "quarantine", "list", "--json")
    assert orjson.loads(out)[0]["key"] == masked_qkey
    # the masked key the list printed selects the file: no --reveal needed to inspect it
    code, out, _ = run(capsys, "quarantine", "show", masked_qkey)
    doc = orjson.loads(out)
    assert code == 0 and doc["message"]["user_id"] == pseudonym
    assert doc["source"]["key"] == doc["message"]["key"] == display.mask_key(RAW_KEY)
    assert USER not in out
    code, out, _ = run(capsys, "quarantine", "show", masked_qkey, "--reveal")
    assert code == 0 and orjson.loads(out)["message"]["user_id"] == USER
    _, out, _ = run(capsys, "quarantine", "list", "--json", "--reveal")
    assert orjson.loads(out)[0]["key"] == QKEY


def test_quarantine_masking_uses_the_keyed_hash(fake_storage: None) -> None:
    """Same pseudonym as the worker's logs; a different key gives a different one."""
    logs._HASH_KEY = b"test-hash-key"
    first = quarantine.masked(_reason())["message"]["user_id"]
    logs._HASH_KEY = b"another-key"
    assert quarantine.masked(_reason())["message"]["user_id"] != first


# --- status ----------------------------------------------------------------------------------
def test_status_render_escapes_what_sidecars_send() -> None:
    worker = status.WorkerFigures(url=f"http://w{ESC}[2J", worker_id=f"w1{ESC}]0;x\x07",
                                  status=f"ok{ESC}[8m")
    snap = status.Snapshot(at=1.0, queues=[status.QueueFigures("work", "q", 0, 1)],
                           workers=[worker])
    text = status.render(snap, None)
    assert not _raw_control(text.replace("\n", "")), _raw_control(text)
    assert "w1\\x1b]0;x\\x07" in text


# --- settings: OTLP needs TLS in production ----------------------------------------------------
@pytest.mark.parametrize("endpoint", ["http://otel-collector.observability:4318",
                                      "otel:4318", "HTTP://collector:4318",
                                      "http://localhost.example.com:4318"])
def test_production_refuses_plain_otlp(endpoint: str, operator_env: None) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env="production", otlp_endpoint=endpoint)
    assert "ETL_OTLP_ENDPOINT" in str(info.value)


@pytest.mark.parametrize(("env", "endpoint"), [
    ("production", "https://otel-collector.observability:4318"),
    ("production", "http://127.0.0.1:4318"), ("production", "http://localhost:4318"),
    ("production", "http://[::1]:4318"), ("production", ""),
    ("development", "http://jaeger:4318"),
])
def test_otlp_endpoints_that_are_allowed(env: str, endpoint: str, operator_env: None) -> None:
    assert load_settings(env=env, otlp_endpoint=endpoint).otlp_endpoint == endpoint


def test_production_otlp_check_reads_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                     operator_env: None) -> None:
    monkeypatch.setenv("ETL_OTLP_ENDPOINT", "http://collector:4318")
    with pytest.raises(ConfigError, match="ETL_OTLP_ENDPOINT"):
        load_settings()  # ETL_ENV defaults to production
    monkeypatch.setenv("ETL_ENV", "development")
    assert load_settings().otlp_endpoint == "http://collector:4318"
