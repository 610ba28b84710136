"""Observability, pure parts: Argo CD's health scripts on their testdata, the upgrade facts the metrics
count, the operator's /metrics text, and what spec.observability.metrics asks of the cluster."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aperag_operator.builders import metrics as metrics_builder
from aperag_operator.builders import network_policy
from aperag_operator.cache import KindState
from aperag_operator.contributors.base import Context
from aperag_operator.contributors.observability import SERVICE_MONITOR, ObservabilityContributor
from aperag_operator.metrics import OperatorMetrics
from aperag_operator.upgrade.facts import Facts, MigrationRun, Rollback, facts, finished_operations
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import argocd

from .helpers import instance
from .observed import StaticObserved

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)


# --- Argo CD health checks ------------------------------------------------------------------------------


CASES = [(group, kind, case) for group, kind in argocd.kinds() for case in argocd.test_cases(group, kind)]


def test_health_scripts_exist_for_the_aperag_and_kubeblocks_kinds() -> None:
    assert argocd.kinds() == [("aperag.io", "ApeRAG"), ("apps.kubeblocks.io", "Cluster")]


@pytest.mark.parametrize(
    ("group", "kind", "case"), CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for _, k, c in CASES]
)
def test_health_script_gives_each_testdata_object_its_expected_health(group: str, kind: str, case: Any) -> None:
    """As Argo CD's own resource_customizations tests do: every case of health_test.yaml."""
    obj = yaml.safe_load((argocd.script_path(group, kind).parent / case["inputPath"]).read_text())
    assert argocd.health(group, kind, obj) == case["healthStatus"]


def test_every_testdata_file_is_a_case_and_every_health_status_is_covered() -> None:
    for group, kind in argocd.kinds():
        folder = argocd.script_path(group, kind).parent
        cases = argocd.test_cases(group, kind)
        assert sorted(c["inputPath"] for c in cases) == sorted(f"testdata/{p.name}" for p in folder.glob("testdata/*"))
        assert {c["healthStatus"]["status"] for c in cases} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_a_resource_the_operator_never_saw_is_progressing() -> None:
    fresh = {"apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": "x", "generation": 1}}
    assert argocd.health("aperag.io", "ApeRAG", fresh)["status"] == "Progressing"
    cluster = {"apiVersion": "apps.kubeblocks.io/v1", "kind": "Cluster", "metadata": {"name": "x", "generation": 1}}
    assert argocd.health("apps.kubeblocks.io", "Cluster", cluster)["status"] == "Progressing"


def test_an_upgrade_under_way_is_progressing_even_when_degraded_was_left_over() -> None:
    healthy = yaml.safe_load((argocd.script_path("aperag.io", "ApeRAG").parent / "testdata/healthy.yaml").read_text())
    healthy["status"]["upgrade"]["phase"] = "RollingBack"
    healthy["status"]["upgrade"]["operation"] = "Rollback"
    for c in healthy["status"]["conditions"]:
        if c["type"] == "Degraded":
            c["status"] = "True"
    got = argocd.health("aperag.io", "ApeRAG", healthy)
    assert got["status"] == "Progressing" and got["message"].startswith("Rollback to 0.5.0: RollingBack")


def test_scripts_need_nothing_argo_cd_does_not_give_them() -> None:
    """Lua 5.1 (gopher-lua) with the base, table and string libraries: no io, os, require or goto."""
    for group, kind in argocd.kinds():
        text = argocd.script_path(group, kind).read_text()
        assert not re.search(r"\b(io|os|debug|package)\.|\brequire\b|\bgoto\b|\bload(string)?\(", text), group


def test_the_argocd_cm_snippet_holds_the_scripts_as_they_are() -> None:
    expected = argocd.argocd_cm()
    if os.environ.get("UPDATE_ARGOCD_CM"):
        argocd.CM_FILE.write_text(expected)
    assert argocd.CM_FILE.read_text() == expected, "docs/argocd/argocd-cm.yaml is stale: UPDATE_ARGOCD_CM=1"
    data = yaml.safe_load(expected)["data"]
    for group, kind in argocd.kinds():
        assert data[f"resource.customizations.health.{group}_{kind}"] == argocd.script_path(group, kind).read_text()


# --- upgrade facts ---------------------------------------------------------------------------------------


def upgrade(phase: str, job: str | None = "rag-migrate-1", operation: str = "Upgrade") -> dict[str, Any]:
    return {"upgrade": {"phase": phase, "job": job, "operation": operation, "stepStartedAt": "2026-01-01T12:00:00Z"}}


def test_a_migration_that_ended_is_counted_with_its_duration_and_outcome() -> None:
    done = facts(upgrade("Migrating"), upgrade("RollingOut", None), {"MigrationSucceeded", "RollingOut"}, NOW)
    assert done.migrations == (MigrationRun("upgrade", "succeeded", 30.0),)
    failed = facts(upgrade("Migrating"), upgrade("Downgrading", "rag-migrate-2"), {"MigrationFailed"}, NOW)
    assert failed.migrations == (MigrationRun("upgrade", "failed", 30.0),)
    downgraded = facts(upgrade("Downgrading"), upgrade("Failed", None), {"DowngradeSucceeded", "RolledBack"}, NOW)
    assert downgraded.migrations == (MigrationRun("downgrade", "succeeded", 30.0),)
    assert downgraded.rollbacks == (Rollback("automatic", "succeeded"),)


def test_nothing_is_counted_while_a_step_runs_or_when_nothing_changed() -> None:
    assert facts(upgrade("Migrating"), upgrade("Migrating"), set(), NOW) == Facts()
    assert facts(upgrade("Complete", None), upgrade("Complete", None), set(), NOW) == Facts()
    assert facts(None, {}, set(), NOW) == Facts()


def test_rollbacks_by_trigger() -> None:
    manual = facts(upgrade("Downgrading", operation="Rollback"), upgrade("Complete", None, "Rollback"),
                   {"DowngradeSucceeded", "RollbackSucceeded"}, NOW)  # fmt: skip
    assert manual.rollbacks == (Rollback("manual", "succeeded"),)
    failed = facts(upgrade("RollingBack", None), upgrade("RollbackFailed", None), {"RollbackFailed"}, NOW)
    assert failed.rollbacks == (Rollback("automatic", "failed"),)


def test_finished_operations_are_the_new_history_entries() -> None:
    first = {"version": "0.5.0", "operation": "Install", "outcome": "Succeeded", "finishedAt": "t1"}
    second = {"version": "0.6.0", "operation": "Upgrade", "outcome": "Failed", "finishedAt": "t2"}
    third = {"version": "0.6.0", "operation": "Upgrade", "outcome": "Succeeded", "finishedAt": "t3"}
    assert [(f.operation, f.outcome) for f in finished_operations({"history": [first]}, {"history": [first, second]})]\
        == [("Upgrade", "Failed")]  # fmt: skip
    # trimmed at the old end: only the appended entry is new
    assert len(finished_operations({"history": [first, second]}, {"history": [second, third]})) == 1
    assert finished_operations({"history": [first]}, {"history": [first]}) == ()


# --- the operator's /metrics --------------------------------------------------------------------------------


class FakeEngine:
    workers = 4

    def __init__(self, resources: list[dict[str, Any]], last: Mapping[tuple[str, str], float]) -> None:
        self._resources, self._last = resources, last

    def queue_depth(self) -> int:
        return 3

    def queue_oldest_age(self) -> float:
        return 7.5

    def busy_workers(self) -> int:
        return 2

    def resources(self) -> Iterable[dict[str, Any]]:
        return self._resources

    def last_success(self) -> Mapping[tuple[str, str], float]:
        return self._last


def aperag(name: str, phase: str | None, ready: bool, degraded: str = "", paused: bool = False,
           upgrade: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    conditions = [
        {"type": "Ready", "status": str(ready)},
        {"type": "Degraded", "status": str(bool(degraded)), "reason": degraded or "AsExpected"},
        {"type": "Paused", "status": str(paused)},
    ]
    status: dict[str, Any] = {"conditions": conditions, **({"phase": phase} if phase else {})}
    if upgrade:
        status["upgrade"] = upgrade
    return {"metadata": {"namespace": "team-a", "name": name}, "status": status}


def samples(m: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_metrics_expose_the_engine_and_every_resource() -> None:
    import time

    m = OperatorMetrics()
    resources = [
        aperag("a", "Ready", True),
        aperag("b", "Degraded", False, degraded="MigrationFailed",
               upgrade={"phase": "Failed", "operation": "Upgrade", "reason": "MigrationFailed"}),
        aperag("c", None, False),
        aperag("d", "Paused", True, paused=True),
    ]
    m.bind(FakeEngine(resources, {("team-a", "a"): time.time() - 42}))
    m.reconciled("success", 0.2)
    m.reconciled("error", 1.5)
    m.apply_failed("ConfigMap", "ServerError")
    m.record(Facts(migrations=(MigrationRun("upgrade", "failed", 12.0),),
                   rollbacks=(Rollback("automatic", "succeeded"),)))  # fmt: skip
    got = samples(m)
    assert got[("aperag_operator_workqueue_depth", ())] == 3
    assert got[("aperag_operator_workqueue_oldest_item_age_seconds", ())] == 7.5
    assert got[("aperag_operator_workers_busy", ())] == 2 and got[("aperag_operator_workers", ())] == 4
    assert got[("aperag_operator_resources", (("phase", "Ready"),))] == 1
    assert got[("aperag_operator_resources", (("phase", "Pending"),))] == 1  # no status yet
    assert got[("aperag_operator_resources", (("phase", "Migrating"),))] == 0  # always there
    assert got[("aperag_operator_resource_ready", (("name", "a"), ("namespace", "team-a")))] == 1
    assert got[("aperag_operator_resource_ready", (("name", "b"), ("namespace", "team-a")))] == 0
    assert got[("aperag_operator_resource_degraded", (("name", "b"), ("namespace", "team-a"), ("reason", "MigrationFailed")))] == 1  # noqa: E501
    assert got[("aperag_operator_resource_paused", (("name", "d"), ("namespace", "team-a")))] == 1
    stopped = (("name", "b"), ("namespace", "team-a"), ("operation", "Upgrade"), ("phase", "Failed"),
               ("reason", "MigrationFailed"))  # fmt: skip
    assert got[("aperag_operator_resource_upgrade_stopped", stopped)] == 1
    assert 41 <= got[("aperag_operator_seconds_since_last_successful_reconcile", (("name", "a"), ("namespace", "team-a")))] < 60  # noqa: E501
    assert not any(k[0] == "aperag_operator_seconds_since_last_successful_reconcile" and ("name", "b") in k[1]
                   for k in got)  # fmt: skip
    assert got[("aperag_operator_reconciles_total", (("result", "error"),))] == 1
    assert got[("aperag_operator_reconcile_duration_seconds_count", (("result", "success"),))] == 1
    assert got[("aperag_operator_apply_errors_total", (("kind", "ConfigMap"), ("reason", "ServerError")))] == 1
    assert got[("aperag_operator_migration_duration_seconds_sum", (("action", "upgrade"), ("outcome", "failed")))] == 12
    assert got[("aperag_operator_rollbacks_total", (("outcome", "succeeded"), ("trigger", "automatic")))] == 1
    # Counters exist at 0 before their first event (an alert's increase() sees the first one).
    assert got[("aperag_operator_rollbacks_total", (("outcome", "failed"), ("trigger", "manual")))] == 0
    assert got[("aperag_operator_upgrades_total", (("operation", "Rollback"), ("outcome", "RollbackFailed")))] == 0
    assert ("process_resident_memory_bytes", ()) in got


# --- spec.observability.metrics ------------------------------------------------------------------------------


def contribute(spec: dict[str, Any], state: KindState) -> Any:
    inst = instance(spec)
    observed = StaticObserved(states={SERVICE_MONITOR.type_path: state})
    context = Context(instance=inst, annotations={}, status={}, paused=False, observed=observed, now=NOW)
    return ObservabilityContributor().contribute(context, {})


def test_a_service_monitor_when_its_crd_is_served_else_scrape_annotations() -> None:
    served = contribute({}, KindState.LISTED)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in served.children]
    assert kinds == [("Service", "demo-api-metrics"), ("Service", "demo-worker-metrics"), ("ServiceMonitor", "demo")]
    assert all("prometheus.io/scrape" not in o["metadata"]["annotations"] for o in served.children)
    assert served.status == {"observability": {"metrics": "ServiceMonitor"}}
    monitor = served.children[-1]
    for service in served.children[:-1]:
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["name"] == "http"
    annotated = contribute({}, KindState.NOT_INSTALLED)
    assert [o["kind"] for o in annotated.children] == ["Service", "Service"]
    ports = [o["metadata"]["annotations"]["prometheus.io/port"] for o in annotated.children]
    assert ports == ["8000", "8001"]  # the api's port and the worker's health server
    assert annotated.status == {"observability": {"metrics": "Annotations"}}
    # Pod templates are never touched: the same Deployments either way.
    assert contribute({}, KindState.FORBIDDEN).children == annotated.children


def test_metrics_off_and_service_monitor_settings() -> None:
    assert contribute({"observability": {"metrics": {"enabled": False}}}, KindState.LISTED).children == ()
    labelled = contribute({"observability": {"metrics": {"serviceMonitorLabels": {"release": "prom"},
                                                          "interval": "15s"}}}, KindState.LISTED)  # fmt: skip
    monitor = labelled.children[-1]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_the_network_policy_lets_the_scraper_reach_the_metrics_ports_only() -> None:
    scraper = {"metrics": {"scraperNamespaceLabels": {"team": "obs"}}}
    spec = {"networkPolicy": {"enabled": True}, "observability": scraper}
    rules = network_policy.build_app(instance(spec))["spec"]["ingress"]
    assert rules[1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
        "ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8001}],
    }
    assert sorted(metrics_builder.PORTS.values()) == [8000, 8001]
    off = {"networkPolicy": {"enabled": True}, "observability": {"metrics": {"enabled": False}}}
    assert len(network_policy.build_app(instance(off))["spec"]["ingress"]) == 1


# --- the Grafana dashboard ------------------------------------------------------------------------------------

DASHBOARD = ROOT / "docs" / "observability" / "grafana-dashboard.json"


def dashboard_queries() -> list[str]:
    import json

    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def exposed_names() -> set[str]:
    """Every sample name the operator's and the app's /metrics expose (from the registries they serve)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    from aperag import metrics as app_metrics  # noqa: F401  (registers the app's metrics)
    from aperag.api.app import _QueueDepthCollector

    operator = OperatorMetrics()
    operator.bind(FakeEngine([aperag("a", "Ready", True)], {}))
    app = CollectorRegistry()
    app.register(_QueueDepthCollector(type("Ctx", (), {"dispatcher": None})()))  # type: ignore[arg-type]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                "summary": ("_count", "_sum")}  # fmt: skip
    names: set[str] = set()
    for registry in (operator.registry, REGISTRY, app):
        for family in registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
            names |= {s.name for s in family.samples}
    return names


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    queries = dashboard_queries()
    used = {m for q in queries for m in re.findall(r"\b((?:aperag|process)_[a-z0-9_]+)\b", q)}
    assert len(used) >= 25
    missing = used - exposed_names()
    assert not missing, f"the dashboard queries metrics nothing exposes: {sorted(missing)}"
    # and it shows what the issue asks for: operator and app panels
    for wanted in ("aperag_operator_reconciles_total", "aperag_operator_workqueue_depth", "aperag_operator_resources",
                   "aperag_http_request_duration_seconds_bucket", "aperag_ingestion_tasks_total",
                   "aperag_embedding_duration_seconds_bucket", "aperag_search_duration_seconds_bucket",
                   "aperag_ingestion_queue_depth"):  # fmt: skip
        assert wanted in used, wanted
