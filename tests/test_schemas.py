"""The reader schemas are the wire contract with the phone app; these tests pin it down."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError
from fastavro.schema import load_schema

from etl_devtools.samples import app_writer_schema
from etl_engine.domain import record_types as rt

NS = "io.github.hitoshura25.healthsyncapp.data.avro"


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A deep copy without fastavro's parse markers, safe to edit and re-parse."""
    out = copy.deepcopy(schema)
    out.pop("__fastavro_parsed", None)
    out.pop("__named_schemas", None)
    return out


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _metadata() -> dict[str, Any]:
    return {
        "id": "rec-1",
        "dataOriginPackageName": "com.example.app",
        "lastModifiedTimeEpochMillis": 1_790_000_000_000,
        "clientRecordId": None,
        "clientRecordVersion": 0,
        "device": {"manufacturer": "Google", "model": "Pixel", "type": "PHONE"},
    }


def _glucose(**extra: Any) -> dict[str, Any]:
    return {
        "metadata": _metadata(),
        "timeEpochMillis": 1_790_000_000_000,
        "zoneOffsetId": "-05:00",
        "levelInMilligramsPerDeciliter": 104.0,
        "specimenSource": "INTERSTITIAL_FLUID",
        "mealType": "UNKNOWN",
        "relationToMeal": "GENERAL",
        "appRecordFetchTimeEpochMillis": 1_790_000_100_000,
        **extra,
    }


def _roundtrip(writer: dict[str, Any], records: list[dict[str, Any]], reader_type: str) -> list:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(writer), records)
    buf.seek(0)
    return list(fastavro.reader(buf, reader_schema=rt.reader_schema(reader_type)))


@pytest.mark.parametrize("record_type", rt.SUPPORTED_RECORD_TYPES)
def test_every_schema_loads_with_the_app_full_name(record_type: str) -> None:
    schema = rt.reader_schema(record_type)
    assert schema["name"] == rt.full_name(record_type) == f"{NS}.Avro{record_type}"
    names = [f["name"] for f in schema["fields"]]
    # the app's own fields, names and order (tools/etl_devtools/app_writer_schemas)
    assert names == [f["name"] for f in app_writer_schema(record_type)["fields"]]
    if rt.is_interval(record_type):
        assert {"startTimeEpochMillis", "endTimeEpochMillis"} <= set(names)
        assert {"startZoneOffsetId", "endZoneOffsetId"} <= set(names)
    else:
        assert {"timeEpochMillis", "zoneOffsetId"} <= set(names)
    # Shared named types are expanded inline from their own files.
    meta = _field(schema, "metadata")["type"]
    assert meta["name"] == f"{NS}.AvroMetadata"
    device = _field(meta, "device")["type"]
    assert device[0] == "null" and device[1]["name"] == f"{NS}.AvroDevice"
    assert rt.record_type_from_writer_name(schema["name"]) == record_type


def test_plain_fastavro_load_schema_resolves_named_files() -> None:
    # The files follow fastavro's "<full name>.avsc" convention, so no custom loader.
    schema = load_schema(str(rt.schema_dir() / "StepsRecord.avsc"))
    assert schema["name"] == f"{NS}.AvroStepsRecord"
    assert (rt.schema_dir() / f"{NS}.AvroMetadata.avsc").is_file()
    assert (rt.schema_dir() / f"{NS}.AvroDevice.avsc").is_file()


def test_schema_files_are_valid_json_and_all_types_have_one() -> None:
    files = sorted(p.name for p in rt.schema_dir().glob("*.avsc"))
    for name in files:
        json.loads((rt.schema_dir() / name).read_text())
    for record_type in rt.SUPPORTED_RECORD_TYPES:
        assert f"{record_type}.avsc" in files


def test_helpers() -> None:
    assert set(rt.SUPPORTED_RECORD_TYPES) == set(rt.TRAINING_CATEGORY)
    assert rt.TRAINING_CATEGORY["BloodGlucoseRecord"] == "metabolic_diabetes"
    assert rt.is_interval("StepsRecord") and not rt.is_interval("BloodGlucoseRecord")
    assert rt.record_type_from_writer_name("com.other.AvroStepsRecord") is None
    assert rt.record_type_from_writer_name("AvroStepsRecord") is None
    for fn in (rt.full_name, rt.is_interval, rt.reader_schema):
        with pytest.raises(KeyError):
            fn("WeightRecord")


def test_writer_with_added_field_resolves() -> None:
    writer = _plain(app_writer_schema("BloodGlucoseRecord"))
    writer["fields"].insert(3, {"name": "newFromApp", "type": "string", "default": "x"})
    [out] = _roundtrip(writer, [_glucose(newFromApp="hello")], "BloodGlucoseRecord")
    assert "newFromApp" not in out
    assert out["levelInMilligramsPerDeciliter"] == 104.0


def test_writer_without_nullable_field_gets_default() -> None:
    writer = _plain(app_writer_schema("BloodGlucoseRecord"))
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "zoneOffsetId"]
    rec = _glucose()
    del rec["zoneOffsetId"]
    [out] = _roundtrip(writer, [rec], "BloodGlucoseRecord")
    assert out["zoneOffsetId"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("specimenSource", "SALIVA", "UNKNOWN"),
        ("mealType", "BRUNCH", "UNKNOWN"),
        ("relationToMeal", "DURING_MEAL", "UNKNOWN"),
    ],
)
def test_writer_with_new_enum_symbol_falls_back_to_default(
    field: str, value: str, expected: str
) -> None:
    writer = _plain(app_writer_schema("BloodGlucoseRecord"))
    _field(writer, field)["type"]["symbols"].append(value)
    [out] = _roundtrip(writer, [_glucose(**{field: value})], "BloodGlucoseRecord")
    assert out[field] == expected


def test_new_sleep_stage_symbol_falls_back_to_unknown() -> None:
    writer = _plain(app_writer_schema("SleepSessionRecord"))
    stage_type = _field(writer, "stages")["type"]["items"]
    _field(stage_type, "stage")["type"]["symbols"].append("NAP")
    rec = {
        "metadata": _metadata(),
        "startTimeEpochMillis": 0,
        "startZoneOffsetId": "Z",
        "endTimeEpochMillis": 60_000,
        "endZoneOffsetId": "Z",
        "title": None,
        "notes": None,
        "durationMillis": 60_000,
        "stages": [{"startTimeEpochMillis": 0, "endTimeEpochMillis": 60_000, "stage": "NAP"}],
        "appRecordFetchTimeEpochMillis": 1,
    }
    [out] = _roundtrip(writer, [rec], "SleepSessionRecord")
    assert out["stages"][0]["stage"] == "UNKNOWN"


def test_other_record_type_does_not_resolve() -> None:
    steps = {
        "metadata": _metadata(),
        "startTimeEpochMillis": 0,
        "startZoneOffsetId": None,
        "endTimeEpochMillis": 1,
        "endZoneOffsetId": None,
        "count": 10,
        "appRecordFetchTimeEpochMillis": 2,
    }
    with pytest.raises(SchemaResolutionError):
        _roundtrip(_plain(app_writer_schema("StepsRecord")), [steps], "BloodGlucoseRecord")
