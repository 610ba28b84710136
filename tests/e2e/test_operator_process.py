"""The operator process: cluster-wide and multi-namespace watching, liveness, JSON logs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator, start_operator
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator, pytest.mark.usefixtures("upstream_crds")]


def resource(name: str, namespace: str) -> str:
    return json.dumps(
        {
            "apiVersion": "aperag.io/v1alpha1",
            "kind": "ApeRAG",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"version": "0.5.0"},
        }
    )


def ready(cluster: Cluster, namespace: str, name: str) -> bool:
    obj = kget(cluster, namespace, "aperag", name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


@pytest.fixture
def second_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"second-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


async def _run(cluster: Cluster, op: OperatorProcess, namespaces: list[str]) -> None:
    # The default databases are managed KubeBlocks Clusters: the simulated KubeBlocks provisions them.
    with kubeblocks_simulator(cluster, *namespaces):
        await _run_simulated(cluster, op, namespaces)


async def _run_simulated(cluster: Cluster, op: OperatorProcess, namespaces: list[str]) -> None:
    try:
        await wait_until(lambda: op.health() is not None, timeout=60, what="liveness endpoint")
        for ns in namespaces:
            apply_yaml(cluster, resource("rag", ns))
        for ns in namespaces:
            await wait_until(lambda ns=ns: ready(cluster, ns, "rag"), timeout=60, what=f"{ns}/rag Ready")
        # structured logs: every line the operator wrote is a JSON object with a message and a severity
        lines = [line for line in op.logs().splitlines() if line.strip()]
        assert lines
        for line in lines:
            record = json.loads(line)
            assert "message" in record and "severity" in record
    finally:
        op.stop()


async def test_cluster_wide(
    cluster: Cluster, aperag_crd: str, namespace: str, second_namespace: str, tmp_path: Path
) -> None:
    op = start_operator(cluster, tmp_path / "operator.log", "--all-namespaces")
    await _run(cluster, op, [namespace, second_namespace])
    # Secrets are watched only where an ApeRAG lives, never cluster-wide (and kept without values).
    watched = {
        line["message"].split(" in ", 1)[1].removesuffix(": Listed")
        for line in map(json.loads, op.logs().splitlines())
        if line["message"].startswith("secrets in ")
    }
    with_aperags = {
        item["metadata"]["namespace"]
        for item in json.loads(cluster.kubectl("get", "aperags", "-A", "-o", "json").stdout)["items"]
    }
    assert {namespace, second_namespace} <= watched
    # Earlier tests' namespaces may still have held an ApeRAG when the operator started, and be gone now.
    assert {ns for ns in watched - with_aperags if not _had_an_aperag(cluster, ns)} == set()
    assert not watched & {"default", "kube-system", "kube-public"}


def _had_an_aperag(cluster: Cluster, namespace: str) -> bool:
    """The namespace is gone or going (deleted with its ApeRAGs), or an ApeRAG there has Events."""
    ns = kget(cluster, "", "namespace", namespace)
    if ns is None or ns.get("status", {}).get("phase") == "Terminating":
        return True
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    return any(e["involvedObject"].get("kind") == "ApeRAG" for e in json.loads(events)["items"])


async def test_several_namespaces_and_nothing_outside(
    cluster: Cluster, aperag_crd: str, namespace: str, second_namespace: str, tmp_path: Path
) -> None:
    op = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace)
    with kubeblocks_simulator(cluster, namespace):
        try:
            await wait_until(lambda: op.health() is not None, timeout=60, what="liveness endpoint")
            apply_yaml(cluster, resource("rag", namespace))
            apply_yaml(cluster, resource("outside", second_namespace))
            await wait_until(lambda: ready(cluster, namespace, "rag"), timeout=60, what="rag Ready")
            # the resource outside the watched namespace is untouched: no status, no children
            outside = kget(cluster, second_namespace, "aperag", "outside")
            assert outside is not None and outside.get("status") in (None, {})
            assert kget(cluster, second_namespace, "deployment", "outside-api") is None
        finally:
            op.stop()
