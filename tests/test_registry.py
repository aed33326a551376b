"""The record-type registry: adding a type is one file, and the shipped specs are complete.

The toy type below lives in this file only (its spec, its reader schema written to a
temporary directory); once registered it goes through the same stages the worker runs
(``runtime.compute.run_cpu_stages``: decode, validate into a column store, transform) and
through the stage functions one by one, and comes out as a training record that follows
the training-record schema generated with it, and as a drawing in ``inspect --html``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from jsonschema import Draft202012Validator

from etl_engine.domain import (
    avro,
    narratives,
    output_schema,
    record_types,
    registry,
    transform,
    validation,
)
from etl_engine.domain.checks import number_check, number_chunk_check
from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DecodedFile, DomainConfig, Lineage
from etl_engine.domain.records.spec import CHART_KINDS, Chart, RecordTypeSpec, StatisticsSchema
from etl_engine.domain.stats.columns import Readings
from etl_engine.domain.stats.common import mean, rnd
from etl_engine.domain.wording import Stats, cap, num, plural
from etl_engine.ops import inspection, report_html
from etl_engine.runtime.compute import Limits, run_cpu_stages
from etl_engine.settings import load_settings

NS = record_types.AVRO_NAMESPACE
NOW = datetime(2024, 3, 10, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
T0 = NOW_MS - 86_400_000
CFG = DomainConfig()
LIMITS = Limits(max_records=1_000_000, max_decompressed_bytes=64 * 1024 * 1024)
SRC = Path(validation.__file__).resolve().parent
PACKAGE = SRC.parent
SCHEMA_FILE = PACKAGE / "schemas" / output_schema.SCHEMA_FILE
REGENERATE = ("python -m etl_engine.domain.output_schema "
              "src/etl_engine/schemas/training-record.schema.json")

# --- the toy type: everything a new type needs, in one place ------------------------------------
MOOD = "MoodRecord"
MOOD_KEY = "moodScore"
MOOD_SCHEMA: dict[str, Any] = {
    "type": "record", "name": f"Avro{MOOD}", "namespace": NS,
    "fields": [
        {"name": "metadata", "type": {
            "type": "record", "name": "AvroMoodMetadata",
            "fields": [{"name": "id", "type": "string"},
                       {"name": "dataOriginPackageName", "type": "string"}]}},
        {"name": "timeEpochMillis", "type": "long"},
        {"name": "zoneOffsetId", "type": ["null", "string"], "default": None},
        {"name": MOOD_KEY, "type": "long"},
        {"name": "appRecordFetchTimeEpochMillis", "type": "long"},
    ],
}


def mood_statistics(cols: Readings, config: DomainConfig) -> dict[str, Any]:
    """Count and average of the ratings (the toy's column statistics)."""
    return {"rating_count": len(cols), "mean_score": rnd(mean(cols.values))}


MOOD_STATISTICS = StatisticsSchema(name="moodStatistics", schema={
    "type": "object",
    "required": ["rating_count", "mean_score"],
    "properties": {"rating_count": {"type": "integer", "minimum": 1},
                   "mean_score": {"type": "number", "minimum": 1, "maximum": 10}},
    "additionalProperties": False,
})
MOOD_CHART = Chart(kind="readings", heading="Mood", unit="score", color="#2e86c1",
                   caption="{count} ratings (local time)", value_field=MOOD_KEY, dots=True)


def mood_narrative(s: Stats, period: str) -> str:
    n = s["rating_count"]
    return (f"{cap(period)}, {plural(n, 'mood rating')} {'was' if n == 1 else 'were'} "
            f"recorded, {num(s['mean_score'])} out of 10 on average.")


def mood_spec(schema_dir: Path) -> RecordTypeSpec:
    return RecordTypeSpec(
        name=MOOD,
        category="mood_wellbeing",
        interval=False,
        schema_file=f"{MOOD}.avsc",
        schema_dir=schema_dir,
        check=number_check(MOOD_KEY, 1, 10, "mood_out_of_range", ints_only=True),
        clean=number_chunk_check(MOOD_KEY, 1, 10, ints_only=True),
        statistics=lambda records, config: mood_statistics(
            Readings.from_records(records, MOOD_KEY), config),
        column_store=lambda: Readings(MOOD_KEY),
        column_statistics=mood_statistics,
        narrative=mood_narrative,
        instructions=("How was my mood {period}?",),
        chart=MOOD_CHART,
        statistics_schema=MOOD_STATISTICS,
    )


@pytest.fixture
def mood(tmp_path: Path) -> Iterator[RecordTypeSpec]:
    """The toy type, registered for one test (its schema in ``tmp_path``)."""
    (tmp_path / f"{MOOD}.avsc").write_text(json.dumps(MOOD_SCHEMA))
    spec = registry.register(mood_spec(tmp_path))
    try:
        yield spec
    finally:
        registry.unregister(MOOD)


def mood_file(scores: list[int]) -> bytes:
    """An Avro container of mood ratings, one a minute, written with the toy schema."""
    records = [{"metadata": {"id": f"m{i}", "dataOriginPackageName": "com.example.mood"},
                "timeEpochMillis": T0 + i * 60_000, "zoneOffsetId": "+01:00",
                MOOD_KEY: score, "appRecordFetchTimeEpochMillis": T0 + 3_600_000}
               for i, score in enumerate(scores)]
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(MOOD_SCHEMA), records)
    return buf.getvalue()


def lineage(record_type: str = MOOD) -> Lineage:
    return Lineage(bucket="b", key=f"raw/{record_type}/x.avro", message_id="m",
                   correlation_id="c", record_type=record_type, idempotency_key="k",
                   upload_timestamp_utc=NOW.isoformat())


# --- adding a type is one file ----------------------------------------------------------------
def test_a_type_file_in_the_records_package_is_discovered(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery finds a ``SPEC`` in any module of the records package: the one new file."""
    import sys

    import etl_engine.domain.records as records_package

    (tmp_path / f"{MOOD}.avsc").write_text(json.dumps(MOOD_SCHEMA))
    extra = tmp_path / "more_records"
    extra.mkdir()
    (extra / "mood.py").write_text("from pathlib import Path\n\nfrom test_registry import "
                                   f"mood_spec\n\nSPEC = mood_spec(Path({str(tmp_path)!r}))\n")
    monkeypatch.setattr(records_package, "__path__", [*records_package.__path__, str(extra)])
    try:
        found = {spec.name: spec for spec in registry._discover()}
    finally:
        sys.modules.pop("etl_engine.domain.records.mood", None)
    assert found[MOOD].category == "mood_wellbeing"
    assert {s.name for s in registry.SHIPPED} < set(found)


def test_a_registered_type_goes_through_the_worker_stages(mood: RecordTypeSpec) -> None:
    out = run_cpu_stages(mood_file([7, 8, 9, 6]), lineage(), LIMITS, CFG, NOW)
    assert out.quarantine_reason is None and out.output is not None
    assert out.output.category == "mood_wellbeing"
    record = out.output.record
    assert record["instruction"] == "How was my mood on March 9, 2024?"
    assert record["output"] == ("On March 9, 2024, 4 mood ratings were recorded, 7.5 out of "
                                "10 on average.")
    md = record["metadata"]
    assert md["record_type"] == MOOD and md["training_category"] == "mood_wellbeing"
    assert md["statistics"] == {"rating_count": 4, "mean_score": 7.5}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_a_registered_type_follows_the_schema_generated_with_it(mood: RecordTypeSpec) -> None:
    """The published schema closes categories and statistics: generated with the toy
    registered, it takes the toy's record (and still closes the toy's statistics); the
    schema of the shipped types alone refuses it."""
    keyed = pseudonymous(b"test-lineage-key", bucket="b", key=f"raw/{MOOD}/x.avro",
                         record_type=MOOD, idempotency_key="k", user_id="u",
                         upload_timestamp_utc=NOW.isoformat())  # as the worker makes it
    out = run_cpu_stages(mood_file([7, 8, 9, 6]), keyed, LIMITS, CFG, NOW)
    assert out.output is not None
    record = out.output.record
    schema = output_schema.training_record_schema()  # every registered type
    _validator(schema).validate(record)
    assert "mood_wellbeing" in schema["properties"]["metadata"]["properties"][
        "training_category"]["enum"]
    assert schema["$defs"]["moodStatistics"] == MOOD_STATISTICS.schema
    extra = copy.deepcopy(record)
    extra["metadata"]["statistics"]["mood_forecast"] = "sunny"
    assert not _validator(schema).is_valid(extra)
    assert not _validator(output_schema.training_record_schema(registry.SHIPPED)).is_valid(
        record)


def test_a_registered_type_is_drawn_in_the_html_report(mood: RecordTypeSpec,
                                                       tmp_path: Path) -> None:
    """``inspect --html`` draws the toy from its ``Chart``; without one, no drawing."""
    settings = load_settings(env="development")
    src = inspection.Source(name="mood.avro", data=mood_file([7, 8, 9, 6]))
    doc = inspection.inspect_source(src, settings, NOW)
    assert doc["record_type"] == MOOD and doc["outcome"]["kind"] == "processed"
    kept = inspection.kept_records(src, MOOD, settings, NOW)
    stats = doc["training_record"]["metadata"]["statistics"]
    [(heading, caption, picture)] = report_html.panels(kept, stats)
    assert heading == "Mood, Sat Mar 9, 2024" and caption == "4 ratings (local time)"
    assert picture.startswith("<svg") and "<title>Mood</title>" in picture
    assert 'stroke="#2e86c1"' in picture
    page = report_html.render(doc, kept)
    assert "<figure><h3>Mood, Sat Mar 9, 2024</h3><svg" in page
    registry.register(dataclasses.replace(mood, chart=None), replace=True)
    assert report_html.panels(kept, stats) == []
    assert "Nothing to draw" in report_html.render(doc, kept)


def test_a_registered_type_stage_by_stage(mood: RecordTypeSpec) -> None:
    """decode -> validate (its own value rule, record by record and a chunk at once) ->
    transform from records and from columns: the same training record."""
    data = mood_file([7, 8, 11, 6])
    decoded = avro.decode(data, MOOD, record_types.reader_schema(MOOD), max_records=100,
                          max_decompressed_bytes=1 << 20)
    assert decoded.writer_schema_name == record_types.full_name(MOOD)
    listed = validation.validate(decoded, now_ms=NOW_MS, config=CFG)
    assert listed.issue_counts == {"mood_out_of_range": 1} and listed.kept == 3
    stream = avro.decode_stream(data, MOOD, record_types.reader_schema(MOOD), max_records=100,
                                max_decompressed_bytes=1 << 20)
    sink = transform.column_sink(MOOD)
    assert isinstance(sink, Readings)
    streamed = validation.validate(stream, now_ms=NOW_MS, config=CFG, sink=sink)
    assert streamed.to_dict() == listed.to_dict() and len(sink) == 3
    a, b = (transform.transform(rep, lineage(), config=CFG, processed_at=NOW).record
            for rep in (listed, streamed))
    assert a == b and a["metadata"]["statistics"]["mean_score"] == 7.0
    clean = [{"metadata": {"id": f"c{i}", "dataOriginPackageName": "o"},
              "timeEpochMillis": T0 + i, "zoneOffsetId": "Z", MOOD_KEY: 5,
              "appRecordFetchTimeEpochMillis": T0 + 100} for i in range(300)]
    for fast in (True, False):  # the chunk check and the record check agree
        options = validation.ValidationOptions(fast_chunks=fast)
        rep = validation.validate(DecodedFile(MOOD, clean, "null", "", 0), now_ms=NOW_MS,
                                  config=CFG, options=options)
        assert rep.kept == 300 and rep.issue_counts == {}


def test_a_registered_type_is_known_everywhere_until_unregistered(tmp_path: Path) -> None:
    (tmp_path / f"{MOOD}.avsc").write_text(json.dumps(MOOD_SCHEMA))
    shipped = record_types.SUPPORTED_RECORD_TYPES
    registry.register(mood_spec(tmp_path))
    try:
        assert validation.canonical_record_type(f"{NS}.Avro{MOOD}") == MOOD
        assert validation.canonical_record_type("mood") == MOOD
        assert record_types.record_type_from_writer_name(f"{NS}.Avro{MOOD}") == MOOD
        assert not record_types.is_interval(MOOD)
        assert record_types.supported_record_types() == (*shipped, MOOD)
        assert MOOD not in record_types.SUPPORTED_RECORD_TYPES  # the shipped types only
        assert transform.training_category(MOOD) == "mood_wellbeing"
        with pytest.raises(ValueError, match="already registered"):
            registry.register(mood_spec(tmp_path))
    finally:
        registry.unregister(MOOD)
    assert validation.canonical_record_type("mood") == "mood"
    assert record_types.record_type_from_writer_name(f"{NS}.Avro{MOOD}") is None
    assert transform.training_category(MOOD) == transform.GENERIC_CATEGORY
    assert transform.column_sink(MOOD) is None
    assert narratives.instruction(MOOD, NOW.date(), NOW.date()).endswith(
        "mood data on March 10, 2024?")
    with pytest.raises(KeyError):
        record_types.reader_schema(MOOD)


def test_a_spec_refuses_parts_that_do_not_fit(tmp_path: Path) -> None:
    base = mood_spec(tmp_path)
    kw: dict[str, Any] = {f: getattr(base, f) for f in base.__dataclass_fields__}
    with pytest.raises(ValueError, match="go together"):
        RecordTypeSpec(**{**kw, "column_statistics": None})
    with pytest.raises(ValueError, match="completeness"):
        RecordTypeSpec(**{**kw, "incomplete": lambda rec: None})
    with pytest.raises(ValueError, match="chunk_records"):
        RecordTypeSpec(**{**kw, "chunk_records": 0})
    pie: Any = "pie"
    with pytest.raises(ValueError, match="chart kind"):
        Chart(kind=pie, heading="Mood")


def test_the_schema_generator_refuses_what_it_cannot_publish(tmp_path: Path) -> None:
    base = mood_spec(tmp_path)
    dangling = StatisticsSchema("moodStatistics", {"$ref": "#/$defs/moodScale"})
    with pytest.raises(ValueError, match="moodScale"):
        output_schema.training_record_schema(
            [dataclasses.replace(base, statistics_schema=dangling)])
    with pytest.raises(ValueError, match="category of the types without a spec"):
        output_schema.training_record_schema(
            [dataclasses.replace(base, category=transform.GENERIC_CATEGORY)])
    taken = StatisticsSchema("localDate", {"type": "object"})
    with pytest.raises(ValueError, match="shared part"):
        output_schema.training_record_schema(
            [dataclasses.replace(base, statistics_schema=taken)])


def test_types_sharing_a_category_keep_their_own_statistics_shape(tmp_path: Path) -> None:
    """Two types of one category with different statistics: each is picked by its
    ``record_type`` as well, so neither record is held to the other's shape."""
    glucose = registry.get("BloodGlucoseRecord")
    toy = dataclasses.replace(mood_spec(tmp_path), category=glucose.category)
    schema = output_schema.training_record_schema([glucose, toy])
    branches = schema["properties"]["metadata"]["allOf"]
    assert [b["if"]["properties"].get("record_type") for b in branches] == [
        {"const": glucose.name}, {"const": MOOD}, None]
    metadata = {"training_category": glucose.category, "record_type": MOOD,
                "statistics": {"rating_count": 1, "mean_score": 5}}
    sub = {"$defs": schema["$defs"], **schema["properties"]["metadata"]}
    sub = {**sub, "required": [], "additionalProperties": True}
    assert _validator(sub).is_valid(metadata)
    assert not _validator(sub).is_valid({**metadata, "record_type": glucose.name})


# --- the shipped specs ------------------------------------------------------------------------
def test_the_shipped_types_keep_their_order() -> None:
    assert record_types.SUPPORTED_RECORD_TYPES == (
        "BloodGlucoseRecord", "HeartRateRecord", "HeartRateVariabilityRmssdRecord",
        "SleepSessionRecord", "StepsRecord", "ActiveCaloriesBurnedRecord")
    assert registry.names() == record_types.SUPPORTED_RECORD_TYPES
    assert len({s.order for s in registry.SHIPPED}) == len(registry.SHIPPED)


@pytest.mark.parametrize("spec", registry.SHIPPED, ids=lambda s: s.name)
def test_every_shipped_spec_is_complete(spec: RecordTypeSpec) -> None:
    assert spec.name.endswith("Record") and spec.category
    assert record_types.TRAINING_CATEGORY[spec.name] == spec.category
    assert spec.schema_dir is None and spec.schema_file == f"{spec.name}.avsc"
    schema = record_types.reader_schema(spec.name)
    assert schema["name"] == record_types.full_name(spec.name)
    fields = {f["name"] for f in schema["fields"]}
    time_fields = ({"startTimeEpochMillis", "endTimeEpochMillis"} if spec.interval
                   else {"timeEpochMillis"})
    assert time_fields <= fields
    for fn in (spec.check, spec.statistics, spec.narrative):
        assert callable(fn)
    assert spec.instructions and all("{period}" in q for q in spec.instructions)
    assert spec.chunk_records >= 1
    if spec.column_store is not None:
        store = spec.column_store()
        assert len(store) == 0 and callable(spec.column_statistics)
    # the spec lives in the file of its narrative and statistics
    module = inspect.getmodule(spec.narrative)
    assert module is not None and getattr(module, "SPEC", None) is spec
    # and declares its drawing and the published shape of its statistics
    assert spec.chart is not None and spec.statistics_schema is not None
    assert spec.statistics_schema.schema.get("additionalProperties") is False


def test_every_chart_kind_has_a_drawing() -> None:
    assert set(report_html.DRAWINGS) == set(CHART_KINDS)


def test_the_committed_training_record_schema_is_the_generated_one() -> None:
    """The file is generated from the specs (``domain/output_schema.py``): never edit it
    by hand."""
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    generated = output_schema.schema_text(registry.SHIPPED)
    assert committed == generated, (f"{SCHEMA_FILE.name} differs from the specs; edit the "
                                    f"spec files, then regenerate it: {REGENERATE}")


def test_the_schema_module_prints_or_writes_the_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert output_schema.main([]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(encoding="utf-8")
    out = tmp_path / "schema.json"
    assert output_schema.main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")
    assert output_schema.main(["--help"]) == 2


def test_the_registry_and_the_schemas_directory_agree() -> None:
    """Every record schema has a spec and every spec a schema; the shared named types
    (``<namespace>.AvroMetadata.avsc``, ...) are not record types."""
    files = {p.name for p in record_types.schema_dir().glob("*.avsc")}
    record_files = {name for name in files if not name.startswith(f"{NS}.")}
    assert record_files == {s.schema_file for s in registry.SHIPPED}
    assert set(record_types.SUPPORTED_RECORD_TYPES) == {
        name.removesuffix(".avsc") for name in record_files}


# --- the layering ------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("path", sorted((SRC / "records").glob("*.py"))
                         + sorted((SRC / "stats").glob("*.py")), ids=lambda p: p.name)
def test_type_files_do_not_import_the_modules_that_look_them_up(path: Path) -> None:
    above = {f"etl_engine.domain.{m}" for m in
             ("registry", "validation", "transform", "narratives", "record_types")}
    assert not _imports(path) & above


def _guarded() -> list[Path]:
    """The modules that look types up and must name none: the domain's lookups, and every
    module of ops/ and runtime/ (the sample-file helpers aside: samples sit in folders
    named by type)."""
    lookups = [SRC / f"{m}.py" for m in
               ("validation", "transform", "narratives", "record_types", "output_schema")]
    layers = sorted((PACKAGE / "ops").glob("*.py")) + sorted((PACKAGE / "runtime").glob("*.py"))
    return lookups + [p for p in layers if "sample" not in p.name]


@pytest.mark.parametrize("path", _guarded(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_type_is_spelled_out_outside_its_file(path: Path) -> None:
    """No type's name in code (ops/ and runtime/: not even in words) and no import of a
    type's file: what differs by type comes from its spec."""
    source = path.read_text()
    words = path.parent.name in ("ops", "runtime")
    for name in record_types.SUPPORTED_RECORD_TYPES:
        assert f'"{name}"' not in source, name
        assert not (words and re.search(rf"\b{name}\b", source)), name
    type_files = {f"etl_engine.domain.records.{m.stem}" for m in (SRC / "records").glob("*.py")
                  if m.stem not in ("__init__", "spec")}
    assert not _imports(path) & type_files, "imports a type's own file"
