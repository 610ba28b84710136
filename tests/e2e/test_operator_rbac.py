"""The operator's published RBAC (manifests/operator-rbac.yaml) is enough, and nothing more is needed.

Every other e2e test runs the operator as a cluster admin; this one runs it the way the manifests
deploy it: cluster-wide, with the token of the ``aperag-operator`` ServiceAccount bound by the
ClusterRole in the manifest, so a missing rule shows up as a 403 here instead of in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ROOT, OperatorProcess, apply_yaml, kget, kubeblocks_simulator, start_operator
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

SYSTEM_NAMESPACE = "aperag-system"


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig holding a fresh token of the aperag-operator ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", "aperag-operator", "-n", SYSTEM_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "aperag-operator", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "aperag-operator"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def problem_lines(logs: str) -> list[str]:
    """The operator's warning and error log lines (its logs are JSON, one object a line)."""
    problems = []
    for line in logs.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(line)  # not JSON: a traceback or a crash, worth seeing
            continue
        if record.get("severity") in ("warning", "error", "critical"):
            problems.append(record.get("message", line))
    return problems


@pytest.fixture
def rbac_operator(
    cluster: Cluster, aperag_crd: str, upstream_crds: list[str], tmp_path: Path
) -> Iterator[OperatorProcess]:
    if cluster.kubectl("get", "namespace", SYSTEM_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE)
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "operator-rbac.yaml"))
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig")
    operator = start_operator(cluster, tmp_path / "operator.log", "--all-namespaces", kubeconfig=kubeconfig)
    try:
        yield operator
    finally:
        operator.stop()


async def test_the_manifest_rbac_is_enough_to_reach_ready(
    cluster: Cluster, namespace: str, rbac_operator: OperatorProcess
) -> None:
    await wait_until(lambda: rbac_operator.health() is not None, timeout=60, what="operator liveness")
    # Managed databases (KubeBlocks Clusters), an Ingress and NetworkPolicies: every rule is used.
    body = {
        "apiVersion": "aperag.io/v1alpha1",
        "kind": "ApeRAG",
        "metadata": {"name": "rbac", "namespace": namespace},
        "spec": {
            "version": "0.5.0",
            "ingress": {"enabled": True, "host": "rag.example.com"},
            "networkPolicy": {"enabled": True},
            "autoscaling": {"worker": {"enabled": True}, "api": {"enabled": True}},
        },
    }

    def ready() -> bool:
        obj = kget(cluster, namespace, "aperag", "rbac") or {}
        conditions = (obj.get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    with kubeblocks_simulator(cluster, namespace):
        apply_yaml(cluster, json.dumps(body))
        await wait_until(ready, timeout=120, what="aperag rbac Ready under the manifest's RBAC")

    for kind, name in [
        ("clusters.apps.kubeblocks.io", "rbac-pg"), ("ingress", "rbac"), ("networkpolicy", "rbac-app"),
        ("deployment", "rbac-api"), ("poddisruptionbudget", "rbac-api"),
        ("scaledobjects.keda.sh", "rbac-worker"), ("triggerauthentications.keda.sh", "rbac-worker-redis"),
        ("horizontalpodautoscalers.autoscaling", "rbac-api"),
    ]:  # fmt: skip
        assert kget(cluster, namespace, kind, name) is not None, f"{kind}/{name} missing"
    # Autoscaling off: the autoscalers are deleted (and the replicas applied again) under the same rules.
    body["spec"]["autoscaling"] = {"worker": {"enabled": False}, "api": {"enabled": False}}
    apply_yaml(cluster, json.dumps(body))

    def autoscalers_gone() -> bool:
        return all(kget(cluster, namespace, kind, name) is None for kind, name in (
            ("scaledobjects.keda.sh", "rbac-worker"), ("triggerauthentications.keda.sh", "rbac-worker-redis"),
            ("horizontalpodautoscalers.autoscaling", "rbac-api")))  # fmt: skip

    await wait_until(autoscalers_gone, timeout=60, what="the autoscalers deleted under the manifest's RBAC")
    denied = [line for line in problem_lines(rbac_operator.logs()) if "403" in line or "forbidden" in line.lower()]
    assert not denied, denied
    # The writes really were the ServiceAccount's.
    sa_user = f"system:serviceaccount:{SYSTEM_NAMESPACE}:aperag-operator"
    assert cluster.audit_events(username=sa_user, namespace=namespace)
