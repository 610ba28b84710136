"""manifests/install.yaml, applied as the README says, installs an operator whose RBAC is enough.

Every other e2e test runs the operator as a cluster admin; this one runs it the way the manifest deploys
it: with the Deployment's own arguments (cluster-wide) and the token of the ``aperag-operator``
ServiceAccount bound by the manifest's ClusterRole, so a missing rule shows up as a 403 here instead of
in production. The chart the manifest is rendered from is installed with helm in test_chart.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from charts.render import INSTALL_MANIFEST
from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.e2e.install import (
    denied_lines,
    dump_log_on_failure,
    rolled_out,
    service_account_kubeconfig,
    service_account_user,
    start_as_deployment,
    wait_probes_pass,
)
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

SYSTEM_NAMESPACE = "aperag-system"
NAME = "aperag-operator"


@pytest.fixture
async def manifest_operator(
    cluster: Cluster, aperag_crd: str, upstream_crds: list[str], tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    cluster.kubectl("apply", "--server-side", "-f", str(INSTALL_MANIFEST))
    # The namespace enforces the restricted Pod Security Standard: the Deployment's pod was admitted.
    labels = (kget(cluster, "", "namespace", SYSTEM_NAMESPACE) or {})["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    deployment = await rolled_out(cluster, SYSTEM_NAMESPACE, NAME)
    kubeconfig = service_account_kubeconfig(cluster, SYSTEM_NAMESPACE, NAME, tmp_path / "sa.kubeconfig")
    operator = start_as_deployment(cluster, deployment, tmp_path / "operator.log", kubeconfig)
    try:
        await wait_probes_pass(operator, deployment)
        yield operator
    except BaseException:
        dump_log_on_failure(operator)
        raise
    finally:
        operator.stop()


async def test_the_install_manifest_rbac_is_enough_to_reach_ready(
    cluster: Cluster, namespace: str, manifest_operator: OperatorProcess
) -> None:
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
    jobs = (kget(cluster, namespace, "jobs") or {"items": []})["items"]
    assert jobs, "no migration Job"  # Jobs and their Pods too
    # Autoscaling off: the autoscalers are deleted (and the replicas applied again) under the same rules.
    body["spec"]["autoscaling"] = {"worker": {"enabled": False}, "api": {"enabled": False}}
    apply_yaml(cluster, json.dumps(body))

    def autoscalers_gone() -> bool:
        return all(kget(cluster, namespace, kind, name) is None for kind, name in (
            ("scaledobjects.keda.sh", "rbac-worker"), ("triggerauthentications.keda.sh", "rbac-worker-redis"),
            ("horizontalpodautoscalers.autoscaling", "rbac-api")))  # fmt: skip

    await wait_until(autoscalers_gone, timeout=60, what="the autoscalers deleted under the manifest's RBAC")
    denied = denied_lines(manifest_operator.logs())
    assert not denied, denied
    # The writes really were the ServiceAccount's.
    assert cluster.audit_events(username=service_account_user(SYSTEM_NAMESPACE, NAME), namespace=namespace)
