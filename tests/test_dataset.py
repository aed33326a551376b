"""Training records as a dataset: no message field in any record, lineage back for
operators, the month's card, and a local pull with leak-free splits.

The inputs are made the way the real client makes them: the app's writer schemas
(``generate-samples``), uploaded in the upload service's layout (the user id in the key),
announced with the service's message plus free-text ids a publisher might choose.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl_devtools.samples import generate_samples
from etl_engine.domain.lineage import pseudonymous, record_id, source_id, subject_id
from etl_engine.domain.model import DomainConfig
from etl_engine.ops import dataset
from etl_engine.runtime.compute import Limits, run_cpu_stages
from helpers import publish, results, running_worker, storage_for, upload, wait_outcomes

PEOPLE = ("ana-garcia-7781", "bo.lindqvist_42", "chen-wei-3", "dara-okafor")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl_engine.ops.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def _values(body: dict[str, Any]) -> dict[str, str]:
    """Every message field a record must not carry, plus the key's parts (its file name
    holds the user id and the upload time)."""
    out = {k: str(v) for k, v in body.items()
           if k not in ("record_type", "priority", "file_size_bytes") and v is not None}
    out["key_file_name"] = body["key"].rsplit("/", 1)[-1]
    out["key_stem"] = out["key_file_name"].removesuffix(".avro")
    return out


# --- the realistic corpus, end to end --------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    out = tmp_path_factory.mktemp("dataset-corpus")
    generate_samples(out, 11, bad=False)
    files = sorted((p.parent.name, p) for p in out.glob("*/*.avro"))
    assert len(files) >= 12, files
    return files


@pytest.fixture
async def processed(settings, corpus) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Every corpus file uploaded by one of four people and processed by a real worker."""
    bodies = []
    for i, (record_type, path) in enumerate(corpus):
        u = upload(settings, record_type, path, user_id=PEOPLE[i % len(PEOPLE)])
        body = {**u.message(correlation_id=f"phone-of-{PEOPLE[i % len(PEOPLE)]}-{i}"),
                "message_id": f"msg-{u.idempotency_key}"}
        bodies.append(body)
    async with running_worker(settings):
        await publish(settings, *bodies)
        outcomes = await wait_outcomes(settings, [b["message_id"] for b in bodies], timeout=90)
    assert set(outcomes.values()) == {"processed"}, outcomes
    return bodies


def _stored(settings) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    storage = storage_for(settings)
    return {k: storage.get(settings.bucket, k) for k in results(settings)}


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_no_message_field_reaches_a_training_record(settings, processed) -> None:  # type: ignore[no-untyped-def]
    stored = _stored(settings)
    assert len(stored) == len(processed)
    lineage_key = settings.lineage_key.get_secret_value().encode()
    for body in processed:
        values = _values(body)
        for key, raw in stored.items():
            text = raw.decode()
            leaked = sorted(name for name, value in values.items() if value in text)
            assert not leaked, (key, leaked)
            assert not [p for p in PEOPLE if p in key or p in text]
        name = record_id(lineage_key, body["idempotency_key"])
        [mine] = [k for k in stored if k.endswith(f"/{name}.jsonl")]
        meta = orjson.loads(stored[mine])["metadata"]
        assert meta["source_id"] == source_id(lineage_key, body["bucket"], body["key"])
        assert meta["subject_id"] == subject_id(lineage_key, body["user_id"])
        assert "lineage" not in meta
    subjects = defaultdict(set)
    for raw in stored.values():
        meta = orjson.loads(raw)["metadata"]
        subjects[meta["subject_id"]].add(meta["source_id"])
    assert len(subjects) == len(PEOPLE)  # stable per person: per-person splits are possible


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_lineage_maps_a_source_id_back_for_an_operator(
        settings, test_env, processed) -> None:  # type: ignore[no-untyped-def]
    body = processed[0]
    record = orjson.loads(next(iter(
        raw for k, raw in _stored(settings).items()
        if k.endswith(f"/{record_id(settings.lineage_key.get_secret_value().encode(), body['idempotency_key'])}.jsonl"))))  # noqa: E501
    meta = record["metadata"]
    shown = await asyncio.to_thread(cli, test_env, "lineage", meta["source_id"], "--json",
                                    "--reveal")
    assert shown.returncode == 0, shown.stderr
    [answer] = orjson.loads(shown.stdout)
    assert (answer["bucket"], answer["key"], answer["idempotency_key"]) == (
        body["bucket"], body["key"], body["idempotency_key"])
    assert (answer["matched"], answer["outcome"]) == ("source_id", "processed")
    assert answer["result_key"].endswith(f"/{meta['record_id']}.jsonl")

    by_record = await asyncio.to_thread(cli, test_env, "lineage", answer["result_key"])
    assert by_record.returncode == 0 and "record_id" in by_record.stdout
    assert body["user_id"] not in by_record.stdout, "masked without --reveal"
    assert body["key"].rsplit("_", 2)[-2] in by_record.stdout  # the upload time stays
    missing = await asyncio.to_thread(cli, test_env, "lineage", "0" * 32)
    assert missing.returncode == 1 and "no outcome record" in missing.stderr
    bad = await asyncio.to_thread(cli, test_env, "lineage", "raw/x.avro")
    assert bad.returncode == 2


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_card_and_split_pull_from_the_compacted_month(
        settings, test_env, processed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    months = sorted({k.split("/")[2] + "-" + k.split("/")[3] for k in results(settings)})
    month = months[0]
    compacted = await asyncio.to_thread(cli, test_env, "compact", "--month", month)
    assert compacted.returncode == 0, compacted.stderr
    assert "dataset card" in compacted.stdout
    storage = storage_for(settings)
    card = orjson.loads(storage.get(settings.bucket, dataset.card_key(settings, month, "json")))
    markdown = storage.get(settings.bucket, dataset.card_key(settings, month, "md")).decode()
    assert card["records"] == sum(c["records"] for c in card["categories"].values()) > 0
    assert card["schema"]["$id"].startswith("urn:etl-narrative-engine:schema:training-record")
    for summary in card["categories"].values():
        assert summary["quality_score"]["histogram"] and summary["subjects"] >= 1
    assert card["settings"][0]["values"] is not None  # made with this tool's settings
    for heading in ("## Contents", "## Quality score distribution", "## De-identification",
                    "small population", "configs:", "metadata.source_id"):
        assert heading in markdown, heading
    assert not [p for p in PEOPLE if p in markdown]

    out = tmp_path / "pulled"
    pulled = await asyncio.to_thread(cli, test_env, "dataset", "pull", "--month", month,
                                     "--out", str(out), "--split", "50/25/25", "--json")
    assert pulled.returncode == 0, pulled.stderr
    manifest = orjson.loads(pulled.stdout)
    where: dict[str, set[str]] = defaultdict(set)
    total = 0
    for path in out.glob("*/*.jsonl"):
        for line in path.read_bytes().splitlines():
            where[orjson.loads(line)["metadata"]["subject_id"]].add(path.parent.name)
            total += 1
    assert total == card["records"] == sum(manifest["files"].values())
    assert all(len(parts) == 1 for parts in where.values()), where  # nobody in two splits
    assert (out / f"dataset_card_{month.replace('-', '_')}.md").read_text() == markdown
    assert orjson.loads((out / "manifest.json").read_bytes())["split"] == "50/25/25"


# --- pure parts ------------------------------------------------------------------------------
def test_a_subjects_split_depends_on_nothing_but_its_id() -> None:
    shares = dataset.parse_split("80/10/10")
    units = [f"subject:{i:04d}" for i in range(5000)]
    first = [dataset.split_of(u, shares) for u in units]
    assert first == [dataset.split_of(u, shares) for u in reversed(units)][::-1]
    counts = {name: first.count(name) for name in dataset.SPLIT_NAMES}
    assert 3800 < counts["train"] < 4200 and 350 < counts["test"] < 650, counts
    assert first != [dataset.split_of(u, shares, seed="other") for u in units]
    assert {dataset.split_of(u, (70, 30)) for u in units} == {"train", "validation"}


@pytest.mark.parametrize("text", ["80/10", "80/10/10/0", "a/b/c", "120/-10/-10", "33/33/33"])
def test_bad_splits_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        dataset.parse_split(text)


def test_months_between() -> None:
    assert dataset.months_between("2025-11", "2026-02") == [
        "2025-11", "2025-12", "2026-01", "2026-02"]
    for bad in (("2025-13", "2025-13"), ("2025-02", "2025-01"), ("25-01", "25-01")):
        with pytest.raises(ValueError):
            dataset.months_between(*bad)


def test_full_lineage_adds_the_raw_fields_only_when_asked(corpus) -> None:  # type: ignore[no-untyped-def]
    record_type, path = corpus[0]
    common = dict(bucket="health-data", key=f"raw/{record_type}/u-1_x.avro",
                  record_type=record_type, idempotency_key="ik-1", user_id="u-1",
                  message_id="m-1", correlation_id="c-1")
    from datetime import UTC, datetime

    def meta(full: bool) -> dict[str, Any]:
        lineage = pseudonymous(b"key", full=full, **common)  # type: ignore[arg-type]
        out = run_cpu_stages(path.read_bytes(), lineage, Limits(10**6, 1 << 30),
                             DomainConfig(), datetime.now(UTC)).output
        assert out is not None
        return dict(out.record["metadata"])

    private = meta(True)
    assert private["lineage"]["key"] == common["key"]
    assert private["lineage"]["correlation_id"] == "c-1"
    shared = meta(False)
    assert "lineage" not in shared and common["key"] not in orjson.dumps(shared).decode()
    assert shared["source_id"] == private["source_id"] == source_id(
        b"key", "health-data", common["key"])
