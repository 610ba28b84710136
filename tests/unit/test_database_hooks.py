"""The databases wired into the reconcile: gate verdicts, status, Clusters as extra children, and the
DatabasesReady condition merged into the status without churn."""

from __future__ import annotations

from typing import Any

from aperag_operator.database_hooks import (
    DatabaseHooks,
    database_status,
    gate_problems,
    secret_key_names,
)
from aperag_operator.databases import evaluate_databases
from aperag_operator.status import compute_status
from lightkube import ApiError

from .helpers import instance


def running(generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {"phase": "Running", "observedGeneration": generation}}


ACCOUNTS = {
    "demo-pg-postgresql-account-postgres": {"username", "password"},
    "demo-redis-redis-account-default": {"username", "password"},
}


def evaluation(clusters: dict[str, Any], secrets: dict[str, set[str]] | None = None, installed: bool = True) -> Any:
    inst = instance()
    return evaluate_databases(
        inst.name, inst.spec.databases, clusters, ACCOUNTS if secrets is None else secrets, installed
    )


def test_ready_databases_open_the_gate() -> None:
    ev = evaluation({"demo-pg": running(), "demo-redis": running()})
    assert ev.ready and gate_problems(ev) == []


def test_creating_databases_are_an_expected_wait() -> None:
    (problem,) = gate_problems(evaluation({}))
    assert problem.blocks_workloads and not problem.degraded
    assert problem.reason == "ClustersNotReady"


def test_abnormal_cluster_degrades_with_its_message() -> None:
    abnormal = {"metadata": {"generation": 1}, "status": {"phase": "Abnormal", "message": "disk full"}}
    (problem,) = gate_problems(evaluation({"demo-pg": abnormal, "demo-redis": running()}))
    assert problem.degraded and problem.blocks_workloads
    assert problem.reason == "ClusterAbnormal" and "disk full" in problem.message


def test_kubeblocks_missing_degrades() -> None:
    (problem,) = gate_problems(evaluation({}, installed=False))
    assert problem.degraded and problem.reason == "KubeBlocksNotInstalled"


def test_status_has_databases_and_condition_without_secret_values() -> None:
    ev = evaluation({"demo-pg": running(), "demo-redis": running()})
    extra = database_status(ev)
    assert [db["name"] for db in extra["databases"]] == ["postgresql", "redis"]
    assert extra["conditions"][0]["type"] == "DatabasesReady"
    assert database_status(None) == {}


def test_extra_condition_is_merged_and_keeps_its_transition_time() -> None:
    ev = evaluation({"demo-pg": running(), "demo-redis": running()})
    first = compute_status(
        generation=1, version="0.5.0", previous=None, components={}, problems=[], paused=False,
        now="2026-01-01T00:00:00Z", extra=database_status(ev),
    )  # fmt: skip
    types = [c["type"] for c in first["conditions"]]
    assert types == ["Ready", "Progressing", "Degraded", "Paused", "DatabasesReady"]
    again = compute_status(
        generation=1, version="0.5.0", previous=first, components={}, problems=[], paused=False,
        now="2026-02-02T00:00:00Z", extra=database_status(ev),
    )  # fmt: skip
    assert again == first  # no churn
    assert first["databases"] == ev.status_databases


def test_secret_key_names_drops_values() -> None:
    names = secret_key_names({"data": {"password": "c2VjcmV0"}, "stringData": {"username": "u"}})
    assert names == {"password", "username"}


class FakeClient:
    """Answers GETs: the CRD and Clusters from dicts, 404 otherwise."""

    def __init__(self, objects: dict[str, dict[str, Any]], crd: bool = True) -> None:
        self.objects = objects
        self.crd = crd
        self.gets: list[str] = []

    async def get(self, cls: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.gets.append(f"{cls.__name__}/{name}")
        if cls.__name__ == "CustomResourceDefinition" and self.crd:
            return {"metadata": {"name": name}}
        if name in self.objects:
            return self.objects[name]
        raise ApiError(status=_status(404))  # type: ignore[no-untyped-call]


def _status(code: int) -> Any:
    from lightkube.models.meta_v1 import Status

    return Status(code=code, message="not found")


async def test_hooks_end_to_end_without_kubeblocks() -> None:
    client = FakeClient({}, crd=False)
    hooks = DatabaseHooks(client)  # type: ignore[arg-type]
    inst = instance()
    problems = await hooks.gates(inst, lambda _k: None)
    assert [p.reason for p in problems] == ["KubeBlocksNotInstalled"]
    assert hooks.extra_children(inst) == []  # no Cluster is applied without the CRD
    assert hooks.extra_status(inst, lambda _k: None)["conditions"][0]["reason"] == "KubeBlocksNotInstalled"


async def test_hooks_build_clusters_and_env() -> None:
    secrets = {name: {"data": {"username": "dQ==", "password": "cA=="}} for name in ACCOUNTS}
    client = FakeClient({"demo-pg": running(), "demo-redis": running(), **secrets})
    put: list[dict[str, Any]] = []
    hooks = DatabaseHooks(client, put.append)  # type: ignore[arg-type]
    inst = instance()
    assert await hooks.gates(inst, lambda _k: None) == []
    clusters = hooks.extra_children(inst)
    assert [c["metadata"]["name"] for c in clusters] == ["demo-pg", "demo-redis"]
    assert all("aperag.io/spec-hash" in c["metadata"]["annotations"] for c in clusters)
    assert "ownerReferences" not in clusters[0]["metadata"]  # Retain
    assert len(put) == 2  # the Clusters read went into the controller's cache
    names = {var["name"] for var in hooks.database_env(inst)}
    assert {"POSTGRES_HOST", "POSTGRES_PASSWORD", "REDIS_HOST", "FULLTEXT_TYPE"} <= names
    assert set(hooks.secret_names(inst)) == set(ACCOUNTS)
    # The CRD answer is remembered: a second reconcile does not ask again.
    await hooks.gates(inst, lambda _k: None)
    assert client.gets.count("CustomResourceDefinition/clusters.apps.kubeblocks.io") == 1
