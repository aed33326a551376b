"""SLOs: the rules generated from deployment/slo/slos.yaml, their promtool unit tests, and
the metric that feeds freshness (docs/slo.md).

promtool (Debian package ``prometheus``) runs the unit tests of tests/promtool/ against the
compose rule files and against the Kubernetes PrometheusRules: each alert fires on
synthetic series that burn its budget (or raise its cause) and stays silent on series that
do not. Without promtool these tests skip, except under CI=true, where .ci/run installs it
and a missing binary fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_devtools import slo_rules
from etl_engine.domain.messages import HealthDataMessage
from etl_engine.domain.outcomes import OutcomeKind
from etl_engine.observability import metrics
from etl_engine.runtime.hooks import OutcomeObserver
from etl_engine.runtime.pipeline import Outcome

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
PROMETHEUS = ROOT / "deployment" / "prometheus"
BASE = ROOT / "deployment" / "kubernetes" / "base"


def _promtool(*args: str, cwd: Path | None = None) -> str:
    if not shutil.which("promtool"):
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _groups(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return doc["spec"]["groups"] if doc.get("kind") == "PrometheusRule" else doc["groups"]


def _alerts(groups: list[dict[str, Any]]) -> set[str]:
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def _beside(test_file: Path, tmp: Path, rules: dict[str, list[dict[str, Any]]]) -> Path:
    """``test_file`` in ``tmp`` with its rule files replaced by ``rules`` (name -> groups)."""
    test = yaml.safe_load(test_file.read_text())
    test["rule_files"] = list(rules)
    for name, groups in rules.items():
        (tmp / name).write_text(yaml.safe_dump({"groups": groups}))
    copy = tmp / test_file.name
    copy.write_text(yaml.safe_dump(test, sort_keys=False))
    return copy


# --- one source -------------------------------------------------------------------------------
def test_generated_rule_files_are_current() -> None:
    """Edit deployment/slo/slos.yaml, then: .venv/bin/python -m etl_devtools.slo_rules"""
    for path, text in slo_rules.render(ROOT).items():
        assert (ROOT / path).read_text() == text, (
            f"{path} is out of date: run .venv/bin/python -m etl_devtools.slo_rules")
    assert slo_rules.main(["--check", "--root", str(ROOT)]) == 0


def _aggregations(groups: list[dict[str, Any]]) -> list[str]:
    """Every ``sum``/``max`` aggregation in the recording rules, with what follows it."""
    return [m for g in groups for r in g["rules"] if "record" in r
            for m in re.findall(r"\b(?:sum|max)\b(?:\s*by\s*\([^)]*\))?\s*\(", r["expr"])]


def test_both_targets_carry_the_same_slo_rules() -> None:
    """The same rules, except that Kubernetes computes the workers' SLOs per namespace."""
    compose = _groups(PROMETHEUS / "slo-rules.yml")
    kubernetes = _groups(BASE / "prometheusrule-slo.yaml")
    spec = slo_rules.load(ROOT)
    assert compose == slo_rules.groups(spec, slo_rules.COMPOSE_BY)
    assert kubernetes == slo_rules.groups(spec, slo_rules.KUBERNETES_BY)
    assert [g["name"] for g in compose] == [g["name"] for g in kubernetes]
    for mine, theirs in zip(compose, kubernetes, strict=True):
        assert [r.get("record") or r["alert"] for r in mine["rules"]] == [
            r.get("record") or r["alert"] for r in theirs["rules"]]
        assert [r for r in mine["rules"] if "alert" in r] == [
            r for r in theirs["rules"] if "alert" in r], "the alerts are the same"
    assert all(a in ("sum(", "max(") for a in _aggregations(compose))
    per_namespace = [r for g in kubernetes for r in g["rules"]
                     if "record" in r and "etl_" in r["expr"] and "availability" not in
                     r["record"]]
    assert per_namespace
    for rule in per_namespace:  # freshness and correctness: every aggregation, per namespace
        found = _aggregations([{"rules": [rule]}])
        assert found and all(a == "sum by (namespace) (" for a in found), rule["record"]
        assert "vector(0)" not in rule["expr"], "a label-less 0 matches no namespace"
    # availability joins RabbitMQ's series, whose namespace is the broker's: fleet-wide
    bad = next(r for g in kubernetes for r in g["rules"]
               if r.get("record") == "etl:slo_availability:bad")
    assert "by (namespace)" not in bad["expr"]
    assert "slo-rules.yml" in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())[
        "rule_files"]
    assert "prometheusrule-slo.yaml" in yaml.safe_load(
        (BASE / "kustomization.yaml").read_text())["resources"]
    spec = slo_rules.load(ROOT)
    for slo in spec["slos"]:
        recorded = {r.get("record") for g in compose for r in g["rules"]}
        for window in (*slo_rules.WINDOWS, spec["period"]):
            assert f"etl:slo_{slo['name']}:error_ratio_rate{window}" in recorded
        assert f"etl:slo_{slo['name']}:error_budget_remaining" in recorded


def test_burn_rate_alerts_follow_the_workbook() -> None:
    """1 h / 5 m at 14.4x pages, 6 h / 30 m at 6x tickets; the threshold is factor x budget."""
    spec = slo_rules.load(ROOT)
    pairs = {(b["long"], b["short"], b["factor"], b["severity"]) for b in spec["burn_rates"]}
    assert pairs == {("1h", "5m", 14.4, "critical"), ("6h", "30m", 6, "warning")}
    objectives = {s["name"]: s["objective"] for s in spec["slos"]}
    assert objectives == {"freshness": 0.99, "correctness": 0.999, "availability": 0.995}
    alert = slo_rules.burn_alert(spec, spec["slos"][0], spec["burn_rates"][0])
    assert alert["expr"] == ("etl:slo_freshness:error_ratio_rate1h > 14.4 * (1 - 0.99)\nand\n"
                             "etl:slo_freshness:error_ratio_rate5m > 14.4 * (1 - 0.99)")
    # each alert links its runbook: the SLO's anchor in docs/slo.md
    doc = (ROOT / "docs" / "slo.md").read_text()
    for slo in spec["slos"]:
        page, _, anchor = slo["runbook"].partition("#")
        assert page == "docs/slo.md" and anchor == f"runbook-{slo['name']}"
        assert f'<a id="{anchor}"></a>' in doc, anchor
    links = {r["annotations"]["runbook"] for g in slo_rules.groups(spec)
             for r in g["rules"] if "alert" in r}
    assert links == {s["runbook"] for s in spec["slos"]}


# --- promtool ---------------------------------------------------------------------------------
def test_rule_files_pass_promtool_check(tmp_path: Path) -> None:
    _promtool("check", "rules", str(PROMETHEUS / "slo-rules.yml"),
              str(PROMETHEUS / "alerts.yml"))
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": _groups(BASE / "prometheusrule-slo.yaml")}))
    _promtool("check", "rules", str(extracted))


def test_promtool_unit_tests_of_the_compose_rules() -> None:
    out = _promtool("test", "rules", "slo.test.yml", "compose-alerts.test.yml",
                    cwd=PROMTOOL_TESTS)
    assert "SUCCESS" in out


def test_promtool_unit_tests_of_the_kubernetes_rules(tmp_path: Path) -> None:
    slo_groups = {"prometheusrule-slo.rules.yml": _groups(BASE / "prometheusrule-slo.yaml")}
    slo = _beside(PROMTOOL_TESTS / "slo.test.yml", tmp_path, slo_groups)
    per_namespace = _beside(PROMTOOL_TESTS / "kubernetes-slo.test.yml", tmp_path, slo_groups)
    causes = _beside(PROMTOOL_TESTS / "kubernetes-alerts.test.yml", tmp_path,
                     {"prometheusrule.rules.yml": _groups(BASE / "prometheusrule.yaml")})
    assert "SUCCESS" in _promtool("test", "rules", slo.name, per_namespace.name, causes.name,
                                  cwd=tmp_path)


@pytest.mark.parametrize("rules, tests", [
    ([PROMETHEUS / "slo-rules.yml", PROMETHEUS / "alerts.yml"],
     ["slo.test.yml", "compose-alerts.test.yml"]),
    ([BASE / "prometheusrule-slo.yaml", BASE / "prometheusrule.yaml"],
     ["slo.test.yml", "kubernetes-slo.test.yml", "kubernetes-alerts.test.yml"]),
], ids=["compose", "kubernetes"])
def test_every_alert_has_a_firing_and_a_silent_case(rules: list[Path], tests: list[str]
                                                    ) -> None:
    alerts = set().union(*(_alerts(_groups(path)) for path in rules))
    firing: set[str] = set()
    silent: set[str] = set()
    for name in tests:
        for case in yaml.safe_load((PROMTOOL_TESTS / name).read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert alerts - firing == set(), f"no firing case: {sorted(alerts - firing)}"
    assert alerts - silent == set(), f"no silent case: {sorted(alerts - silent)}"
    assert (firing | silent) <= alerts, f"tests of unknown alerts: {(firing | silent) - alerts}"


def test_ci_requires_promtool() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in script and "prometheus" in script
    assert 'command -v promtool' in script and "exit 1" in script


# --- the freshness metric ----------------------------------------------------------------------
def _message(sent: datetime | None) -> HealthDataMessage:
    return HealthDataMessage(idempotency_key="k1", bucket="b", key="raw/x",
                             record_type="StepsRecord", user_id="u1", correlation_id="c1",
                             upload_timestamp_utc=sent)


def _observed(outcome: str) -> tuple[float, float, float]:
    """(count, sum, observations in the first bucket <= 1 s) so far."""
    labels = {"outcome": outcome}
    get = metrics.REGISTRY.get_sample_value
    return (get("etl_publish_to_settle_seconds_count", labels) or 0.0,
            get("etl_publish_to_settle_seconds_sum", labels) or 0.0,
            get("etl_publish_to_settle_seconds_bucket", {**labels, "le": "1.0"}) or 0.0)


def test_freshness_is_observed_once_per_upload_from_its_timestamp() -> None:
    observer = OutcomeObserver()
    now = datetime.now(UTC)
    count, total, fast = _observed("processed")
    observer.settled(Outcome(OutcomeKind.PROCESSED, message=_message(now - timedelta(seconds=30))),
                     0.01)
    c, s, f = _observed("processed")
    assert c == count + 1 and 29 < s - total < 40 and f == fast

    # a publisher's clock ahead of ours: 0, never negative
    observer.settled(Outcome(OutcomeKind.PROCESSED, message=_message(now + timedelta(hours=1))),
                     0.01)
    c2, s2, f2 = _observed("processed")
    assert c2 == c + 1 and s2 == s and f2 == f + 1

    # an offset-less timestamp is UTC (the field's name says so)
    naive = (now - timedelta(seconds=120)).replace(tzinfo=None)
    observer.settled(Outcome(OutcomeKind.PROCESSED, message=_message(naive)), 0.01)
    assert 119 < _observed("processed")[1] - s2 < 130

    before = _observed("processed")[0]
    for outcome in (
        Outcome(OutcomeKind.DUPLICATE, message=_message(now)),  # the input settled before
        Outcome(OutcomeKind.RETRY, message=_message(now)),  # not settled yet
        Outcome(OutcomeKind.PROCESSED, message=_message(now), operator_copy=True),  # replay
        Outcome(OutcomeKind.PROCESSED, message=_message(None)),  # no timestamp
        Outcome(OutcomeKind.DEAD_LETTER, reason="invalid_json", stage="parse"),  # rejected
    ):
        observer.settled(outcome, 0.01)
    assert _observed("processed")[0] == before

    q, dl = _observed("quarantined")[0], _observed("dead_lettered")[0]
    observer.settled(Outcome(OutcomeKind.QUARANTINED, reason="not_avro",
                             message=_message(now)), 0.01)
    observer.settled(Outcome(OutcomeKind.DEAD_LETTER, reason="attempts_exhausted:x",
                             message=_message(now)), 0.01)
    assert _observed("quarantined")[0] == q + 1 and _observed("dead_lettered")[0] == dl + 1


def test_sixty_seconds_is_a_bucket_bound() -> None:
    """The freshness SLI reads the le="60.0" bucket."""
    assert 60 in metrics.PUBLISH_TO_SETTLE._upper_bounds
    assert 'le="60.0"' in slo_rules.load(ROOT)["slos"][0]["errors"]
