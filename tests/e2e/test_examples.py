"""Every file in examples/ is applied as its header says (``kubectl apply -n <namespace> -f``) and
reaches Ready on the local cluster, with the operator running and the simulated KubeBlocks controller;
the test creates the Secrets an example tells its user to create. Then each example's promises are
checked on what the operator made of it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.e2e.test_operator_core import cond, status, wait_ready
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

EXAMPLES = ROOT / "examples"


def secret(namespace: str, name: str, data: dict[str, str], kind: str = "Opaque") -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": kind,
        "metadata": {"name": name, "namespace": namespace}, "stringData": data,
    })  # fmt: skip


def env_of(cluster: Cluster, namespace: str, deployment: str) -> dict[str, Any]:
    dep = kget(cluster, namespace, "deployment", deployment)
    assert dep is not None, f"deployment {deployment} missing"
    env = dep["spec"]["template"]["spec"]["containers"][0].get("env") or []
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def component_spec(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = kget(cluster, namespace, "clusters.apps.kubeblocks.io", name)
    assert obj is not None, f"Cluster {name} missing"
    (component,) = obj["spec"]["componentSpecs"]
    return dict(component)


async def check_minimal(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    assert kget(cluster, namespace, "pvc", "demo-objects") is not None  # documents on the shared volume
    pg = component_spec(cluster, namespace, "demo-pg")
    assert pg["replicas"] == 1 and pg["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert kget(cluster, namespace, "clusters.apps.kubeblocks.io", "demo-redis") is not None
    for deployment, replicas in (("demo-api", 2), ("demo-worker", 2), ("demo-beat", 1)):
        assert (kget(cluster, namespace, "deployment", deployment) or {})["spec"]["replicas"] == replicas
    # No frontend: the API serves the web console.
    deployments = (kget(cluster, namespace, "deployments") or {})["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == ["demo-api", "demo-beat", "demo-worker"]
    assert env_of(cluster, namespace, "demo-api")["APERAG_CONSOLE_ENABLED"] == "true"


async def check_external(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    assert (kget(cluster, namespace, "clusters.apps.kubeblocks.io") or {})["items"] == []  # no KubeBlocks needed
    assert [(d["name"], d["mode"], d["ready"]) for d in status(cluster, namespace, "demo")["databases"]] == [
        ("postgresql", "External", True), ("redis", "External", True),
    ]  # fmt: skip
    env = env_of(cluster, namespace, "demo-api")
    assert env["POSTGRES_HOST"] == "postgres.databases.svc.cluster.local"
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "aperag-postgres", "key": "password"}}
    assert env["REDIS_HOST"] == "redis.databases.svc.cluster.local"


async def check_production(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    # HA PostgreSQL, Redis on a volume.
    pg = component_spec(cluster, namespace, "rag-pg")
    assert pg["replicas"] == 3
    assert pg["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    redis = component_spec(cluster, namespace, "rag-redis")
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # Ingress with TLS.
    ingress = kget(cluster, namespace, "ingress", "rag") or {}
    assert ingress["spec"]["tls"] == [{"hosts": ["rag.example.com"], "secretName": "rag-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    # Everything, the console at /console/ included, goes to the API Service.
    assert ingress["spec"]["rules"][0]["http"]["paths"] == [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "rag-api", "port": {"number": 8000}}}}
    ]
    assert env_of(cluster, namespace, "rag-api")["APERAG_CONSOLE_ENABLED"] == "true"
    # S3: no documents volume; the credentials reach the pods only as secretKeyRef.
    assert kget(cluster, namespace, "pvc", "rag-objects") is None
    config = (kget(cluster, namespace, "configmap", "rag-config") or {})["data"]
    assert (config["OBJECT_STORE_TYPE"], config["OBJECT_STORE_S3_BUCKET"], config["OBJECT_STORE_S3_REGION"]) == (
        "s3", "rag-documents", "eu-west-1",
    )  # fmt: skip
    env = env_of(cluster, namespace, "rag-worker")
    assert env["OBJECT_STORE_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "rag-s3", "key": "secretAccessKey"}}
    assert env_of(cluster, namespace, "rag-api")["APERAG_API_KEYS"] == {
        "secretKeyRef": {"name": "rag-api-keys", "key": "apiKeys"}
    }
    # Resources, replicas, PDBs, NetworkPolicies.
    api = kget(cluster, namespace, "deployment", "rag-api") or {}
    assert api["spec"]["replicas"] == 3
    assert api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    for name in ("rag-api", "rag-worker"):
        assert (kget(cluster, namespace, "pdb", name) or {})["spec"]["maxUnavailable"] == 1
    for name in ("rag-app", "rag-web"):
        assert kget(cluster, namespace, "networkpolicy", name) is not None

    # backupBeforeUpgrade: an upgrade backs PostgreSQL up (a KubeBlocks Backup OpsRequest, completed by the
    # simulator) before its migration Job runs, then rolls out.
    cluster.kubectl("patch", "-n", namespace, "aperag/rag", "--type=merge", "-p", '{"spec": {"version": "0.5.1"}}')

    def upgraded() -> bool:
        st = status(cluster, namespace, "rag")
        return st.get("version") == "0.5.1" and cond(cluster, namespace, "rag", "Ready").get("status") == "True"

    await wait_until(upgraded, timeout=120, what="rag upgraded to 0.5.1 and Ready")
    (backup,) = (kget(cluster, namespace, "opsrequests.operations.kubeblocks.io") or {})["items"]
    assert backup["spec"]["type"] == "Backup" and backup["spec"]["clusterName"] == "rag-pg"
    assert backup["status"]["phase"] == "Succeed"
    jobs = (kget(cluster, namespace, "jobs", "-l", "app.kubernetes.io/component=migration") or {})["items"]
    upgrade_jobs = [j for j in jobs if j["metadata"]["labels"].get("app.kubernetes.io/version") == "0.5.1"]
    assert upgrade_jobs, [j["metadata"]["labels"] for j in jobs]
    assert all(backup["metadata"]["creationTimestamp"] <= j["metadata"]["creationTimestamp"] for j in upgrade_jobs)
    upgrade = status(cluster, namespace, "rag")["upgrade"]
    assert "succeeded" in upgrade.get("backupMessage", ""), upgrade


Check = Callable[[Cluster, str, OperatorProcess], Awaitable[None]]

#: example file -> (the resource it defines, the Secrets its header asks for, what to check).
CASES: dict[str, tuple[str, dict[str, tuple[str, dict[str, str]]], Check]] = {
    "aperag-minimal.yaml": ("demo", {}, check_minimal),
    "aperag-external-db.yaml": ("demo", {}, check_external),  # its Secrets are in the file (placeholders)
    "aperag-production.yaml": (
        "rag",
        {
            "rag-api-keys": ("Opaque", {"apiKeys": "key-1,key-2"}),
            "rag-s3": ("Opaque", {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "secret"}),
            "rag-tls": ("kubernetes.io/tls", {"tls.crt": "not-a-real-certificate", "tls.key": "not-a-real-key"}),
        },
        check_production,
    ),
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(CASES)


@pytest.fixture
def simulated_kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == []


@pytest.mark.parametrize("example", sorted(CASES))
async def test_example_reaches_ready(
    example: str, cluster: Cluster, namespace: str, operator: OperatorProcess, simulated_kubeblocks: None
) -> None:
    name, secrets, check = CASES[example]
    for secret_name, (kind, data) in secrets.items():
        apply_yaml(cluster, secret(namespace, secret_name, data, kind))
    # As the example's header says; strict field validation refuses any field the CRD does not know.
    cluster.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", str(EXAMPLES / example))
    await wait_ready(cluster, namespace, name, limit=120)
    assert cond(cluster, namespace, name, "Degraded")["status"] == "False"
    await check(cluster, namespace, operator)


def test_examples_name_no_namespace() -> None:
    """They are applied with -n; a namespace in the file would send them elsewhere."""
    import yaml

    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in doc["metadata"], f"{path.name}: {doc['metadata']}"
