"""A Ready ApeRAG whose spec the operator's model refuses though the installed CRD accepted it (an
operator older than its CRD, or a CRD edited by hand): the status says InvalidSpec with the reason, and
nothing that runs is touched. Against the real control plane, with the operator process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CRD_FILE, OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.e2e.test_console_upgrade import install_crd
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle, wait_ready, writes
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]


@pytest.fixture(autouse=True)
def kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == [], f"the KubeBlocks simulator failed: {errors}"


def crd_accepting_unknown_components() -> dict[str, Any]:
    """The current CRD, except that ``spec.components`` keeps fields it does not declare."""
    crd: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec["components"]["x-kubernetes-preserve-unknown-fields"] = True
    return crd


async def test_a_spec_the_model_refuses_is_reported_and_what_runs_is_kept(
    cluster: Cluster, aperag_crd: str, namespace: str, operator: OperatorProcess
) -> None:
    current = yaml.safe_load(CRD_FILE.read_text())
    install_crd(cluster, crd_accepting_unknown_components())
    try:
        apply_yaml(cluster, manifest("skew", namespace))
        await wait_ready(cluster, namespace, "skew")
        await wait_idle(operator, namespace, "skew")
        before = kget(cluster, namespace, "deployment", "skew-api") or {}
        components = status(cluster, namespace, "skew")["components"]
        since = time.time()
        cluster.kubectl("patch", "aperag", "skew", "-n", namespace, "--type=merge", "-p",
                        json.dumps({"spec": {"components": {"sidecar": {"enabled": True}}}}))  # fmt: skip

        def reported() -> dict[str, Any] | None:
            ready = cond(cluster, namespace, "skew", "Ready")
            return ready if ready.get("reason") == "InvalidSpec" else None

        ready = await wait_until(reported, timeout=30, what="InvalidSpec in the status")
        assert ready["status"] == "False" and "sidecar" in ready["message"], ready
        assert cond(cluster, namespace, "skew", "Degraded")["reason"] == "InvalidSpec"
        # The components that still run are still shown; no child was written.
        assert status(cluster, namespace, "skew")["components"] == components
        after = kget(cluster, namespace, "deployment", "skew-api") or {}
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert [w for w in writes(cluster, namespace, since) if not w.endswith("/status") and "events" not in w] == []

        # Fixed: reconciled back to Ready.
        cluster.kubectl("patch", "aperag", "skew", "-n", namespace, "--type=json", "-p",
                        json.dumps([{"op": "remove", "path": "/spec/components/sidecar"}]))  # fmt: skip
        await wait_ready(cluster, namespace, "skew")
    finally:
        install_crd(cluster, current)
