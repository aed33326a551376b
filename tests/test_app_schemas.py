"""Writer schemas other than the app's current ones: what decodes, what is refused and how.

Files are written with the app's contract schemas (tools/etl_devtools/app_writer_schemas),
edited the way a newer or older app might, and decoded by the worker's own decode path.
"""

from __future__ import annotations

import copy
import io
import json
import time
from typing import Any

import fastavro
import pytest

from etl_devtools.samples import app_writer_schema
from etl_engine.domain.avro import decode
from etl_engine.domain.record_types import reader_schema
from etl_engine.domain.schema_check import first_mismatch
from etl_engine.errors import PermanentError

LIMITS = {"max_records": 1000, "max_decompressed_bytes": 1 << 20}
META = {"id": "r1", "dataOriginPackageName": "com.sec.android.app.shealth",
        "lastModifiedTimeEpochMillis": 1, "clientRecordId": None, "clientRecordVersion": 0,
        "device": None}
STEPS = {"metadata": META, "startTimeEpochMillis": 1_758_258_000_000,
         "endTimeEpochMillis": 1_758_261_600_000, "startZoneOffsetId": "-05:00",
         "endZoneOffsetId": "-05:00", "count": 420,
         "appRecordFetchTimeEpochMillis": 1_758_262_000_000}


def contract(record_type: str) -> dict[str, Any]:
    """The app's writer schema as plain JSON, safe to edit."""
    with open(f"tools/etl_devtools/app_writer_schemas/{record_type}.avsc") as fo:
        return dict(json.load(fo))


def roundtrip(schema: dict[str, Any], records: list[dict[str, Any]], record_type: str
              ) -> list[dict[str, Any]]:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records)
    return decode(buf.getvalue(), record_type, reader_schema(record_type), **LIMITS).records


def test_a_writer_with_reordered_fields_decodes() -> None:
    schema = contract("StepsRecord")
    schema["fields"] = list(reversed(schema["fields"]))
    [out] = roundtrip(schema, [STEPS], "StepsRecord")
    assert out["count"] == 420 and out["metadata"]["id"] == "r1"


def test_a_writer_with_an_extra_field_and_without_an_optional_one_decodes() -> None:
    schema = contract("StepsRecord")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "endZoneOffsetId"]
    schema["fields"].append({"name": "stepCadenceHint", "type": "double"})
    rec = {k: v for k, v in STEPS.items() if k != "endZoneOffsetId"} | {"stepCadenceHint": 1.5}
    [out] = roundtrip(schema, [rec], "StepsRecord")
    assert out["endZoneOffsetId"] is None and "stepCadenceHint" not in out


def test_the_old_sleep_stage_name_decodes_through_its_alias() -> None:
    text = json.dumps(contract("SleepSessionRecord")).replace("AvroSleepStageRecord",
                                                              "AvroSleepStage")
    stage = {"startTimeEpochMillis": 1, "endTimeEpochMillis": 2, "stage": "DEEP"}
    rec = {"metadata": META, "title": None, "notes": None, "startTimeEpochMillis": 1,
           "endTimeEpochMillis": 2, "startZoneOffsetId": None, "endZoneOffsetId": None,
           "durationMillis": None, "appRecordFetchTimeEpochMillis": 3, "stages": [stage]}
    [out] = roundtrip(json.loads(text), [rec], "SleepSessionRecord")
    assert out["stages"] == [stage]


@pytest.mark.parametrize(("record_type", "path", "new_type"), [
    ("StepsRecord", ["count"], "string"),
    ("HeartRateRecord", ["samples", "items", "beatsPerMinute"], "string"),
    ("BloodGlucoseRecord", ["metadata", "dataOriginPackageName"], "long"),
])
def test_a_changed_type_is_a_schema_mismatch_naming_the_field(
        record_type: str, path: list[str], new_type: str) -> None:
    schema = contract(record_type)
    node: Any = schema
    for part in path[:-1]:
        field = next(f for f in node["fields"] if f["name"] == part) if "fields" in node else None
        node = field["type"] if field else node[part]
    next(f for f in node["fields"] if f["name"] == path[-1])["type"] = new_type
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), [])  # no records: still checked
    with pytest.raises(PermanentError) as err:
        decode(buf.getvalue(), record_type, reader_schema(record_type), **LIMITS)
    assert err.value.reason == "schema_mismatch"
    assert err.value.detail.startswith("field ") and err.value.detail.endswith(path[-1])


def test_every_contract_schema_matches_ours_field_for_field() -> None:
    for record_type in ("StepsRecord", "SleepSessionRecord", "HeartRateRecord",
                        "BloodGlucoseRecord", "HeartRateVariabilityRmssdRecord",
                        "ActiveCaloriesBurnedRecord"):
        assert first_mismatch(app_writer_schema(record_type), reader_schema(record_type)) is None


def test_a_hostile_schema_of_nested_unions_is_refused_quickly() -> None:
    """Unions of unions multiply the comparisons: the walk has a budget, not a timeout."""
    reader = reader_schema("StepsRecord")
    writer = copy.deepcopy(contract("StepsRecord"))
    branch = {"type": "record", "name": "N0", "fields": [
        {"name": f"f{i}", "type": ["null", "long", "string", "double"]} for i in range(40)]}
    for level in range(1, 30):
        inner = branch
        branch = {"type": "record", "name": f"N{level}", "fields": [
            {"name": f"g{i}", "type": ["null", inner if i == 0 else f"N{level - 1}"]}
            for i in range(20)]}
    next(f for f in writer["fields"] if f["name"] == "count")["type"] = ["null", branch]
    started = time.process_time()
    assert first_mismatch(writer, reader) is not None
    # a hang guard, not a speed target: without the budget this walk takes minutes
    assert time.process_time() - started < 10.0
