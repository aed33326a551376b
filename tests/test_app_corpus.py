"""The realistic app corpus: files written with the app's own writer schemas, processed the
way the worker does one minute after their export, give honest training records.

The expected figures live in ``docs/clinical.md`` (the corpus table): this test reads them
from there, so the doc cannot drift from what the engine says.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from etl_devtools.app_corpus import PREFIX, corpus
from etl_devtools.samples import app_writer_schema, generate_samples
from etl_engine.domain.avro import needs_resolution, scan_container
from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DomainConfig
from etl_engine.domain.record_types import reader_schema
from etl_engine.ops.compact import compact_month, latest_exports
from etl_engine.runtime.compute import Limits, run_cpu_stages
from helpers import rid, storage_for

ROOT = Path(__file__).resolve().parent.parent
CLINICAL = (ROOT / "docs" / "clinical.md").read_text()
LIMITS = Limits(max_records=2_000_000, max_decompressed_bytes=512 << 20)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    generate_samples(out, 7, bad=False)
    return out


def _files(root: Path) -> list[tuple[str, Path]]:
    return sorted((p.parent.name, p) for p in root.glob(f"*/{PREFIX}*.avro"))


def _export_ms(path: Path) -> int:
    with path.open("rb") as fo:
        return max(r["appRecordFetchTimeEpochMillis"] for r in fastavro.reader(fo))


LINEAGE_KEY = b"app-corpus-lineage-key"


def process(record_type: str, path: Path, subject: str = "subject-1") -> dict[str, Any]:
    """The worker's CPU stages, one minute after the file's export, uploaded then too."""
    when = datetime.fromtimestamp(_export_ms(path) / 1000, UTC) + timedelta(minutes=1)
    lineage = pseudonymous(LINEAGE_KEY, bucket="health-data",
                           key=f"raw/{record_type}/{path.name}", record_type=record_type,
                           idempotency_key=f"ik-{path.stem}", user_id=subject,
                           message_id="m", correlation_id="c",
                           upload_timestamp_utc=when.isoformat())
    result = run_cpu_stages(path.read_bytes(), lineage, LIMITS, DomainConfig(), when)
    assert result.output is not None, (path.name, result.quarantine_reason, result.report)
    return result.output.record


@pytest.fixture(scope="module")
def records(corpus_dir: Path) -> dict[str, dict[str, Any]]:
    return {f"{rt}/{p.name}": process(rt, p) for rt, p in _files(corpus_dir)}


def test_the_corpus_covers_every_type_with_the_app_schemas(corpus_dir: Path) -> None:
    files = _files(corpus_dir)
    assert {rt for rt, _ in files} == {rt for rt, _ in corpus().values()}
    assert len(files) == len(corpus()) == 9
    for record_type, path in files:
        scan = scan_container(path.read_bytes(), max_records=10**7,
                              max_decompressed_bytes=1 << 30)
        assert scan.codec == "null"
        assert scan.writer["name"] == app_writer_schema(record_type)["name"]
        # the app's layout is ours: no schema resolution on the hot path
        assert not needs_resolution(scan.writer, scan.raw_schema, reader_schema(record_type))


def test_every_file_gives_a_training_record_a_minute_after_export(
        records: dict[str, dict[str, Any]]) -> None:
    assert len(records) == 9
    for name, record in records.items():
        assert record["output"] and record["instruction"], name


# --- the table in docs/clinical.md ---------------------------------------------------------
_ROW = re.compile(r"^\|\s*`([A-Za-z]+/app_[\w]+\.avro)`\s*\|(.*)$", re.M)
_CHECK = re.compile(r"`([\w.\-]+)=([^`]*)`")


def _table() -> dict[str, list[tuple[str, str]]]:
    return {m.group(1): _CHECK.findall(m.group(2)) for m in _ROW.finditer(CLINICAL)}


def _lookup(meta: dict[str, Any], path: str) -> Any:
    node: Any = meta
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_the_clinical_doc_lists_every_corpus_file(records: dict[str, dict[str, Any]]) -> None:
    table = _table()
    assert sorted(table) == sorted(records)
    assert all(len(checks) >= 3 for checks in table.values()), table


@pytest.mark.parametrize("name", sorted(_table()))
def test_outputs_match_the_clinical_doc(name: str, records: dict[str, dict[str, Any]]) -> None:
    meta = records[name]["metadata"]
    for path, expected in _table()[name]:
        got = _lookup(meta, path)
        assert orjson.dumps(got).decode() == expected, f"{name}: {path}"


# --- honest figures ------------------------------------------------------------------------
def test_running_total_days_are_partial_and_never_graded(
        records: dict[str, dict[str, Any]]) -> None:
    for name in ("StepsRecord/app_steps_0919_1725.avro",
                 "ActiveCaloriesBurnedRecord/app_calories_0919_1725.avro"):
        record = records[name]
        assert record["metadata"]["partial"] is True
        assert "day_in_progress" in record["metadata"]["warnings"]
        assert record["output"].startswith("So far on September 19, 2025, by 5:25 p.m.")
    steps = records["StepsRecord/app_steps_0919_1725.avro"]["output"]
    assert "inactive" not in steps and "10,000" not in steps and "7,000" not in steps


def test_two_origins_are_never_added(records: dict[str, dict[str, Any]]) -> None:
    stats = records["StepsRecord/app_steps_0920_1040.avro"]["metadata"]["statistics"]
    samsung = stats["origins"]["com.sec.android.app.shealth"]["daily_steps"]
    assert stats["daily_steps"] == samsung  # the Samsung day (00:00) covers more than Oura's
    assert set(stats["origin_by_day"].values()) == {"com.sec.android.app.shealth"}


def test_cgm_under_a_day_claims_no_gmi_and_no_target_verdict(
        records: dict[str, dict[str, Any]]) -> None:
    record = records["BloodGlucoseRecord/app_cgm_21_hours.avro"]
    stats, text = record["metadata"]["statistics"], record["output"]
    assert stats["gmi_insufficient_data"] and stats["control_assessment_insufficient_data"]
    assert "UTC" in text and "A1c" not in text and "meets" not in text
    assert f"{stats['gmi_percent']}%" not in text
    full = records["BloodGlucoseRecord/app_cgm_15_days.avro"]
    assert not full["metadata"]["statistics"]["gmi_insufficient_data"]
    assert "GMI" in full["output"] and "A1c" not in full["output"]


def test_sleep_is_named_for_its_evening_and_counts_wake_bouts(
        records: dict[str, dict[str, Any]]) -> None:
    record = records["SleepSessionRecord/app_sleep_night_0919.avro"]
    night = record["metadata"]["statistics"]["nights_detail"][0]
    assert night["night_of"] == "2025-09-19" == record["metadata"]["period_date"]
    assert "September 19" in record["output"] and "September 20" not in record["output"]
    assert night["awakenings"] < 5 < night["brief_awakenings"]


def test_heart_rate_and_hrv_claim_no_resting_norm_or_clock_window(
        records: dict[str, dict[str, Any]]) -> None:
    hr = records["HeartRateRecord/app_heart_rate_night_0919.avro"]["output"]
    assert "resting" not in hr.lower() and "60-100" not in hr and "fit" not in hr
    hrv = records["HeartRateVariabilityRmssdRecord/app_hrv_two_nights.avro"]
    assert hrv["metadata"]["statistics"]["nights"] == 2
    assert "midnight" not in hrv["output"] and "6 a.m." not in hrv["output"]


# --- every number in a narrative is in the same record's statistics -------------------------
_MONTH = ("January|February|March|April|May|June|July|August|September|October|November|"
          "December")
_DATE = re.compile(rf"\b(?:{_MONTH}) \d{{1,2}}(?:, \d{{4}})?")
_CLOCK = re.compile(r"\b\d{1,2}:\d{2}(?: [ap]\.m\.)?")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_DURATION = re.compile(r"(?<![\d.,])(\d+) hours? (\d+) minutes?\b|(?<![\d.,])(\d+) hours?\b")


def _thresholds(record_type: str) -> set[float]:
    m = re.search(rf"^- {record_type}:([\d., ]*)$", CLINICAL, re.M)
    assert m, f"docs/clinical.md lists no fixed thresholds for {record_type}"
    return {float(x) for x in m.group(1).replace(" ", "").split(",") if x}


def _stat_numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _stat_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _stat_numbers(v)]
    return []


def unexplained_numbers(record: dict[str, Any]) -> list[str]:
    """Numbers in the narrative that neither a statistic (at the text's precision), a date,
    a clock time nor a documented fixed threshold explains."""
    meta = record["metadata"]
    stats = _stat_numbers(meta["statistics"])
    allowed = _thresholds(meta["record_type"])
    text = _CLOCK.sub(" ", _DATE.sub(" ", record["output"]))
    bad = []
    for m in _DURATION.finditer(text):  # "6 hours 45 minutes": a minute statistic, spelled out
        minutes = int(m[1]) * 60 + int(m[2]) if m[1] else int(m[3]) * 60
        whole_hours = float(m[3] or -1)
        if not (any(round(v) == minutes for v in stats) or whole_hours in allowed
                or whole_hours in stats):
            bad.append(m[0])
    text = _DURATION.sub(" ", text)
    for token in _NUMBER.findall(text):
        value = float(token.replace(",", ""))
        places = len(token.split(".")[1]) if "." in token else 0
        if value in allowed or any(round(v, places) == value for v in stats):
            continue
        bad.append(token)
    return bad


def test_every_number_in_every_corpus_narrative_is_a_statistic(
        records: dict[str, dict[str, Any]]) -> None:
    for name, record in records.items():
        assert unexplained_numbers(record) == [], name


def test_the_number_check_catches_an_invented_figure(
        records: dict[str, dict[str, Any]]) -> None:
    record = dict(records["StepsRecord/app_steps_0919_1725.avro"])
    record["output"] += " That is 12,345 steps above last week."
    assert unexplained_numbers(record) == ["12,345"]


# --- monthly compaction keeps the latest export of a day ------------------------------------
def test_latest_export_of_a_day_wins(records: dict[str, dict[str, Any]]) -> None:
    early = records["StepsRecord/app_steps_0919_1725.avro"]
    late = records["StepsRecord/app_steps_0920_1040.avro"]
    other = orjson.loads(orjson.dumps(early))
    other["metadata"]["subject_id"] = "subject-2"  # another person's day is never merged
    lines = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in (early, late, other)]
    kept, superseded = latest_exports(lines)
    assert superseded == 1 and len(kept) == 2
    winner = orjson.loads(kept[0])
    assert winner["metadata"]["record_id"] == late["metadata"]["record_id"]
    assert winner["metadata"]["supersedes"] == [early["metadata"]["record_id"]]


async def test_compaction_over_real_s3_says_what_it_replaced(
        settings, records: dict[str, dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    storage = storage_for(settings)
    for name in ("StepsRecord/app_steps_0919_1725.avro", "StepsRecord/app_steps_0920_1040.avro"):
        record = records[name]
        key = (f"{settings.training_prefix}physical_activity/2025/09/19/"
               f"{record['metadata']['record_id']}.jsonl")
        storage.put(settings.bucket, key, orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
                    + b"\n", content_type="application/x-ndjson")
    [result] = compact_month(storage, settings, "2025-09")
    assert (result.records, result.superseded) == (1, 1)
    [line] = storage.get(settings.bucket, result.key).splitlines()
    early = records["StepsRecord/app_steps_0919_1725.avro"]["metadata"]["record_id"]
    assert orjson.loads(line)["metadata"]["supersedes"] == [early]


# --- end to end: the real worker, broker, Redis and S3 server ---------------------------------
@pytest.mark.integration
@pytest.mark.usefixtures("clean_topology")
async def test_the_worker_turns_every_app_export_into_a_record(
        settings, corpus_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Uploaded and announced a minute after export, as the upload service does (its message
    shape: ``file_hash``, no ``message_id``)."""
    from helpers import publish, results, running_worker, upload, wait_outcomes

    uploads, bodies, names = [], [], {}
    for record_type, path in _files(corpus_dir):
        u = upload(settings, record_type, path)
        body = u.message()
        when = datetime.fromtimestamp(_export_ms(path) / 1000, UTC) + timedelta(minutes=1)
        body["upload_timestamp_utc"] = when.isoformat()
        uploads.append(u)
        bodies.append(body)
        names[u.key] = path.name  # the key holds the user and upload time, not the name
    async with running_worker(settings):
        await publish(settings, *bodies)
        outcomes = await wait_outcomes(settings, [u.message_id for u in uploads], timeout=60)
    assert set(outcomes.values()) == {"processed"}, outcomes
    storage = storage_for(settings)
    partial = {}
    for u in uploads:
        name = f"/{rid(settings, u.idempotency_key)}.jsonl"
        [key] = [k for k in results(settings) if k.endswith(name)]
        meta = orjson.loads(storage.get(settings.bucket, key))["metadata"]
        partial[names[u.key]] = meta["partial"]
        assert meta["subject_id"] and "demo-user" not in orjson.dumps(meta).decode()
    assert sorted(k for k, v in partial.items() if v) == sorted(
        n for n in partial if "app_steps" in n or "app_calories" in n), partial


def test_compacted_lines_still_follow_the_training_record_schema(
        records: dict[str, dict[str, Any]]) -> None:
    import json

    import jsonschema

    schema = json.loads((ROOT / "schemas" / "training-record.schema.json").read_text())
    lines = [orjson.dumps(records[n], option=orjson.OPT_SORT_KEYS) for n in (
        "StepsRecord/app_steps_0919_1725.avro", "StepsRecord/app_steps_0920_1040.avro")]
    kept, _ = latest_exports(lines)
    validator = jsonschema.Draft202012Validator(schema)
    for line in kept:
        assert not list(validator.iter_errors(orjson.loads(line)))


def test_a_record_keeps_the_days_it_wins_and_names_the_ones_it_lost(
        records: dict[str, dict[str, Any]]) -> None:
    """Sept 19 complete + Sept 20 partial, then a later export of Sept 20 alone: both stay,
    and the earlier one says its Sept 20 is spoken for."""
    two_days = records["StepsRecord/app_steps_0920_1040.avro"]
    later = orjson.loads(orjson.dumps(two_days))
    meta = later["metadata"]
    meta["idempotency_key"], meta["export_time"] = "ik-later", "2025-09-20T23:00:00.000Z"
    for key in ("days_detail", "daily_steps", "origin_by_day"):
        meta["statistics"][key] = {"2025-09-20": meta["statistics"][key]["2025-09-20"]}
    kept, superseded = latest_exports([orjson.dumps(r) for r in (two_days, later)])
    assert superseded == 0 and len(kept) == 2
    first = orjson.loads(kept[0])["metadata"]
    assert first["superseded_days"] == ["2025-09-20"] and "superseded_days" not in orjson.loads(
        kept[1])["metadata"]
