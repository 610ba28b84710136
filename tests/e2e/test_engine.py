"""The engine as a user meets it: restarts, watch gaps, drift of every shape, refused applies, names.

Each test runs the real operator process against the local control plane (a dedicated one where the
test stops the API server), with the KubeBlocks simulator playing KubeBlocks.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aperag_operator.builders.naming import max_name_length

from e2e.controlplane.localcluster import down, start_process, stop_process, up
from tests.e2e.conftest import (
    CRD_FILE,
    OperatorProcess,
    apply_yaml,
    kget,
    kubeblocks_simulator,
    start_operator,
)
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle, wait_ready, writes
from tests.harness.cluster import Cluster
from tests.harness.wait import poll_until, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]


def secret(name: str, namespace: str, data: dict[str, str]) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data}
    )


#: Every child kind and option at once: flower, scheduling, secrets, ingress, network policies, and the
#: four managed databases.
RICH: dict[str, Any] = {
    "components": {
        "flower": {"enabled": True},
        "api": {
            "podLabels": {"team": "search"},
            "podAnnotations": {"example.com/owner": "search-team"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "rag", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 10,
                            "preference": {"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]},
                        }
                    ]
                }
            },
            "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "3Gi"}},
        },
    },
    "app": {
        "config": {"CHUNK_SIZE": "400"},
        "env": [{"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}],
        "apiKeysSecret": {"name": "api-keys"},
    },
    "ingress": {"enabled": True, "host": "rag.example.com", "tlsSecretName": "rag-tls", "className": "nginx"},
    "networkPolicy": {"enabled": True},
    "databases": {"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}},
}

EXTERNAL: dict[str, Any] = {
    "databases": {
        "postgresql": {
            "external": {"host": "pg.example.internal", "database": "aperag", "credentialsSecretRef": {"name": "pg"}}
        },
        "redis": {"external": {"host": "redis.example.internal", "credentialsSecretRef": {"name": "redis"}}},
    },
    "objectStorage": {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "s3"}}},
}


def install_secrets(cluster: Cluster, namespace: str) -> None:
    for name, data in {
        "llm": {"apiKey": "sk-test"},
        "api-keys": {"apiKeys": "k1,k2"},
        "pg": {"username": "aperag", "password": "pw"},
        "redis": {"username": "", "password": "pw"},
        "s3": {"accessKeyId": "a", "secretAccessKey": "b"},
    }.items():
        apply_yaml(cluster, secret(name, namespace, data))


@pytest.fixture(autouse=True)
def kubeblocks(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    if "outage_cluster" in request.fixturenames:
        yield
        return
    request.getfixturevalue("upstream_crds")
    namespace = request.getfixturevalue("namespace")
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == [], f"the KubeBlocks simulator failed: {errors}"


# --- restarts -------------------------------------------------------------------------------------------


async def test_a_restarted_operator_writes_nothing_for_what_did_not_change(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    install_secrets(cluster, namespace)
    apply_yaml(cluster, manifest("rich", namespace, RICH))
    apply_yaml(cluster, manifest("ext", namespace, EXTERNAL))
    apply_yaml(cluster, manifest("min", namespace))
    for name in ("rich", "ext", "min"):
        await wait_ready(cluster, namespace, name, limit=90)
    kinds = {
        item["kind"]
        for item in (kget(cluster, namespace, "all,configmaps,serviceaccounts,pvc,pdb,ingress,networkpolicy,"
                          "clusters.apps.kubeblocks.io", "-l", "app.kubernetes.io/managed-by=aperag-operator")
                     or {"items": []})["items"]
    }  # fmt: skip
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim",
            "PodDisruptionBudget", "Ingress", "NetworkPolicy", "Cluster"} <= kinds  # fmt: skip
    for name in ("rich", "ext", "min"):
        await wait_idle(operator, namespace, name)

    operator.kill()
    since = time.time()
    restarted = start_operator(cluster, tmp_path / "restarted.log", "--namespace", namespace)
    try:
        await wait_until(restarted.synced, timeout=60, what="the restarted operator listed everything")
        for name in ("rich", "ext", "min"):
            await wait_idle(restarted, namespace, name, cycles=3)  # resyncs every 2 s
        assert writes(cluster, namespace, since) == []  # no apply, no status write, no Event
        assert "Created" not in restarted.logs()
    finally:
        restarted.stop()


# --- drift ------------------------------------------------------------------------------------------------


async def test_a_child_that_loses_its_labels_is_still_ours(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    cluster.kubectl("label", "-n", namespace, "deployment/rag-api", "app.kubernetes.io/managed-by-")

    def labelled() -> bool:
        dep = kget(cluster, namespace, "deployment", "rag-api") or {}
        return dep.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/managed-by") == "aperag-operator"

    await wait_until(labelled, timeout=15, what="the managed-by label put back")
    # later drift of the same child is still seen and put back
    cluster.kubectl("scale", "-n", namespace, "deployment/rag-api", "--replicas=4")
    await wait_until(
        lambda: (kget(cluster, namespace, "deployment", "rag-api") or {}).get("spec", {}).get("replicas") == 2,
        timeout=15,
        what="replicas put back",
    )


async def test_a_service_port_edited_by_hand_converges(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    cluster.kubectl(
        "patch", "-n", namespace, "service/rag-api", "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 9000}]',
    )  # fmt: skip

    def converged() -> bool:
        svc = kget(cluster, namespace, "service", "rag-api") or {}
        ports = [(p["name"], p["port"]) for p in svc.get("spec", {}).get("ports", [])]
        return ports == [("http", 8000)]

    await wait_until(converged, timeout=20, what="the Service back to one port 8000")
    await wait_ready(cluster, namespace, "rag")
    assert cond(cluster, namespace, "rag", "Degraded")["status"] == "False"


# --- refused applies ---------------------------------------------------------------------------------------


async def test_an_apply_the_server_keeps_failing_is_retried_with_backoff(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A webhook nobody serves makes every write of ConfigMaps in the namespace fail with a 500: the
    operator reports it and backs off instead of hammering the API server."""
    webhook = f"deny-configmaps-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("label", "namespace", namespace, f"aperag-test-webhook={webhook}")
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": webhook},
        "webhooks": [
            {
                "name": "configmaps.aperag-test.local",
                "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                           "resources": ["configmaps"]}],
                "namespaceSelector": {"matchLabels": {"aperag-test-webhook": webhook}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 1,
            }
        ],
    }  # fmt: skip
    apply_yaml(cluster, json.dumps(config))
    try:
        apply_yaml(cluster, manifest("rag", namespace))

        def apply_failed() -> bool:
            degraded = cond(cluster, namespace, "rag", "Degraded")
            return degraded.get("reason") == "ApplyFailed" and "rag-config" in degraded.get("message", "")

        await wait_until(apply_failed, timeout=30, what="Degraded ApplyFailed naming the ConfigMap")

        def rolled_out() -> bool:
            components = status(cluster, namespace, "rag").get("components", {})
            return bool(components) and all(c["isReady"] for c in components.values())

        # The rollout's own events run reconciles early; once it is over only the backoff retries.
        await wait_until(rolled_out, timeout=60, what="the pods rolled out (no more child events)")
        since = time.time()
        window = 20.0
        await wait_until(lambda: time.time() - since >= window, timeout=window + 5, what="the observation window")
        attempts = [w for w in writes(cluster, namespace, since) if w.startswith("patch configmaps/rag-config")]
        # every resync (2 s here) would make 10 attempts; the backoff (doubling, from 0.5 s) makes 1 to 4
        assert 1 <= len(attempts) <= 4, attempts
        assert "retrying in" in operator.logs()
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found")
    await wait_ready(cluster, namespace, "rag", limit=90)  # recovers by itself once the webhook is gone


# --- names ------------------------------------------------------------------------------------------------


async def test_the_longest_allowed_name_works_with_every_managed_database(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    name = "r" * max_name_length()
    every_database = {"databases": {"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}}}
    apply_yaml(cluster, manifest(name, namespace, every_database))
    await wait_ready(cluster, namespace, name, limit=90)
    assert {db["name"] for db in status(cluster, namespace, name)["databases"]} == {
        "postgresql", "redis", "qdrant", "elasticsearch"
    }  # fmt: skip
    assert kget(cluster, namespace, "service", f"{name}-pg-postgresql-postgresql") is not None  # 63 characters


# --- quiet at rest --------------------------------------------------------------------------------------------


async def test_logs_at_info_are_quiet_at_rest(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    await wait_idle(operator, namespace, "rag")
    before = len(operator.logs().splitlines())
    await wait_idle(operator, namespace, "rag", cycles=4)  # four resyncs, nothing changes
    lines = [json.loads(line) for line in operator.logs().splitlines()[before:] if line.strip()]
    assert lines, "the debug log shows the reconciles happened"
    assert [line["message"] for line in lines if line["severity"] != "debug"] == []


# --- the API server goes away --------------------------------------------------------------------------------


@pytest.fixture
def outage_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of its own, whose API server the test stops and starts."""
    state = tmp_path_factory.mktemp("outage")
    info = up(state)
    try:
        own = Cluster(info)
        own.kubectl("apply", "--server-side", "--field-manager=aperag-tests", "-f", str(CRD_FILE))
        own.wait_established("aperags.aperag.io")
        yield own
    finally:
        down(state)


async def test_an_api_server_outage_is_seen_and_what_changed_meanwhile_is_repaired(
    outage_cluster: Cluster, tmp_path: Path
) -> None:
    own = outage_cluster
    ns = f"outage-{uuid.uuid4().hex[:6]}"
    own.kubectl("create", "namespace", ns)
    await wait_until(lambda: kget(own, ns, "serviceaccount", "default") is not None, timeout=30, what="default SA")
    external = {key: value for key, value in EXTERNAL.items() if key == "databases"}
    install_secrets(own, ns)
    op = start_operator(own, tmp_path / "operator.log", "--namespace", ns,
                        extra=("--contact-window", "6", "--heartbeat-interval", "1"))  # fmt: skip
    state = Path(own.info.state_dir)
    try:
        await wait_until(op.synced, timeout=60, what="operator synced")
        apply_yaml(own, manifest("rag", ns, external))
        await wait_ready(own, ns, "rag")

        stop_process(state, "kube-apiserver")
        await wait_until(lambda: op.probe()[0] == 503, timeout=30, what="liveness 503 while the API server is away")
        assert "no request to the API server has succeeded" in op.probe()[1]["reason"]
        down_since = time.monotonic()
        await wait_until(lambda: time.monotonic() - down_since >= 20, timeout=25, what="a 20 s outage")
        start_process(state, "kube-apiserver")
        await wait_until(lambda: own.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                         timeout=60, what="API server back")  # fmt: skip
        own.kubectl("delete", "-n", ns, "service/rag-api")  # right after it came back

        await wait_until(lambda: kget(own, ns, "service", "rag-api") is not None, timeout=60,
                         what="the Service deleted during the reconnect put back")  # fmt: skip
        await wait_until(lambda: op.probe()[0] == 200, timeout=30, what="liveness back to 200")
        assert op.proc.poll() is None
    finally:
        op.stop()
        start_process(state, "kube-apiserver")  # never leave it stopped for the clean-up


def test_the_operator_process_exits_cleanly_on_sigterm(
    cluster: Cluster, aperag_crd: str, namespace: str, tmp_path: Path
) -> None:
    op = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace)
    try:
        poll_until(op.synced, timeout=60, what="operator synced")
        op.proc.send_signal(signal.SIGTERM)
        assert op.proc.wait(timeout=20) == 0
    finally:
        op.stop()
