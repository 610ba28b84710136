"""The databases contributor: gate verdicts, Clusters as children, env and status, all from what the
cache holds (the Clusters, whether KubeBlocks is served, the key names of the account Secrets)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aperag_operator.cache import KindState
from aperag_operator.contributors.base import Context
from aperag_operator.contributors.databases import DatabasesContributor, gate_problems
from aperag_operator.databases import evaluate_databases
from aperag_operator.kinds import KUBEBLOCKS_CLUSTER
from aperag_operator.status import compute_status

from .helpers import instance
from .observed import StaticObserved


def running(name: str, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation},
        "status": {"phase": "Running", "observedGeneration": generation},
    }


ACCOUNTS = {
    "demo-pg-postgresql-account-postgres": {"username", "password"},
    "demo-redis-redis-account-default": {"username", "password"},
}


def evaluation(clusters: dict[str, Any], secrets: dict[str, set[str]] | None = None, installed: bool = True) -> Any:
    inst = instance()
    return evaluate_databases(
        inst.name, inst.spec.databases, clusters, ACCOUNTS if secrets is None else secrets, installed
    )


def contribute(observed: StaticObserved, spec: dict[str, Any] | None = None) -> Any:
    context = Context(
        instance=instance(spec), annotations={}, status={}, paused=False, observed=observed,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return DatabasesContributor().contribute(context, {})


def test_ready_databases_open_the_gate() -> None:
    ev = evaluation({"demo-pg": running("demo-pg"), "demo-redis": running("demo-redis")})
    assert ev.ready and gate_problems(ev) == ()


def test_creating_databases_are_an_expected_wait() -> None:
    (problem,) = gate_problems(evaluation({}))
    assert problem.blocks_workloads and not problem.degraded
    assert problem.reason == "ClustersNotReady"


def test_abnormal_cluster_degrades_with_its_message() -> None:
    abnormal = {"metadata": {"generation": 1}, "status": {"phase": "Abnormal", "message": "disk full"}}
    (problem,) = gate_problems(evaluation({"demo-pg": abnormal, "demo-redis": running("demo-redis")}))
    assert problem.degraded and problem.blocks_workloads
    assert problem.reason == "ClusterAbnormal" and "disk full" in problem.message


def test_without_kubeblocks_no_cluster_is_wanted_and_the_resource_degrades() -> None:
    observed = StaticObserved(states={KUBEBLOCKS_CLUSTER.type_path: KindState.NOT_INSTALLED})
    result = contribute(observed)
    assert [p.reason for p in result.problems] == ["KubeBlocksNotInstalled"]
    assert result.children == ()  # no Cluster is applied without the CRD
    assert result.conditions[0]["reason"] == "KubeBlocksNotInstalled"


def test_clusters_forbidden_by_rbac_is_said_plainly() -> None:
    observed = StaticObserved(states={KUBEBLOCKS_CLUSTER.type_path: KindState.FORBIDDEN})
    result = contribute(observed)
    assert result.problems[0].reason == "ClustersNotVisible"
    assert "clusters.apps.kubeblocks.io" in result.problems[0].message


def test_running_clusters_and_their_secrets_open_the_gate() -> None:
    observed = StaticObserved().add(KUBEBLOCKS_CLUSTER, running("demo-pg"), running("demo-redis"))
    observed.with_secrets(ACCOUNTS)
    result = contribute(observed)
    assert result.problems == ()
    assert [c["metadata"]["name"] for c in result.children] == ["demo-pg", "demo-redis"]
    assert all("aperag.io/spec-hash" in c["metadata"]["annotations"] for c in result.children)
    assert "ownerReferences" not in result.children[0]["metadata"]  # Retain
    names = {var["name"] for var in result.env}
    assert {"POSTGRES_HOST", "POSTGRES_PASSWORD", "REDIS_HOST", "FULLTEXT_TYPE"} <= names
    assert DatabasesContributor().secret_names(instance()) == frozenset(ACCOUNTS)
    assert [db["name"] for db in result.status["databases"]] == ["postgresql", "redis"]


def test_a_missing_account_secret_is_a_wait() -> None:
    observed = StaticObserved().add(KUBEBLOCKS_CLUSTER, running("demo-pg"), running("demo-redis"))
    result = contribute(observed)
    (problem,) = result.problems
    assert problem.reason == "SecretMissing" and not problem.degraded and problem.blocks_workloads


def test_database_condition_is_merged_and_keeps_its_transition_time() -> None:
    observed = StaticObserved().add(KUBEBLOCKS_CLUSTER, running("demo-pg"), running("demo-redis"))
    result = contribute(observed.with_secrets(ACCOUNTS))
    extra = {**result.status, "conditions": list(result.conditions)}
    first = compute_status(
        generation=1, version="0.5.0", previous=None, components={}, problems=[], paused=False,
        now="2026-01-01T00:00:00Z", extra=extra,
    )  # fmt: skip
    types = [c["type"] for c in first["conditions"]]
    assert types == ["Ready", "Progressing", "Degraded", "Paused", "DatabasesReady"]
    again = compute_status(
        generation=1, version="0.5.0", previous=first, components={}, problems=[], paused=False,
        now="2026-02-02T00:00:00Z", extra=extra,
    )  # fmt: skip
    assert again == first  # no churn
