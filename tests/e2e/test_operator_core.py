"""The ApeRAG resource and its core reconcile loop, against the real control plane with the operator running.

Each test runs in its own namespace with an operator watching only that namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

OPERATOR_USER = "aperag-operator"
COMPONENTS = ("api", "worker", "beat")


@pytest.fixture(autouse=True)
def kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    """The default databases are managed KubeBlocks Clusters: run the simulated KubeBlocks controller."""
    with kubeblocks_simulator(cluster, namespace):
        yield


def manifest(name: str, namespace: str, spec: dict[str, Any] | None = None, **meta: Any) -> str:
    body = {
        "apiVersion": "aperag.io/v1alpha1",
        "kind": "ApeRAG",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"version": "0.5.0", **(spec or {})},
    }
    return json.dumps(body)


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = kget(cluster, ns, "aperag", name) or {}
    result: dict[str, Any] = obj.get("status") or {}
    return result


def cond(cluster: Cluster, ns: str, name: str, ctype: str) -> dict[str, Any]:
    for c in status(cluster, ns, name).get("conditions", []):
        if c["type"] == ctype:
            result: dict[str, Any] = c
            return result
    return {}


async def wait_ready(cluster: Cluster, ns: str, name: str, limit: float = 60) -> None:
    await wait_until(
        lambda: cond(cluster, ns, name, "Ready").get("status") == "True",
        timeout=limit,
        what=f"{ns}/{name} Ready",
    )


async def wait_idle(op: OperatorProcess, ns: str, name: str, cycles: int = 2) -> None:
    """Wait until the operator has finished ``cycles`` more reconciles of the resource."""
    start = op.reconciles(ns, name)
    await wait_until(
        lambda: op.reconciles(ns, name) >= start + cycles,
        timeout=30,
        what=f"{cycles} more reconciles of {ns}/{name}",
    )


def writes(cluster: Cluster, ns: str, since: float) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name', '')}"
        f"{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
        for e in cluster.audit_events(username=OPERATOR_USER, namespace=ns, since=since)
    ]


async def test_minimal_resource_becomes_ready(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    # The namespace enforces the restricted Pod Security Standard: pods that break it are refused.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # The resource's own instance label must not leak onto children.
    apply_yaml(cluster, manifest("rag", namespace, labels={"app.kubernetes.io/instance": "something-else"}))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "aperag/rag", "--timeout=90s")

    st = status(cluster, namespace, "rag")
    assert st["phase"] == "Ready"
    assert st["observedGeneration"] == 1
    assert st["version"] == "0.5.0"
    assert st["components"]["api"] == {
        "desired": 2,
        "ready": 2,
        "updated": 2,
        "available": 2,
        "isReady": True,
    }
    assert set(st["components"]) == set(COMPONENTS)
    for ctype, expected in (
        ("Ready", "True"),
        ("Progressing", "False"),
        ("Degraded", "False"),
        ("Paused", "False"),
    ):
        c = cond(cluster, namespace, "rag", ctype)
        assert c["status"] == expected and c["observedGeneration"] == 1 and c["lastTransitionTime"] and c["reason"]

    for kind, name in [
        ("serviceaccount", "rag"),
        ("configmap", "rag-config"),
        ("service", "rag-api"),
        ("poddisruptionbudget", "rag-api"),
        ("poddisruptionbudget", "rag-worker"),
        *[("deployment", f"rag-{c}") for c in COMPONENTS],
    ]:
        obj = kget(cluster, namespace, kind, name)
        assert obj is not None, f"{kind}/{name} missing"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rag"
        assert labels["app.kubernetes.io/managed-by"] == "aperag-operator"
        owner = obj["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ApeRAG" and owner["name"] == "rag" and owner["controller"] is True
    # The documents volume is kept when the resource goes (deletionPolicy Retain): labelled, not owned.
    claim = kget(cluster, namespace, "persistentvolumeclaim", "rag-objects")
    assert claim is not None and "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"]["app.kubernetes.io/instance"] == "rag"
    assert st["objectStorage"] == {"type": "local", "claim": "rag-objects", "deletionPolicy": "Retain"}
    beat = kget(cluster, namespace, "deployment", "rag-beat")
    assert beat is not None and beat["spec"]["strategy"]["type"] == "Recreate"
    assert (kget(cluster, namespace, "ingress", "rag")) is None

    pods = kget(cluster, namespace, "pods", "-l", "app.kubernetes.io/component!=migration")
    assert pods is not None and len(pods["items"]) == 2 + 2 + 1
    # The schema is migrated before any workload runs: the migration Job came first.
    jobs = (kget(cluster, namespace, "jobs", "-l", "app.kubernetes.io/component=migration") or {})["items"]
    assert len(jobs) == 1 and jobs[0]["metadata"]["name"].startswith("rag-migrate-")
    deployments = (kget(cluster, namespace, "deployments") or {})["items"]
    job_done = jobs[0]["status"]["completionTime"]
    assert all(d["metadata"]["creationTimestamp"] >= job_done for d in deployments)
    assert st["history"][-1]["version"] == "0.5.0" and st["history"][-1]["outcome"] == "Succeeded"

    table = cluster.kubectl("get", "aperag", "-n", namespace).stdout
    assert table.split()[:6] == ["NAME", "VERSION", "RUNNING", "READY", "PHASE", "AGE"]
    assert "rag" in table and "0.5.0" in table and "True" in table and "Ready" in table
    short = cluster.kubectl("get", "apr", "-n", namespace, "-o", "name").stdout.strip()
    assert short == "aperag.aperag.io/rag"

    def reasons() -> set[str]:
        evs = kget(cluster, namespace, "events", "--field-selector", "involvedObject.name=rag") or {"items": []}
        return {e["reason"] for e in evs["items"]}

    await wait_until(lambda: {"Created", "Ready"} <= reasons(), timeout=20, what="Created and Ready events")


async def test_noop_resync_makes_no_writes(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    await wait_idle(operator, namespace, "rag", cycles=2)
    since = time.time()
    # resyncs (every 2 s here), plus a metadata-only change that wakes the reconcile up at once
    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "example.com/touched=1")
    await wait_idle(operator, namespace, "rag", cycles=4)
    assert writes(cluster, namespace, since) == []
    # the first reconcile did write: the count is from the same log, so the filter works
    assert writes(cluster, namespace, 0)


async def test_drift_is_put_back(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")

    cluster.kubectl("scale", "-n", namespace, "deployment/rag-api", "--replicas=5")
    cluster.kubectl("delete", "-n", namespace, "service/rag-api")
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "configmap/rag-config",
        "--type=merge",
        "-p",
        '{"data":{"LOG_LEVEL":"DEBUG"}}',
    )
    cluster.kubectl("label", "-n", namespace, "deployment/rag-worker", "app.kubernetes.io/part-of-")

    def restored() -> bool:
        api = kget(cluster, namespace, "deployment", "rag-api")
        svc = kget(cluster, namespace, "service", "rag-api")
        cm = kget(cluster, namespace, "configmap", "rag-config")
        worker = kget(cluster, namespace, "deployment", "rag-worker")
        return bool(
            api
            and api["spec"]["replicas"] == 2
            and svc
            and cm
            and cm["data"]["LOG_LEVEL"] == "INFO"
            and worker
            and worker["metadata"]["labels"].get("app.kubernetes.io/part-of") == "aperag"
        )

    await wait_until(restored, timeout=15, what="drifted children restored")
    await wait_ready(cluster, namespace, "rag")


async def test_pause_and_resume(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "aperag.io/paused=true")
    await wait_until(
        lambda: cond(cluster, namespace, "rag", "Paused").get("status") == "True",
        timeout=15,
        what="Paused=True",
    )
    assert status(cluster, namespace, "rag")["phase"] == "Paused"
    since = time.time()
    cluster.kubectl("scale", "-n", namespace, "deployment/rag-api", "--replicas=3")
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "aperag/rag",
        "--type=merge",
        "-p",
        '{"spec":{"components":{"worker":{"replicas":4}}}}',
    )
    await wait_idle(operator, namespace, "rag", cycles=3)
    child_writes = [
        w for w in writes(cluster, namespace, since) if not w.startswith(("create events", "patch aperags"))
    ]
    assert child_writes == []
    api = kget(cluster, namespace, "deployment", "rag-api")
    assert api is not None and api["spec"]["replicas"] == 3

    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "aperag.io/paused-")

    def resumed() -> bool:
        api = kget(cluster, namespace, "deployment", "rag-api")
        worker = kget(cluster, namespace, "deployment", "rag-worker")
        return bool(
            api
            and api["spec"]["replicas"] == 2
            and worker
            and worker["spec"]["replicas"] == 4
            and cond(cluster, namespace, "rag", "Paused").get("status") == "False"
        )

    await wait_until(resumed, timeout=20, what="resumed: drift put back and spec change applied")
    await wait_ready(cluster, namespace, "rag")


async def test_missing_secret_degrades_without_removing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    secret_env = {
        "app": {"env": [{"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}]}
    }
    # first install with the Secret missing: Degraded, no app workloads, the rest in place
    apply_yaml(cluster, manifest("rag", namespace, secret_env))
    await wait_until(
        lambda: cond(cluster, namespace, "rag", "Degraded").get("reason") == "SecretNotFound",
        timeout=20,
        what="Degraded SecretNotFound",
    )
    degraded = cond(cluster, namespace, "rag", "Degraded")
    assert degraded["status"] == "True" and "llm" in degraded["message"] and "spec.app.env[0]" in degraded["message"]
    assert cond(cluster, namespace, "rag", "Ready")["status"] == "False"
    assert status(cluster, namespace, "rag")["phase"] == "Degraded"
    assert kget(cluster, namespace, "deployment", "rag-api") is None
    assert kget(cluster, namespace, "service", "rag-api") is not None

    # the Secret appears: the reconcile continues by itself
    cluster.kubectl("create", "secret", "generic", "llm", "-n", namespace, "--from-literal=apiKey=sk-test")
    await wait_ready(cluster, namespace, "rag")

    # a running instance pointed at another missing Secret: Degraded, and nothing that runs is removed
    other = {"app": {"env": [{"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}}
    apply_yaml(cluster, manifest("rag", namespace, other))
    await wait_until(
        lambda: cond(cluster, namespace, "rag", "Degraded").get("status") == "True",
        timeout=20,
        what="Degraded",
    )
    for c in COMPONENTS:
        dep = kget(cluster, namespace, "deployment", f"rag-{c}")
        assert dep is not None and dep["status"].get("readyReplicas", 0) >= 1, c

    def reasons() -> set[str]:
        evs = kget(cluster, namespace, "events", "--field-selector", "involvedObject.name=rag") or {"items": []}
        return {e["reason"] for e in evs["items"]}

    await wait_until(lambda: "SecretNotFound" in reasons(), timeout=20, what="SecretNotFound event")


async def test_spec_changes_and_optional_children(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    changed = {
        "components": {"api": {"replicas": 3}, "beat": {"enabled": False}, "flower": {"enabled": True}},
        "ingress": {"enabled": True, "host": "rag.example.com", "tlsSecretName": "rag-tls"},
        "networkPolicy": {"enabled": True},
        "objectStorage": {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "s3"}}},
    }
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3",
        "-n",
        namespace,
        "--from-literal=accessKeyId=a",
        "--from-literal=secretAccessKey=b",
    )
    apply_yaml(cluster, manifest("rag", namespace, changed))

    def converged() -> bool:
        api = kget(cluster, namespace, "deployment", "rag-api")
        return bool(
            api
            and api["spec"]["replicas"] == 3
            and kget(cluster, namespace, "deployment", "rag-beat") is None
            and kget(cluster, namespace, "service", "rag-flower") is not None
            and kget(cluster, namespace, "deployment", "rag-flower") is not None
            and kget(cluster, namespace, "ingress", "rag") is not None
            and kget(cluster, namespace, "networkpolicy", "rag-app") is not None
        )

    await wait_until(converged, timeout=30, what="children follow the spec change")
    await wait_until(
        lambda: (
            status(cluster, namespace, "rag").get("observedGeneration") == 2
            and cond(cluster, namespace, "rag", "Ready").get("status") == "True"
        ),
        timeout=60,
        what="Ready at generation 2",
    )
    assert set(status(cluster, namespace, "rag")["components"]) == {"api", "worker", "flower"}
    # The API serves everything, the web console at /console/ included: one rule, / to the API Service;
    # only the api is reachable from the ingress controller's namespace.
    ingress = kget(cluster, namespace, "ingress", "rag") or {}
    assert ingress["spec"]["rules"][0]["http"]["paths"] == [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "rag-api", "port": {"number": 8000}}}}
    ]
    web = (kget(cluster, namespace, "networkpolicy", "rag-web") or {})["spec"]
    assert web["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert "matchExpressions" not in web["podSelector"]
    assert web["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    # The documents volume outlives the switch to S3 (deletionPolicy Retain), and the status says so.
    claim = kget(cluster, namespace, "persistentvolumeclaim", "rag-objects")
    assert claim is not None and claim["metadata"].get("deletionTimestamp") is None
    storage = status(cluster, namespace, "rag")["objectStorage"]
    assert storage["type"] == "s3" and storage["retainedClaim"] == "rag-objects"
    assert "kept" in storage["message"]
    api = kget(cluster, namespace, "deployment", "rag-api")
    assert api is not None and not any(
        v.get("persistentVolumeClaim") for v in api["spec"]["template"]["spec"]["volumes"]
    )


async def test_several_instances_and_garbage_collection(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, manifest("one", namespace))
    apply_yaml(cluster, manifest("two", namespace, {"components": {"api": {"replicas": 1}}}))
    await wait_ready(cluster, namespace, "one")
    await wait_ready(cluster, namespace, "two")
    one = kget(cluster, namespace, "deployment", "one-api")
    two = kget(cluster, namespace, "deployment", "two-api")
    assert one and two and one["spec"]["replicas"] == 2 and two["spec"]["replicas"] == 1
    pods = kget(cluster, namespace, "pods", "-l", "app.kubernetes.io/instance=two,app.kubernetes.io/component=api")
    assert pods is not None and len(pods["items"]) == 1

    cluster.kubectl("delete", "-n", namespace, "aperag/one", "--wait=true", "--timeout=60s")

    def collected() -> bool:
        left = kget(
            cluster,
            namespace,
            "deployments,services,configmaps,serviceaccounts",
            "-l",
            "app.kubernetes.io/instance=one",
        )
        return left is not None and left["items"] == []

    await wait_until(collected, timeout=60, what="children of 'one' garbage-collected")
    assert kget(cluster, namespace, "deployment", "two-api") is not None
    await wait_ready(cluster, namespace, "two")


async def test_not_ready_pods_show_progress(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    spec = {"components": {"api": {"podLabels": {"kwok.aperag.io/never-ready": "true"}}}}
    apply_yaml(cluster, manifest("rag", namespace, spec))

    def progressing() -> bool:
        st = status(cluster, namespace, "rag")
        api = st.get("components", {}).get("api", {})
        worker = st.get("components", {}).get("worker", {})
        return bool(
            worker.get("isReady")
            and api.get("desired") == 2
            and api.get("ready") == 0
            and cond(cluster, namespace, "rag", "Progressing").get("status") == "True"
        )

    await wait_until(progressing, timeout=30, what="api not ready, Progressing=True")
    assert cond(cluster, namespace, "rag", "Ready")["status"] == "False"
    assert "api 0/2 ready" in cond(cluster, namespace, "rag", "Ready")["message"]


async def test_liveness_and_readiness_report_what_the_operator_can_do(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    code, report = operator.probe()
    assert code == 200 and report["alive"] is True and report["synced"] is True
    # it has talked to the API server within the last heartbeat interval and counted its reconciles
    assert report["lastContactSecondsAgo"] is not None and report["lastContactSecondsAgo"] < 35
    assert report["reconciles"] >= 1 and report["queue"] >= 0
    assert operator.probe("/readyz")[0] == 200
