"""Autoscaling against the real API server, with KEDA's real CRDs and no KEDA process: every generated
autoscaler passes the upstream schemas; the operator hands the replicas over to the autoscaler (never
letting the API server reset them), keeps off them while autoscaled and takes them back when asked; the
upgrade health gate counts the autoscaler's replicas; and without KEDA the workers scale on CPU until
KEDA is installed, without a restart. The real KEDA scaling on a real queue is tests/e2e/test_keda.py.

"The autoscaler" in the tests below writes the Deployment's scale subresource, as an HPA does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aperag_operator.builders import autoscaling
from aperag_operator.builders.common import FIELD_MANAGER, REPLICAS_HANDOVER_MANAGER
from aperag_operator.diff import applies_field
from lightkube import AsyncClient
from lightkube.resources.apps_v1 import Deployment

from tests.conftest import shared_dir
from tests.e2e.conftest import OperatorProcess, apply_yaml, bare_cluster, kget, start_operator
from tests.e2e.test_engine import EXTERNAL, install_secrets
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle, wait_ready, writes
from tests.e2e.test_upgrades import REV1, REV2, apply, history, installed, report, settled, upgrade_spec
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until
from tests.unit.helpers import instance

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

WORKER = {"enabled": True, "minReplicas": 1, "maxReplicas": 10}


@pytest.fixture(autouse=True)
def kubeblocks(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """The default databases are managed: the KubeBlocks simulator (and the real KubeBlocks and KEDA CRDs)."""
    if "no_keda" in request.fixturenames:
        yield
        return
    from tests.e2e.conftest import kubeblocks_simulator

    request.getfixturevalue("upstream_crds")
    namespace = request.getfixturevalue("namespace")
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == []


# --- the schemas --------------------------------------------------------------------------------------------

SHAPES: dict[str, dict[str, Any]] = {
    "defaults": {"autoscaling": {"worker": {"enabled": True}, "api": {"enabled": True}}},
    "everything": {
        "autoscaling": {
            "worker": {"enabled": True, "minReplicas": 0, "maxReplicas": 50, "listLength": 20,
                       "activationListLength": 3, "pollingInterval": 5, "cooldownPeriod": 60, "databaseIndex": 4,
                       "fallbackReplicas": 2, "targetCpuUtilization": 60,
                       "scaleDown": {"stabilizationWindowSeconds": 30, "podsPerPeriod": 3, "percentPerPeriod": 20,
                                     "periodSeconds": 30}},
            "api": {"enabled": True, "minReplicas": 3, "maxReplicas": 30, "targetCpuUtilization": 65,
                    "targetMemoryUtilization": 70, "scaleDown": {"podsPerPeriod": 1}},
        }
    },
    "external-tls": {
        "autoscaling": {"worker": {"enabled": True}},
        "databases": {"redis": {"external": {"host": "redis.example.internal", "port": 6380, "tls": True,
                                             "credentialsSecretRef": {"name": "redis", "usernameKey": ""}}}},
    },
    "external-open": {
        "autoscaling": {"worker": {"enabled": True}},
        "databases": {"redis": {"external": {"host": "10.1.2.3"}}},
    },
}  # fmt: skip


def _contains(stored: Any, sent: Any) -> bool:
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(k in stored and _contains(stored[k], v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(map(_contains, stored, sent))
    return bool(stored == sent)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generated_autoscalers_pass_the_real_schemas(cluster: Cluster, namespace: str, shape: str) -> None:
    """Every ScaledObject, TriggerAuthentication and HPA the builders make, applied with strict field
    validation against KEDA's CRDs (shared/fixtures) and the API server's autoscaling/v2: nothing refused,
    nothing dropped as unknown."""
    inst = instance(SHAPES[shape], name=f"s-{shape}", namespace=namespace)
    target = autoscaling.redis_target(inst)
    assert target is not None
    objs = [autoscaling.scaled_object(inst, target), autoscaling.hpa(inst, "worker")]
    auth = autoscaling.trigger_authentication(inst, target)
    objs += [auth] if auth is not None else []
    objs += [autoscaling.hpa(inst, "api")] if inst.spec.autoscaling.api.enabled else []
    for obj in objs:
        obj = copy.deepcopy(obj)
        del obj["metadata"]["ownerReferences"]  # no such ApeRAG: the garbage collector would take it
        result = cluster.kubectl("apply", "--server-side", "--validate=strict", "--field-manager=aperag-tests",
                                 "-f", "-", input=json.dumps(obj), check=False)  # fmt: skip
        assert result.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {result.stderr}"
        resource = {"ScaledObject": "scaledobjects.keda.sh", "TriggerAuthentication": "triggerauthentications.keda.sh",
                    "HorizontalPodAutoscaler": "horizontalpodautoscalers.autoscaling"}[obj["kind"]]  # fmt: skip
        stored = kget(cluster, namespace, resource, obj["metadata"]["name"])
        assert stored is not None and _contains(stored["spec"], obj["spec"]), (obj["spec"], stored)


# --- the replicas belong to the autoscaler ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def replicas_seen(kube: AsyncClient, namespace: str, name: str) -> AsyncIterator[list[int]]:
    """Every spec.replicas the Deployment has from now on (a watch sees each change)."""
    seen: list[int] = []

    async def watch() -> None:
        async for _event, dep in kube.watch(Deployment, namespace=namespace, fields={"metadata.name": name}):
            if dep.spec is not None and dep.spec.replicas is not None:
                seen.append(dep.spec.replicas)

    task = asyncio.create_task(watch())
    try:
        await wait_until(lambda: seen, timeout=10, what=f"the watch on {name}")
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "-n", namespace, "deployment", name, "-o", "json", "--show-managed-fields")
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


async def test_replicas_are_handed_over_to_the_autoscaler_and_given_back(
    cluster: Cluster, namespace: str, operator: OperatorProcess, kube: AsyncClient
) -> None:
    spec = upgrade_spec("0.5.0", upgrade=report("upgrade", [], [REV1]))
    spec["components"]["worker"]["replicas"] = 4
    await installed(cluster, namespace, "rag", spec)
    before = deployment(cluster, namespace, "rag-worker")
    assert before["spec"]["replicas"] == 4 and applies_field(before, FIELD_MANAGER, ("spec", "replicas"))

    async with replicas_seen(kube, namespace, "rag-worker") as seen:
        # Autoscaling on: the operator stops applying spec.replicas. Had it simply dropped the field, the
        # API server would have removed it and the Deployment fallen to 1 before any autoscaler acted.
        spec["autoscaling"] = {"worker": WORKER}
        apply(cluster, namespace, "rag", spec)

        def let_go() -> bool:
            return not applies_field(deployment(cluster, namespace, "rag-worker"), FIELD_MANAGER, ("spec", "replicas"))

        await wait_until(let_go, timeout=30, what="the operator no longer applying spec.replicas")
        assert kget(cluster, namespace, "scaledobjects.keda.sh", "rag-worker") is not None
        await wait_idle(operator, namespace, "rag", cycles=3)
        assert seen and min(seen) == 4, seen  # never below the count it had
        # Kept by the second field manager until the autoscaler writes it.
        assert applies_field(deployment(cluster, namespace, "rag-worker"), REPLICAS_HANDOVER_MANAGER,
                             ("spec", "replicas"))  # fmt: skip

        # No KEDA process runs here: the ScaledObject is waiting for it, and the status says so.
        autoscaling_ready = cond(cluster, namespace, "rag", "AutoscalingReady")
        assert (autoscaling_ready["status"], autoscaling_ready["reason"]) == ("False", "ScaledObjectPending")
        assert cond(cluster, namespace, "rag", "Ready")["status"] == "True"  # autoscaling gates nothing

        # The autoscaler acts: the operator neither reverts it nor writes the Deployment; the status
        # counts the autoscaler's replicas.
        since = time.time()
        cluster.kubectl("scale", "-n", namespace, "deployment/rag-worker", "--replicas=7")

        def seven_ready() -> bool:
            worker = status(cluster, namespace, "rag").get("components", {}).get("worker", {})
            return bool(worker.get("desired") == 7 and worker.get("isReady"))

        await wait_until(seven_ready, timeout=30, what="status.components.worker at 7 ready")
        await wait_idle(operator, namespace, "rag", cycles=3)
        assert deployment(cluster, namespace, "rag-worker")["spec"]["replicas"] == 7
        assert [w for w in writes(cluster, namespace, since) if "deployments/" in w] == []
        assert seen[-1] == 7

        # Autoscaling off: the spec's replicas come back, the autoscalers go.
        del spec["autoscaling"]
        apply(cluster, namespace, "rag", spec)
        await wait_until(lambda: deployment(cluster, namespace, "rag-worker")["spec"]["replicas"] == 4, timeout=30,
                         what="replicas back to the spec's 4")  # fmt: skip
    back = deployment(cluster, namespace, "rag-worker")
    assert applies_field(back, FIELD_MANAGER, ("spec", "replicas"))
    await wait_until(lambda: kget(cluster, namespace, "scaledobjects.keda.sh", "rag-worker") is None, timeout=30,
                     what="the ScaledObject deleted")  # fmt: skip
    assert kget(cluster, namespace, "triggerauthentications.keda.sh", "rag-worker-redis") is None

    def no_autoscaling_status() -> bool:
        return "autoscaling" not in status(cluster, namespace, "rag") and not cond(
            cluster, namespace, "rag", "AutoscalingReady"
        )

    await wait_until(no_autoscaling_status, timeout=30, what="autoscaling gone from the status")


async def test_the_upgrade_health_gate_counts_the_autoscalers_replicas(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A rollout while the autoscaler holds the workers at 3 (the spec says 1): the gate waits for the 3
    (all updated, ready, available), not for the spec's count, which the Deployment will never have."""
    spec = {**upgrade_spec("0.5.0", upgrade=report("upgrade", [], [REV1])), "autoscaling": {"worker": WORKER}}
    await installed(cluster, namespace, "rag", spec)
    cluster.kubectl("scale", "-n", namespace, "deployment/rag-worker", "--replicas=3")
    await wait_until(lambda: status(cluster, namespace, "rag")["components"]["worker"]["ready"] == 3, timeout=30,
                     what="3 workers")  # fmt: skip
    upgrade = {**upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2])), "autoscaling": {"worker": WORKER}}
    apply(cluster, namespace, "rag", upgrade)
    await settled(cluster, namespace, "rag", "0.6.0")
    assert history(cluster, namespace, "rag")[-1]["outcome"] == "Succeeded"
    worker = kget(cluster, namespace, "deployment", "rag-worker") or {}
    assert worker["spec"]["replicas"] == 3
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.6.0")
    assert status(cluster, namespace, "rag")["components"]["worker"] == {
        "desired": 3, "ready": 3, "updated": 3, "available": 3, "isReady": True}  # fmt: skip


# --- without KEDA, then with it ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_keda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A fresh cluster without KEDA's CRDs (and without KubeBlocks': the databases are external)."""
    with bare_cluster(tmp_path_factory, "no-keda") as bare:
        yield bare


async def test_without_keda_the_workers_scale_on_cpu_until_keda_is_installed(no_keda: Cluster, tmp_path: Path) -> None:
    bare = no_keda
    ns = f"no-keda-{uuid.uuid4().hex[:6]}"
    bare.kubectl("create", "namespace", ns)
    await wait_until(lambda: kget(bare, ns, "serviceaccount", "default") is not None, timeout=30, what="default SA")
    install_secrets(bare, ns)
    op = start_operator(bare, tmp_path / "operator.log", "--namespace", ns)
    try:
        await wait_until(op.synced, timeout=60, what="operator synced")
        apply_yaml(bare, manifest("rag", ns, {**EXTERNAL, "autoscaling": {"worker": WORKER, "api": {"enabled": True}}}))
        await wait_ready(bare, ns, "rag", 90)  # autoscaling gates nothing

        def reason() -> str:
            return str(cond(bare, ns, "rag", "AutoscalingReady").get("reason"))

        await wait_until(lambda: reason() == "KEDANotInstalled", timeout=30, what="AutoscalingReady KEDANotInstalled")
        message = cond(bare, ns, "rag", "AutoscalingReady")["message"]
        assert "scaledobjects.keda.sh" in message and "HorizontalPodAutoscaler rag-worker" in message
        worker_hpa = kget(bare, ns, "horizontalpodautoscalers.autoscaling", "rag-worker")
        assert worker_hpa is not None
        assert worker_hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert worker_hpa["spec"]["scaleTargetRef"]["name"] == "rag-worker"
        assert kget(bare, ns, "horizontalpodautoscalers.autoscaling", "rag-api") is not None

        # The HPA controller's own view is rolled up: no resource metrics API runs in this cluster.
        def api_conditions() -> dict[str, Any]:
            api = status(bare, ns, "rag").get("autoscaling", {}).get("api", {})
            return {c["type"]: c for c in api.get("conditions", [])}

        await wait_until(lambda: api_conditions().get("ScalingActive", {}).get("reason") == "FailedGetResourceMetric",
                         timeout=60, what="the API HPA's ScalingActive condition in the status")  # fmt: skip
        assert status(bare, ns, "rag")["autoscaling"]["worker"]["kind"] == "HorizontalPodAutoscaler"
        dep = deployment(bare, ns, "rag-worker")
        assert not applies_field(dep, FIELD_MANAGER, ("spec", "replicas"))

        # KEDA installed later: the same process moves the workers to a ScaledObject, removing the CPU HPA
        # first so that two autoscalers never drive them at once.
        since = time.time()
        crd_root = shared_dir() / "fixtures" / "crds" / "keda-v2.20.2"
        bare.kubectl("apply", "--server-side", "--field-manager=aperag-tests", "-f", str(crd_root))
        bare.wait_established("scaledobjects.keda.sh", "triggerauthentications.keda.sh")
        await wait_until(lambda: kget(bare, ns, "scaledobjects.keda.sh", "rag-worker") is not None, timeout=90,
                         what="the ScaledObject (the kind is looked for again every 30 s)")  # fmt: skip
        assert kget(bare, ns, "horizontalpodautoscalers.autoscaling", "rag-worker") is None
        assert kget(bare, ns, "triggerauthentications.keda.sh", "rag-worker-redis") is not None
        assert kget(bare, ns, "horizontalpodautoscalers.autoscaling", "rag-api") is not None  # the API's stays
        order = [w for w in writes(bare, ns, since) if (w.endswith("/rag-worker") and "scaledobjects" in w) or
                 "horizontalpodautoscalers/rag-worker" in w]  # fmt: skip
        assert order[0] == "delete horizontalpodautoscalers/rag-worker", order
        await wait_until(lambda: reason() == "ScaledObjectPending", timeout=30, what="waiting for KEDA to run")
        assert status(bare, ns, "rag")["autoscaling"]["worker"]["kind"] == "ScaledObject"
        assert op.proc.poll() is None and "Traceback" not in op.logs()
    finally:
        op.stop()
