"""``etl-engine inspect``: the worker's own CPU stages on a local file, with no stack.

Checked: every bundled sample gives what ``run_cpu_stages`` gives (the same report and
training record), the bad samples their reasons, the type is read from the writer schema,
the exit codes, ``--json``, ``quarantine show --inspect`` on a quarantined copy, and that
hostile text in a file reaches neither the terminal nor the HTML report raw.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from etl_engine.ops import cli, report_html, svg
from etl_engine.ops import inspection as inspect_file
from etl_engine.ops.sample_files import bundled_samples, iter_sample_files
from etl_engine.runtime.compute import run_cpu_stages
from etl_engine.settings import Settings, load_settings

SAMPLES = bundled_samples()
BAD = SAMPLES / "bad"
WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env="development")


def _inspect(path: Path, settings: Settings, **kw: Any) -> dict[str, Any]:
    src = inspect_file.Source(name=path.name, data=path.read_bytes(), **kw)
    return inspect_file.inspect_source(src, settings, WHEN)


@pytest.mark.parametrize(("record_type", "path"), iter_sample_files(SAMPLES),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_a_sample_gives_what_the_workers_stages_give(record_type: str, path: Path,
                                                     settings: Settings) -> None:
    doc = _inspect(path, settings)
    assert doc["record_type"] == record_type and doc["record_type_from"] == "writer schema"
    assert doc["prescan"]["passed"] and doc["schema"]["verdict"] == "identical"
    assert doc["outcome"]["kind"] == "processed", doc["outcome"]
    src = inspect_file.Source(name=path.name, data=path.read_bytes())
    lineage_key = settings.lineage_key.get_secret_value().encode()
    cpu = run_cpu_stages(src.data, inspect_file._lineage(src, record_type, lineage_key),
                         inspect_file._limits(settings), inspect_file.domain_config(settings),
                         WHEN)
    assert cpu.output is not None
    assert doc["quality"] == cpu.report
    assert doc["training_record"] == cpu.output.record  # whatever transform returns
    assert doc["outcome"]["category"] == cpu.output.category


def _bad_cases() -> list[tuple[str, str, str]]:
    manifest = json.loads((BAD / "manifest.json").read_text())
    return [(name, case["record_type"], case["expect"]) for name, case in manifest.items()]


@pytest.mark.parametrize(("name", "record_type", "expect"), _bad_cases(),
                         ids=lambda v: str(v))
def test_a_bad_sample_is_quarantined_with_its_reason(name: str, record_type: str, expect: str,
                                                     settings: Settings) -> None:
    doc = _inspect(BAD / name, settings, record_type=record_type)
    assert doc["outcome"]["kind"] == "quarantined", doc["outcome"]
    if expect == "validation":
        assert doc["outcome"]["stage"] == "validate"
        assert doc["quality"]["passed"] is False
        assert doc["outcome"]["reason"] == doc["quality"]["quarantine_reason"]
    else:
        assert doc["outcome"]["stage"] == "decode"
        assert "training_record" not in doc


def test_without_a_type_the_writer_schema_names_it_and_a_wrong_type_is_a_mismatch(
        settings: Settings) -> None:
    path = BAD / "BloodGlucoseRecord" / "wrong_record_type.avro"
    assert _inspect(path, settings)["record_type"] == "StepsRecord"
    doc = _inspect(path, settings, record_type="BloodGlucoseRecord")
    assert doc["schema"]["name_matches"] is False and doc["schema"]["verdict"] == "mismatch"
    assert doc["outcome"]["reason"] == "schema_mismatch"


def test_a_changed_field_type_is_named(settings: Settings) -> None:
    doc = _inspect(BAD / "BloodGlucoseRecord" / "incompatible_schema.avro", settings)
    assert doc["schema"]["first_mismatch"] == "levelInMilligramsPerDeciliter"
    assert doc["outcome"] == {"kind": "quarantined", "reason": "schema_mismatch",
                              "stage": "decode", "detail": "field levelInMilligramsPerDeciliter"}


def test_a_file_the_prescan_refuses_is_quarantined_whatever_its_type(
        settings: Settings) -> None:
    doc = _inspect(BAD / "BloodGlucoseRecord" / "truncated.avro", settings)
    assert doc["record_type"] is None
    assert doc["prescan"] == {"passed": False, "reason": "truncated_file", "detail": ""}
    assert doc["outcome"]["reason"] == "truncated_file"


def test_an_object_over_the_size_limit_is_refused_at_download(settings: Settings) -> None:
    small = settings.model_copy(update={"max_object_bytes": 100})
    doc = _inspect(SAMPLES / "StepsRecord" / "steps_watch.avro", small)
    assert doc["outcome"]["reason"] == "object_too_large"
    assert doc["stages_outcome"]["kind"] == "processed"


def test_the_upload_time_bounds_the_export_times(settings: Settings) -> None:
    """A running-total day exported at 17:25 is in progress; an upload an hour earlier
    caps the export time it may claim, as in the worker."""
    path = SAMPLES / "StepsRecord" / "app_steps_0919_1725.avro"
    later = _inspect(path, settings)
    assert later["quality"]["in_progress_records"] > 0
    early = _inspect(path, settings, upload_time="2025-09-19T06:00:00+00:00")
    assert early["quality"] != later["quality"]


# --- the command line --------------------------------------------------------------------------
def test_cli_prints_the_report_and_exits_0_for_a_good_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES / "BloodGlucoseRecord" / "cgm_day1.avro"
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for part in ("pre-scan     passed", "schema       identical", "outcome      PROCESSED",
                 "quality      score 1.000", "statistics", "narrative", "  Q: ",
                 "training record"):
        assert part in out
    record = json.loads(out.strip().splitlines()[-1])  # the JSONL line a worker would write
    assert set(record) == {"instruction", "output", "metadata"}


def test_cli_json_and_the_exit_code_of_a_quarantined_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD / "StepsRecord" / "out_of_range.avro"
    assert cli.main(["inspect", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["outcome"]["reason"] == "quality_below_threshold"
    assert doc["quality"]["issue_counts"]["steps_out_of_range"] == 2


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(tmp_path / "missing.avro")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["inspect", "x.avro", "--record-type", "Nope"])
    assert exc.value.code == 2
    assert cli.main(["inspect", str(SAMPLES / "StepsRecord" / "steps_watch.avro"),
                     "--record-type", "steps"]) == 0  # any spelling the worker accepts


def test_cli_writes_the_html_report(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    path = SAMPLES / "SleepSessionRecord" / "sleep_watch.avro"
    assert cli.main(["inspect", str(path), "--html", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    assert page.count("<svg") == 4 and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


# --- hostile input -----------------------------------------------------------------------------
HOSTILE = "<script>alert(1)</script>\x1b[2J\"'&</pre>"


def _hostile_glucose(tmp_path: Path) -> Path:
    src = SAMPLES / "BloodGlucoseRecord" / "cgm_day1.avro"
    reader = fastavro.reader(io.BytesIO(src.read_bytes()))
    schema = reader.writer_schema
    records = list(reader)
    for rec in records:
        rec["metadata"]["dataOriginPackageName"] = HOSTILE
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records)
    out = tmp_path / "hostile.avro"
    out.write_bytes(buf.getvalue())
    return out


def test_hostile_text_reaches_neither_the_terminal_nor_the_page_raw(
        tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    path = _hostile_glucose(tmp_path)
    html_out = tmp_path / "r.html"
    assert cli.main(["inspect", str(path), "--html", str(html_out)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b" in out
    page = html_out.read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "\x1b" not in page and "</pre>\"" not in page
    src = inspect_file.Source(name='<img src=x onerror="alert(1)">.avro',
                              data=path.read_bytes())
    doc = inspect_file.inspect_source(src, settings, WHEN)
    page = report_html.render(doc, inspect_file.kept_records(src, "BloodGlucoseRecord",
                                                             settings, WHEN))
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    for picture in re.findall(r"<svg.*?</svg>", page, re.S):
        ET.fromstring(picture)  # each drawing is well-formed XML


def test_svg_text_is_escaped_and_stays_well_formed() -> None:
    doc = svg.document(100, 50, [svg.text(1, 2, HOSTILE + "\x00\ud800")], title=HOSTILE)
    root = ET.fromstring(doc.split("\n", 1)[1])
    assert root.find("{http://www.w3.org/2000/svg}title").text.startswith("<script>")


# --- quarantine show --inspect -------------------------------------------------------------------
class _Bucket:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get(self, bucket: str, key: str) -> bytes:
        from etl_engine.errors import PermanentError

        if key not in self.objects:
            raise PermanentError("object_missing", stage="get")  # as Storage.get says it
        return self.objects[key]


def _args(*argv: str) -> Any:
    return cli.build_parser().parse_args(["quarantine", "show", "quarantine/k.avro",
                                          "--inspect", *argv])


def test_quarantine_show_inspect_reads_the_copy_as_the_message_said(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    data = (BAD / "BloodGlucoseRecord" / "wrong_record_type.avro").read_bytes()
    qkey = "quarantine/BloodGlucoseRecord/2026/11/01/alice_x.avro"
    reason = {"reason": "schema_mismatch", "record_type": "BloodGlucoseRecord",
              "message": {"record_type": "BloodGlucoseRecord", "user_id": "alice",
                          "idempotency_key": "ik-1",
                          "upload_timestamp_utc": "2026-11-02T00:00:00+00:00"}}
    code = inspect_file.quarantined(_Bucket({qkey: data}), settings, qkey, reason,
                                    _args("--json"))
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["record_type"] == "BloodGlucoseRecord" and doc["record_type_from"] == "message"
    assert doc["outcome"]["reason"] == "schema_mismatch"
    assert "alice" not in doc["file"]["name"]  # masked unless --reveal
    assert inspect_file.quarantined(_Bucket({}), settings, qkey, reason, _args()) == 1
    assert "no quarantined copy" in capsys.readouterr().err


def test_quarantine_show_inspect_says_only_a_missing_copy_is_missing(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Any other storage failure is not "no quarantined copy": it reaches ops.failures
    (one line naming S3 and the setting, exit 69) instead of being mistaken for one."""
    from etl_engine.errors import TransientError

    class _Down(_Bucket):
        def get(self, bucket: str, key: str) -> bytes:
            raise TransientError("storage_unavailable", "503", stage="get")

    reason = {"message": {"user_id": "alice"}}
    qkey = "quarantine/StepsRecord/2026/11/01/alice_x.avro"
    with pytest.raises(TransientError):
        inspect_file.quarantined(_Down({}), settings, qkey, reason, _args())
    assert inspect_file.quarantined(_Bucket({}), settings, qkey, reason, _args()) == 1
    err = capsys.readouterr().err
    assert "no quarantined copy" in err and "alice" not in err  # masked unless --reveal


@pytest.mark.parametrize("where", ["missing-folder/x.html", "."])
def test_an_html_report_that_cannot_be_written_is_a_usage_error_up_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    out = tmp_path / where
    path = SAMPLES / "StepsRecord" / "steps_watch.avro"
    assert cli.main(["inspect", str(path), "--html", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "refused before the report"
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("etl-engine inspect: --html ") and "Traceback" not in line
    assert cli.main(["quarantine", "show", "k", "--html", str(out)]) == 2  # before any S3
    assert "etl-engine quarantine show: --html" in capsys.readouterr().err
