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
from collections import Counter, defaultdict
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
    """Each result's body, followed by its S3 user metadata (the ML team reads both)."""
    storage = storage_for(settings)
    out = {}
    for k in results(settings):
        head = storage.client.head_object(Bucket=settings.bucket, Key=k)["Metadata"]
        out[k] = storage.get(settings.bucket, k) + b"\n" + orjson.dumps(head)
    return out


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
        meta = orjson.loads(stored[mine].splitlines()[0])["metadata"]
        assert meta["source_id"] == source_id(lineage_key, body["bucket"], body["key"])
        assert meta["subject_id"] == subject_id(lineage_key, body["user_id"])
        assert "lineage" not in meta
    subjects = defaultdict(set)
    for raw in stored.values():
        meta = orjson.loads(raw.splitlines()[0])["metadata"]
        subjects[meta["subject_id"]].add(meta["source_id"])
    assert len(subjects) == len(PEOPLE)  # stable per person: per-person splits are possible


@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_lineage_maps_a_source_id_back_for_an_operator(
        settings, test_env, processed) -> None:  # type: ignore[no-untyped-def]
    body = processed[0]
    name = record_id(settings.lineage_key.get_secret_value().encode(), body["idempotency_key"])
    record = orjson.loads(next(iter(
        raw.splitlines()[0] for k, raw in _stored(settings).items()
        if k.endswith(f"/{name}.jsonl"))))
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
    month = min(k.split("/")[2] + "-" + k.split("/")[3] for k in results(settings)
                if k.split("/")[1] == "physical_activity")  # the docs' pandas example
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
    await _pull_again_as_an_ml_reader(test_env, month, out, card)


async def _pull_again_as_an_ml_reader(test_env: dict[str, str], month: str, out: Path,
                                      card: dict[str, Any]) -> None:
    """Without the operators' keys, into the same folder with other splits: nothing of the
    first pull is left (a stale test/ file would put people in two splits); then the
    Arrow-friendly shape loads the way Hugging Face datasets loads it."""
    reader = {**test_env, "ETL_LINEAGE_KEY": "", "ETL_USER_ID_HASH_KEY": ""}
    again = await asyncio.to_thread(cli, reader, "dataset", "pull", "--month", month,
                                    "--out", str(out), "--split", "70/30",
                                    "--flat")
    assert again.returncode == 0, again.stderr
    assert not (out / "test").exists() or not list((out / "test").glob("*.jsonl"))
    files = sorted(out.glob("*/*.jsonl"))
    assert {p.parent.name for p in files} <= {"train", "validation"}
    import pyarrow as pa
    import pyarrow.json as pj

    tables = [pj.read_json(p) for p in files]
    first = tables[0].schema  # datasets casts every file to the first one's features
    joined = pa.concat_tables([t.cast(first) for t in tables])
    assert joined.num_rows == card["records"]
    assert pa.types.is_string(first.field("metadata").type)
    assert joined.column("subject_id").null_count == 0

    plain = await asyncio.to_thread(cli, reader, "dataset", "pull", "--month", month,
                                    "--out", str(out.parent / "data"))
    assert plain.returncode == 0, plain.stderr
    _run_the_docs_example("pandas", out.parent)


def _run_the_docs_example(heading: str, cwd: Path) -> None:
    """The python block under ``### {heading}`` in docs/dataset.md, run as it is."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "dataset.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "subject_id" in done.stdout


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


def test_compaction_converts_records_made_before_pseudonyms() -> None:
    from etl_engine.ops.compact import LEGACY_LINEAGE, deidentified

    key = b"lineage-key"
    upload = "raw/StepsRecord/2025/09/19/ana-garcia-7781_20250919_172600_000000.avro"
    old = {"instruction": "q", "output": "o", "metadata": {
        "bucket": "health-data", "key": upload, "message_id": "m-1", "correlation_id": "c-1",
        "idempotency_key": "9c1e5be0d2f4a871", "upload_timestamp_utc": "2025-09-19T17:26:00",
        "subject_id": "5d41402abc4b2a76", "partial": True}}
    meta = orjson.loads(deidentified(orjson.dumps(old), key))["metadata"]
    assert not set(LEGACY_LINEAGE) & set(meta)
    assert meta["source_id"] == source_id(key, "health-data", upload)
    assert meta["record_id"] == record_id(key, "9c1e5be0d2f4a871")
    assert meta["subject_id"] == subject_id(key, "ana-garcia-7781")  # from the key's name
    assert meta["partial"] is True
    odd = {"metadata": {**old["metadata"], "key": "raw/x.avro"}}
    assert orjson.loads(deidentified(orjson.dumps(odd), key))["metadata"]["subject_id"] is None
    new = orjson.dumps({"metadata": {"source_id": "a" * 32, "record_id": "b" * 32}})
    assert deidentified(new, key) == new and deidentified(b"not json", key) == b"not json"


def test_card_figures_and_warnings() -> None:
    q = dataset._quantiles([0.2, 0.8])
    assert (q["min"], q["median"], q["max"]) == (0.2, 0.5, 0.8)
    assert dataset._quantiles([0.7])["p10"] == dataset._quantiles([0.7])["p90"] == 0.7
    tally = dataset._CategoryTally()
    tally.add({"lineage_key_id": "aaaaaaaa", "lineage": {"key": "raw/x"}})
    tally.add({"lineage_key_id": "bbbbbbbb"})
    deid = dataset._deidentification({"c": tally}, tally.key_ids)
    assert deid["records_with_raw_lineage"] == 1 and len(deid["notes"]) == 2
    assert dataset._deidentification({}, Counter({"aaaaaaaa": 3}))["notes"] == []
    for bad in ("2025-09\n", "2025-13", "2025-9"):
        with pytest.raises(ValueError):
            dataset.month_parts(bad)
