"""The message contract as a product: the generated JSON Schema is current and says what the
worker accepts; docs/asyncapi.yaml (AsyncAPI 3.0) matches the code's exchange, routing keys,
queues, record types, headers and payload."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from etl_devtools.contract import message_schema_path, render_message_schema
from etl_engine import __version__
from etl_engine.adapters import topology
from etl_engine.adapters.announce import announcement, upload_key
from etl_engine.domain.messages import HealthDataMessage, parse_message, upload_routing_key
from etl_engine.domain.record_types import SUPPORTED_RECORD_TYPES
from etl_engine.errors import PoisonMessage
from etl_engine.ops import dlq
from etl_engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(message_schema_path().read_text())


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI.read_text())


def _defaults() -> Settings:
    return Settings(env="development")  # only the names' defaults matter here


def _good(**changes: Any) -> dict[str, Any]:
    body = announcement(bucket="health-data", key=upload_key("StepsRecord", "user-1"),
                        record_type="StepsRecord", user_id="user-1", file_hash=HASH,
                        file_size_bytes=10, correlation_id="corr-1", record_count=3)
    return {**body, **changes}


def _worker_accepts(body: dict[str, Any]) -> bool:
    try:
        parse_message(orjson.dumps(body), amqp_message_id=None,
                      allowed_buckets=frozenset({"health-data"}),
                      supported_types=SUPPORTED_RECORD_TYPES)
    except PoisonMessage:
        return False
    return True


def _schema_accepts(schema: dict[str, Any], body: dict[str, Any]) -> bool:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return validator.is_valid(body)


# --- schemas/message.schema.json ----------------------------------------------------------------
def test_message_schema_is_generated_from_the_model_and_current() -> None:
    assert message_schema_path().read_text() == render_message_schema(), (
        "schemas/message.schema.json is out of date: python -m etl_devtools.contract")
    assert (ROOT / "schemas" / "message.schema.json").resolve() == message_schema_path()


def test_message_schema_is_a_valid_2020_12_schema_of_the_model(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    fields = set(HealthDataMessage.model_fields)
    assert set(schema["properties"]) == fields | {"file_hash"}
    required = {n for n, f in HealthDataMessage.model_fields.items() if f.is_required()}
    assert set(schema["required"]) == required
    assert schema["properties"]["record_type"]["enum"] == list(SUPPORTED_RECORD_TYPES)
    assert all(p.get("description") for p in schema["properties"].values())


BAD = {
    "no hash": lambda b: {k: v for k, v in b.items() if k != "file_hash"},
    "unknown record type": lambda b: {**b, "record_type": "Nope"},
    "control character": lambda b: {**b, "user_id": "user\x1b[2J"},
    "long correlation id": lambda b: {**b, "correlation_id": "c" * 129},
    "space in correlation id": lambda b: {**b, "correlation_id": "a b"},
    "bad hash": lambda b: {**b, "file_hash": "xyz"},
    "null file hash": lambda b: {**b, "file_hash": None},
    "null content hash beside a file hash": lambda b: {**b, "content_hash": None},
    "empty content hash beside a file hash": lambda b: {**b, "content_hash": ""},
    "negative size": lambda b: {**b, "file_size_bytes": -1},
    "priority": lambda b: {**b, "priority": "urgent"},
    "missing key": lambda b: {k: v for k, v in b.items() if k != "key"},
    "missing user": lambda b: {k: v for k, v in b.items() if k != "user_id"},
}


def test_the_schema_accepts_what_the_worker_accepts(schema: dict[str, Any]) -> None:
    good = _good()
    assert _worker_accepts(good) and _schema_accepts(schema, good)
    extra = {**good, "some_new_field": 1, "content_hash": HASH, "priority": "high"}
    assert _worker_accepts(extra) and _schema_accepts(schema, extra)


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_schema_refuses_what_the_worker_dead_letters(schema: dict[str, Any],
                                                          case: str) -> None:
    bad = BAD[case](_good())
    assert not _worker_accepts(bad), case
    assert not _schema_accepts(schema, bad), case


# --- docs/asyncapi.yaml ------------------------------------------------------------------------
def _resolve(doc: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        return json.loads((ASYNCAPI.parent / ref).read_text())
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_document_is_3_0_and_every_reference_resolves(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"] == __version__
    for ref in _refs(doc):
        assert _resolve(doc, ref) is not None, ref
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), name
        for message in op.get("messages", []):  # 3.0: an operation's messages are its channel's
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
    for name, channel in doc["channels"].items():
        params = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert params == set(channel.get("parameters", {})), name


def test_asyncapi_matches_the_topology_and_routing_keys(doc: dict[str, Any]) -> None:
    s = _defaults()
    uploads = doc["channels"]["uploads"]
    exchange = uploads["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"]) == (s.exchange, "topic")
    assert uploads["parameters"]["recordType"]["enum"] == [t.lower()
                                                           for t in SUPPORTED_RECORD_TYPES]
    binding = re.escape(topology.BINDING_KEY).replace(r"\#", ".*")
    for record_type in SUPPORTED_RECORD_TYPES:
        address = uploads["address"].replace("{recordType}", record_type.lower())
        assert address == upload_routing_key(record_type)
        assert re.fullmatch(binding, address), "the work queue's binding takes it"
    prio = doc["channels"]["prioritisedUploads"]
    assert prio["parameters"]["priority"]["enum"] == ["low", "normal", "high"]
    assert prio["bindings"]["amqp"]["exchange"] == exchange
    assert doc["channels"]["workQueue"]["address"] == s.queue
    assert doc["channels"]["deadLetters"]["address"] == s.dlq_name
    for op in ("announceUpload", "announcePrioritisedUpload"):
        amqp = doc["operations"][op]["bindings"]["amqp"]
        assert amqp["mandatory"] is True and amqp["deliveryMode"] == 2


def test_asyncapi_message_is_the_generated_schema_and_headers_the_workers(
        doc: dict[str, Any], schema: dict[str, Any]) -> None:
    upload = doc["components"]["messages"]["Upload"]
    assert _resolve(doc, upload["payload"]["$ref"]) == schema
    assert upload["correlationId"]["location"] == "$message.payload#/correlation_id"
    headers = _resolve(doc, upload["headers"]["$ref"])
    assert "traceparent" in headers["properties"]
    for example in upload["examples"]:
        assert _schema_accepts(schema, example["payload"])
        assert _worker_accepts(example["payload"]), "the example would be dead-lettered"
        jsonschema.validate(example["headers"], headers)
    dead = _resolve(doc, doc["components"]["messages"]["DeadLetter"]["headers"]["$ref"])
    written = {topology.REASON_HEADER, topology.STAGE_HEADER, topology.ATTEMPT_HEADER,
               "x-etl-worker", "x-etl-original-routing-key", "x-etl-dead-lettered-at",
               "x-etl-outcome-id", dlq.REPLAYED_HEADER}
    assert written <= set(dead["properties"]), written - set(dead["properties"])
    worker_source = (ROOT / "src" / "etl_engine" / "runtime" / "worker.py").read_text()
    for header in re.findall(r'headers\["(x-etl-[a-z-]+)"\]', worker_source):
        assert header in dead["properties"], header
