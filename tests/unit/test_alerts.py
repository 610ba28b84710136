"""The chart's alerts (PrometheusRule) checked by the real promtool (built from the Go module proxy by
e2e/controlplane/build-tool.sh, cached): ``promtool check rules`` on the rendered rules, and ``promtool
test rules`` with series that fire each alert and series that must not. Every alert has its one-line
runbook in docs/observability.md. The rule objects are also checked against the real PrometheusRule CRD
(tests/e2e/test_chart.py, strict server-side dry run)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .test_chart import ALERTS, only, rendered

ROOT = Path(__file__).resolve().parents[2]
JOB = "aperag-operator-metrics"  # the metrics Service of the default release: the ServiceMonitor's job


@functools.cache
def promtool() -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "e2e" / "controlplane" / "build-tool.sh"), "promtool"],
        check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return Path(result.stdout.strip().splitlines()[-1])


def rule_groups() -> list[dict[str, Any]]:
    rule = only(rendered("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alert(name: str) -> dict[str, Any]:
    (found,) = [r for g in rule_groups() for r in g["rules"] if r.get("alert") == name]
    return found


def expected(name: str, /, **labels: str) -> dict[str, Any]:
    """An alert as promtool reports it: its labels, and its annotations with the labels filled in."""
    rule = alert(name)
    annotations = {
        k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
        for k, v in rule["annotations"].items()
    }
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def case(series: list[tuple[str, str]], *checks: tuple[str, str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": exp} for t, a, exp in checks],
    }


def suite_cases() -> list[dict[str, Any]]:
    rag = {"namespace": "team-a", "name": "rag"}
    stopped = 'aperag_operator_resource_upgrade_stopped{namespace="team-a",name="rag",phase="%s",operation="Upgrade",reason="%s"}'  # noqa: E501
    return [
        # The operator stops answering after 10 minutes: nothing for 5 more, then it fires; its series
        # vanishing entirely (no target at all) fires too.
        case([(f'up{{job="{JOB}",instance="10.0.0.5:8080"}}', "1x10 0x20")],
             ("10m", "ApeRAGOperatorDown", []), ("14m", "ApeRAGOperatorDown", []),
             ("20m", "ApeRAGOperatorDown", [expected("ApeRAGOperatorDown")])),
        case([(f'up{{job="{JOB}",instance="10.0.0.5:8080"}}', "1x5 _x20")],
             ("25m", "ApeRAGOperatorDown", [expected("ApeRAGOperatorDown")])),
        case([('up{job="something-else"}', "1x20")], ("15m", "ApeRAGOperatorDown", [expected("ApeRAGOperatorDown")])),
        # Errors every minute for 20 minutes fire after 15; a counter that stopped moving does not.
        case([('aperag_operator_reconciles_total{result="error"}', "0+1x30")],
             ("10m", "ApeRAGOperatorReconcileErrors", []),
             ("25m", "ApeRAGOperatorReconcileErrors", [expected("ApeRAGOperatorReconcileErrors")])),
        case([('aperag_operator_reconciles_total{result="error"}', "3x30"),
              ('aperag_operator_reconciles_total{result="success"}', "0+10x30")],
             ("25m", "ApeRAGOperatorReconcileErrors", [])),
        # Not Ready for 15 minutes fires; paused, or Ready, or not Ready for less does not.
        case([('aperag_operator_resource_ready{namespace="team-a",name="rag"}', "0x20"),
              ('aperag_operator_resource_paused{namespace="team-a",name="rag"}', "0x20"),
              ('aperag_operator_resource_ready{namespace="team-a",name="held"}', "0x20"),
              ('aperag_operator_resource_paused{namespace="team-a",name="held"}', "1x20"),
              ('aperag_operator_resource_ready{namespace="team-a",name="fine"}', "1x20"),
              ('aperag_operator_resource_ready{namespace="team-a",name="brief"}', "1x10 0x10")],
             ("10m", "ApeRAGNotReady", []),
             ("16m", "ApeRAGNotReady", [expected("ApeRAGNotReady", **rag)])),
        # A failed migration (rolled back or not) fires; an upgrade stopped for another reason does not.
        case([(stopped % ("Failed", "MigrationFailed"), "1x10")],
             ("5m", "ApeRAGMigrationFailed", [expected("ApeRAGMigrationFailed", **rag, phase="Failed",
                                                       operation="Upgrade", reason="MigrationFailed")]),
             ("5m", "ApeRAGRollbackFailed", [])),
        case([(stopped % ("Failed", "RolloutFailed"), "1x10")], ("5m", "ApeRAGMigrationFailed", [])),
        case([(stopped % ("RollbackFailed", "RollbackFailed"), "1x10")],
             ("5m", "ApeRAGRollbackFailed", [expected("ApeRAGRollbackFailed", **rag, phase="RollbackFailed",
                                                      operation="Upgrade", reason="RollbackFailed")]),
             ("5m", "ApeRAGMigrationFailed", [])),
        # A rollback shows for 30 minutes; counters that do not move never fire.
        case([('aperag_operator_rollbacks_total{trigger="automatic",outcome="succeeded"}', "0x5 1x60"),
              ('aperag_operator_rollbacks_total{trigger="manual",outcome="succeeded"}', "0x65")],
             ("4m", "ApeRAGRolledBack", []),
             ("10m", "ApeRAGRolledBack", [expected("ApeRAGRolledBack", trigger="automatic", outcome="succeeded")]),
             ("50m", "ApeRAGRolledBack", [])),
        # A key waiting two minutes for 10 minutes fires; short waits do not.
        case([("aperag_operator_workqueue_oldest_item_age_seconds", "120x15")],
             ("5m", "ApeRAGOperatorQueueBacklog", []),
             ("12m", "ApeRAGOperatorQueueBacklog", [expected("ApeRAGOperatorQueueBacklog")])),
        case([("aperag_operator_workqueue_oldest_item_age_seconds", "0 30 0 45 2 0 10 0 0 30 50 0 0 0 0")],
             ("14m", "ApeRAGOperatorQueueBacklog", [])),
    ]  # fmt: skip


def write_rules(folder: Path) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    result = subprocess.run([str(promtool()), "check", "rules", str(write_rules(tmp_path))],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_each_alert_fires_on_its_series_and_not_on_the_others(tmp_path: Path) -> None:
    write_rules(tmp_path)
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": suite_cases()}
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(suite, sort_keys=False, width=200))
    tested = {check["alertname"] for t in suite["tests"] for check in t["alert_rule_test"]}
    assert tested == set(ALERTS)
    result = subprocess.run([str(promtool()), "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The check can fail: a rule with a PromQL syntax error is refused."""
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(rate(x[5m])"}]}]}))
    result = subprocess.run([str(promtool()), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "parse error" in (result.stdout + result.stderr)


def test_every_alert_has_a_one_line_runbook_in_the_docs() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    for name in ALERTS:
        lines = [line for line in text.splitlines() if line.startswith(f"| `{name}`")]
        assert len(lines) == 1, f"docs/observability.md has no runbook row for {name}"
        assert alert(name)["annotations"]["runbook"] in lines[0].replace("\\|", "|")





def test_promtool_parses_every_query_of_the_dashboard(tmp_path: Path) -> None:
    """Each panel's PromQL as a recording rule: promtool's parser refuses any that does not parse."""
    from .test_observability import dashboard_queries

    values = {"$instance": "demo", "$operator_job": "aperag-operator-metrics"}
    rules = []
    for i, query in enumerate(dashboard_queries()):
        for variable, value in values.items():
            query = query.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([str(promtool()), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
