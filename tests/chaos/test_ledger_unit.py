"""The chaos ledger's judgement on synthetic listings: each rule of "exactly one outcome per
input" can fail a run (fast, no services; not marked chaos, so the ordinary run has it)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .ledger import (
    DeadLetter,
    Entry,
    Observed,
    Verdict,
    histories,
    result_name,
    verdict_of,
)

IKEY = "0123456789abcdef"
MID = "m-1"
RESULT = f"training/steps/2026/11/01/{result_name(IKEY, b'')}.jsonl"
REASON = f"quarantine/StepsRecord/{IKEY}/u_20261101_120000_000000.avro.reason.json"


def _entries(**kw: Any) -> dict[str, Entry]:
    e = Entry(IKEY, IKEY, kw.pop("expect", ("processed",)), None, "input", [MID], **kw)
    return {IKEY: e}


def _version(key: str, vid: str, latest: bool) -> dict[str, Any]:
    return {"Key": key, "VersionId": vid, "IsLatest": latest}


def _seen(results: list[dict[str, Any]] | None = None, reasons: list[dict[str, Any]] | None = None,
          deletes: list[dict[str, Any]] | None = None, dead: list[DeadLetter] | None = None,
          docs: dict[tuple[str, str], dict[str, Any]] | None = None,
          content: dict[str, str | None] | None = None) -> Observed:
    """What the ledger would have listed: version pages, reason contents, DLQ entries."""
    res = histories([{"Versions": results or []}])
    rsn = histories([{"Versions": reasons or [], "DeleteMarkers": deletes or []}])
    if docs is None:
        docs = {(v["Key"], v["VersionId"]): {"reason": "no_valid_records", "message_id": MID,
                                             "idempotency_key": IKEY} for v in reasons or []}
    if content is None:
        content = {k: IKEY for k, h in res.items() if h.live and len(h.versions) == 1}
    return Observed(res, rsn, docs, dead or [], content)


def _judge(seen: Observed, **kw: Any) -> Verdict:
    return verdict_of(_entries(**kw), seen,
                      queues={"work": (0, 0, 1)}, outcome_counts=Counter())


def _dlq(reason: str = "invalid_field", mid: str | None = MID) -> DeadLetter:
    return DeadLetter(mid, reason, IKEY, 10)


# --- one outcome each: pass -------------------------------------------------------------------
def test_one_result_passes() -> None:
    v = _judge(_seen(results=[_version(RESULT, "v1", True)]))
    assert v.classes[IKEY] == "processed" and v.passed


def test_one_reason_file_passes() -> None:
    v = _judge(_seen(reasons=[_version(REASON, "v1", True)]), expect=("quarantined",))
    assert v.classes[IKEY] == "quarantined" and v.reasons[IKEY] == "no_valid_records"
    assert v.passed


def test_one_dead_letter_passes() -> None:
    v = _judge(_seen(dead=[_dlq()]), expect=("dead_lettered",))
    assert v.classes[IKEY] == "dead_lettered" and v.passed


def test_a_reason_file_released_then_a_result_is_one_outcome() -> None:
    """The release deleted the old evidence (a delete marker) once the result existed."""
    v = _judge(_seen(results=[_version(RESULT, "r1", True)],
                     reasons=[_version(REASON, "v1", False)],
                     deletes=[{"Key": REASON, "VersionId": "d1", "IsLatest": True}]))
    assert v.classes[IKEY] == "processed" and v.passed


def test_a_release_may_replace_its_reason_file_once() -> None:
    seen = _seen(reasons=[_version(REASON, "v2", True), _version(REASON, "v1", False)])
    assert _judge(seen, expect=("quarantined",)).classes[IKEY] == "two_outcomes"
    v = _judge(seen, expect=("quarantined",), releases=1)
    assert v.classes[IKEY] == "quarantined" and v.passed


# --- each second artefact fails the run ---------------------------------------------------------
@pytest.mark.parametrize("seen", [
    pytest.param(_seen(results=[_version(RESULT, "v1", True)],
                       reasons=[_version(REASON, "q1", True)]), id="result+reason"),
    pytest.param(_seen(results=[_version(RESULT, "v1", True)], dead=[_dlq()]),
                 id="result+dlq"),
    pytest.param(_seen(reasons=[_version(REASON, "q1", True)], dead=[_dlq()]),
                 id="reason+dlq"),
    pytest.param(_seen(dead=[_dlq(), _dlq("attempts_exhausted:storage_unavailable")]),
                 id="two-dlq"),
    pytest.param(_seen(dead=[_dlq(), _dlq(mid=None)]), id="two-dlq-second-by-ikey"),
    pytest.param(_seen(reasons=[_version(REASON, "q2", True), _version(REASON, "q1", False)]),
                 id="reason-overwritten"),
    pytest.param(_seen(reasons=[_version(REASON, "q1", True),
                                _version(REASON.replace("u_", "v_"), "q1", True)]),
                 id="two-reason-files"),
])
def test_a_second_outcome_fails(seen: Observed) -> None:
    v = _judge(seen, expect=("processed", "quarantined", "dead_lettered"))
    assert v.classes[IKEY] == "two_outcomes"
    assert v.counts["two_outcomes"] == 1 and not v.passed


@pytest.mark.parametrize("seen", [
    pytest.param(_seen(results=[_version(RESULT, "v2", True), _version(RESULT, "v1", False)]),
                 id="result-overwritten"),
    pytest.param(_seen(results=[_version(RESULT, "v1", True),
                                _version(RESULT.replace("/01/", "/02/"), "v1", True)]),
                 id="two-results"),
])
def test_two_results_are_duplicated(seen: Observed) -> None:
    v = _judge(seen)
    assert v.classes[IKEY] == "duplicated" and not v.passed


def test_nothing_is_lost() -> None:
    v = _judge(_seen())
    assert v.classes[IKEY] == "lost" and not v.passed


def test_evidence_deleted_with_nothing_in_its_place_is_lost() -> None:
    """A release that deletes the reason file before any new outcome exists (hole 4)."""
    v = _judge(_seen(reasons=[_version(REASON, "q1", False)],
                     deletes=[{"Key": REASON, "VersionId": "d1", "IsLatest": True}]),
               expect=("quarantined",))
    assert v.classes[IKEY] == "lost" and not v.passed


def test_a_result_with_another_inputs_content_is_bad() -> None:
    v = _judge(_seen(results=[_version(RESULT, "v1", True)], content={RESULT: None}))
    assert v.classes[IKEY] == "bad_result" and not v.passed


def test_a_stray_result_fails() -> None:
    v = _judge(_seen(results=[_version(RESULT, "v1", True),
                              _version("training/steps/2026/11/01/other.jsonl", "v1", True)]))
    assert v.classes[IKEY] == "processed"
    assert v.stray_results == ["training/steps/2026/11/01/other.jsonl"] and not v.passed


def test_a_conflicting_second_input_keeps_its_own_outcome() -> None:
    """Same idempotency key, another input: the result is the first's, the DLQ entry the
    second's (by message id), so neither has two outcomes."""
    first = Entry("first", IKEY, ("processed",), None, "first", [MID])
    second = Entry("second", IKEY, ("dead_lettered",), ("idempotency_key_conflict",),
                   "second", ["m-2"])
    seen = _seen(results=[_version(RESULT, "v1", True)],
                 dead=[_dlq("idempotency_key_conflict", mid="m-2")])
    v = verdict_of({"first": first, "second": second}, seen, queues={})
    assert v.classes == {"first": "processed", "second": "dead_lettered"} and v.passed
    assert v.mismatches == []


def test_an_unexpected_class_is_a_mismatch() -> None:
    v = _judge(_seen(dead=[_dlq()]), expect=("processed",))
    assert v.mismatches and "expected processed, got dead_lettered" in v.mismatches[0]


def test_queues_not_empty_fail() -> None:
    v = verdict_of(_entries(), _seen(results=[_version(RESULT, "v1", True)]),
                   queues={"work": (1, 0, 1)})
    assert v.classes[IKEY] == "processed" and not v.passed


def test_result_name_matches_the_workers_naming() -> None:
    """The ledger restates the name instead of importing it: the same answers."""
    from etl_engine.domain.lineage import record_id
    from etl_engine.domain.outcomes import key_name

    for ikey in (IKEY, "a/b", "x" * 201, "key=1.2_3-4", "é", "..", ".", "a.."):
        for lineage_key in (b"", b"k", b"test-lineage-key-123"):
            name = result_name(ikey, lineage_key)
            assert key_name(record_id(lineage_key, ikey)) == name


def test_artefacts_of_no_input_fail_the_run() -> None:
    """A reason file or DLQ entry that names no input of the scenario is an outcome the
    ledger cannot account for: the run fails, as for a stray result."""
    result = [_version(RESULT, "v1", True)]
    assert _judge(_seen(results=result)).passed
    v = _judge(_seen(results=result,
                     dead=[DeadLetter("m-nobody", "invalid_json", "k-nobody", 10, "")]))
    assert v.classes[IKEY] == "processed" and v.stray_dead == 1 and not v.passed
    nobody = {"reason": "not_avro", "message_id": "m-nobody", "idempotency_key": "k-nobody"}
    reason = _version("quarantine/StepsRecord/k-nobody/x.avro.reason.json", "r1", True)
    v = _judge(_seen(results=result, reasons=[reason],
                     docs={(reason["Key"], "r1"): nobody}))
    assert v.classes[IKEY] == "processed" and len(v.stray_reasons) == 1 and not v.passed


def test_the_ledger_functions_fit_a_screen() -> None:
    tree = ast.parse((Path(__file__).parent / "ledger.py").read_text())
    long = [n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno is not None and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_two_copies_of_one_dead_letter_outcome_are_one_outcome_two_reasons_are_two() -> None:
    """A DLQ confirm that timed out and then landed gives a second copy of the same outcome
    (same outcome id; for an unparseable message the same body and reason): counted apart,
    not a second outcome. Two different outcomes for one input still fail."""
    copy = DeadLetter(MID, "invalid_field", IKEY, 10, "o1:invalid_field")
    v = _judge(_seen(dead=[copy, copy]), expect=("dead_lettered",))
    assert v.classes[IKEY] == "dead_lettered" and v.repeated_dead == 1
    assert not v.passed  # unless the scenario holds confirms up and says so
    v.repeats_allowed = True
    assert v.passed
    other = DeadLetter(MID, "attempts_exhausted:io_error", IKEY, 10, "o2:attempts_exhausted")
    v = _judge(_seen(dead=[copy, other]), expect=("dead_lettered",))
    assert v.classes[IKEY] == "two_outcomes" and not v.passed
