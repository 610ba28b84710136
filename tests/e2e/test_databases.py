"""Databases against the real control plane with the operator running: managed KubeBlocks Clusters (with
the simulated KubeBlocks controller and the real KubeBlocks CRDs), external databases, deletion policies,
and a cluster without KubeBlocks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import shared_dir
from tests.e2e.conftest import (
    CRD_FILE,
    OperatorProcess,
    apply_yaml,
    bare_cluster,
    kget,
    kubeblocks_simulator,
    start_operator,
)
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle, wait_ready
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

CLUSTERS = "clusters.apps.kubeblocks.io"
PG_ACCOUNT = "rag-pg-postgresql-account-postgres"


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {var["name"]: var for var in container.get("env", [])}


def secret_manifest(name: str, namespace: str, data: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": data,
        }
    )


def database(cluster: Cluster, ns: str, name: str, key: str) -> dict[str, Any]:
    for db in status(cluster, ns, name).get("databases", []):
        if db["name"] == key:
            result: dict[str, Any] = db
            return result
    return {}


def no_deployments(cluster: Cluster, ns: str) -> bool:
    deps = kget(cluster, ns, "deployments")
    return deps is not None and deps["items"] == []


@pytest.fixture(autouse=True)
def _kubeblocks_crds(request: pytest.FixtureRequest) -> None:
    # Every test here but the KubeBlocks-missing one runs against the real KubeBlocks CRDs.
    if "no_kubeblocks" not in request.fixturenames:
        request.getfixturevalue("upstream_crds")


async def test_first_install_waits_for_all_databases(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    # No KubeBlocks controller yet: the Clusters are created and stay without a phase.
    await wait_until(
        lambda: cond(cluster, namespace, "rag", "DatabasesReady").get("reason") == "ClustersNotReady",
        timeout=30,
        what="DatabasesReady=False ClustersNotReady",
    )
    pg = kget(cluster, namespace, CLUSTERS, "rag-pg")
    redis = kget(cluster, namespace, CLUSTERS, "rag-redis")
    assert pg is not None and redis is not None
    assert pg["spec"]["clusterDef"] == "postgresql" and redis["spec"]["clusterDef"] == "redis"
    await wait_idle(operator, namespace, "rag")
    # An expected wait: Progressing, not Degraded; the app workloads are not created.
    assert cond(cluster, namespace, "rag", "DatabasesReady")["status"] == "False"
    assert cond(cluster, namespace, "rag", "Progressing")["status"] == "True"
    assert cond(cluster, namespace, "rag", "Degraded")["status"] == "False"
    assert cond(cluster, namespace, "rag", "Ready")["status"] == "False"
    assert no_deployments(cluster, namespace)
    # ... while everything the pods need is there already
    assert kget(cluster, namespace, "configmap", "rag-config") is not None
    assert kget(cluster, namespace, "service", "rag-api") is not None
    dbs = status(cluster, namespace, "rag")["databases"]
    assert [db["name"] for db in dbs] == ["postgresql", "redis"]
    assert all(db["mode"] == "Managed" and not db["ready"] for db in dbs)

    with kubeblocks_simulator(cluster, namespace) as errors:
        await wait_ready(cluster, namespace, "rag", 90)
        assert not errors
    assert cond(cluster, namespace, "rag", "DatabasesReady")["status"] == "True"
    pg_status = database(cluster, namespace, "rag", "postgresql")
    assert pg_status["ready"] is True and pg_status["phase"] == "Running"
    assert pg_status["endpoint"] == "rag-pg-postgresql-postgresql:5432"
    api = kget(cluster, namespace, "deployment", "rag-api")
    assert api is not None
    env = env_of(api)
    assert env["POSTGRES_HOST"]["value"] == "rag-pg-postgresql-postgresql"
    assert env["POSTGRES_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": PG_ACCOUNT, "key": "password"}}
    assert env["REDIS_HOST"]["value"] == "rag-redis-redis-redis"
    assert env["FULLTEXT_TYPE"]["value"] == "postgres" and env["VECTOR_DB_TYPE"]["value"] == "pgvector"


async def test_abnormal_database_degrades_and_recovers(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    with kubeblocks_simulator(cluster, namespace):
        apply_yaml(cluster, manifest("rag", namespace))
        await wait_ready(cluster, namespace, "rag", 90)
        api = kget(cluster, namespace, "deployment", "rag-api")
        assert api is not None
        template_before = api["spec"]["template"]

        cluster.kubectl(
            "annotate", "-n", namespace, f"{CLUSTERS}/rag-pg", "--overwrite",
            "sim.kubeblocks.io/phase=Abnormal", "sim.kubeblocks.io/message=volume of rag-pg-postgresql-0 is full",
        )  # fmt: skip

        def degraded() -> bool:
            c = cond(cluster, namespace, "rag", "Degraded")
            return c.get("status") == "True" and c.get("reason") == "ClusterAbnormal"

        await wait_until(degraded, timeout=30, what="Degraded ClusterAbnormal")
        message = cond(cluster, namespace, "rag", "Degraded")["message"]
        assert "rag-pg" in message and "volume of rag-pg-postgresql-0 is full" in message
        assert status(cluster, namespace, "rag")["phase"] == "Degraded"
        assert cond(cluster, namespace, "rag", "DatabasesReady")["reason"] == "ClusterAbnormal"
        assert database(cluster, namespace, "rag", "postgresql")["phase"] == "Abnormal"

        # A spec change while the database is abnormal: the running pods are not rolled to it.
        apply_yaml(cluster, manifest("rag", namespace, {"app": {"env": [{"name": "FEATURE_X", "value": "on"}]}}))
        await wait_idle(operator, namespace, "rag", 3)
        api = kget(cluster, namespace, "deployment", "rag-api")
        assert api is not None and api["spec"]["template"] == template_before

        cluster.kubectl("annotate", "-n", namespace, f"{CLUSTERS}/rag-pg", "sim.kubeblocks.io/phase-")
        await wait_until(
            lambda: cond(cluster, namespace, "rag", "Degraded").get("status") == "False",
            timeout=30,
            what="no longer Degraded",
        )
        await wait_until(
            lambda: "FEATURE_X" in env_of(kget(cluster, namespace, "deployment", "rag-api") or {}),
            timeout=30,
            what="the held-back rollout happens",
        )
        await wait_ready(cluster, namespace, "rag", 60)

    def reasons() -> set[str]:
        evs = kget(cluster, namespace, "events", "--field-selector", "involvedObject.name=rag") or {"items": []}
        return {e["reason"] for e in evs["items"]}

    await wait_until(lambda: {"ClusterAbnormal", "Recovered"} <= reasons(), timeout=20, what="events")


def external_spec(pg_secret: str, redis_secret: str | None = None) -> dict[str, Any]:
    redis: dict[str, Any] = {"host": "redis.example.internal"}
    if redis_secret:
        redis["credentialsSecretRef"] = {"name": redis_secret}
    return {
        "databases": {
            "postgresql": {
                "external": {
                    "host": "pg.example.internal",
                    "database": "aperag",
                    "credentialsSecretRef": {"name": pg_secret},
                }
            },
            "redis": {"external": redis},
        }
    }


async def test_external_databases_with_a_late_secret_and_no_password_anywhere(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    apply_yaml(cluster, manifest("rag", namespace, external_spec("pg-creds")))

    def secret_missing() -> bool:
        c = cond(cluster, namespace, "rag", "DatabasesReady")
        return c.get("status") == "False" and c.get("reason") == "SecretMissing"

    await wait_until(secret_missing, timeout=30, what="DatabasesReady SecretMissing")
    message = cond(cluster, namespace, "rag", "DatabasesReady")["message"]
    assert "Secret pg-creds not found" in message
    degraded = cond(cluster, namespace, "rag", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SecretMissing"
    assert "pg-creds" in degraded["message"]
    assert no_deployments(cluster, namespace)
    clusters = kget(cluster, namespace, CLUSTERS)
    assert clusters is not None and clusters["items"] == []  # external databases: no Cluster at all

    # A Secret without the password key: the condition names the key.
    apply_yaml(cluster, secret_manifest("pg-creds", namespace, {"username": "aperag"}))
    await wait_until(
        lambda: (
            "Secret pg-creds has no key password"
            in cond(cluster, namespace, "rag", "DatabasesReady").get("message", "")
        ),
        timeout=30,
        what="condition names the missing key",
    )
    # The Secret is completed: the reconcile continues by itself.
    apply_yaml(cluster, secret_manifest("pg-creds", namespace, {"username": "aperag", "password": password}))
    await wait_ready(cluster, namespace, "rag", 60)
    assert cond(cluster, namespace, "rag", "Degraded")["status"] == "False"
    assert {db["name"]: db["mode"] for db in status(cluster, namespace, "rag")["databases"]} == {
        "postgresql": "External",
        "redis": "External",
    }
    env = env_of(kget(cluster, namespace, "deployment", "rag-worker") or {})
    assert env["POSTGRES_HOST"]["value"] == "pg.example.internal"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "pg-creds", "key": "password"}
    assert "REDIS_PASSWORD" not in env

    # The password is nowhere but in its Secret.
    places = {
        "configmap": kget(cluster, namespace, "configmap", "rag-config"),
        "status": kget(cluster, namespace, "aperag", "rag"),
        "events": kget(cluster, namespace, "events"),
        "deployments": kget(cluster, namespace, "deployments"),
    }
    for where, obj in places.items():
        assert password not in json.dumps(obj), f"password found in {where}"
    assert password not in operator.logs()


async def test_mixed_managed_postgresql_external_redis(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_yaml(cluster, secret_manifest("redis-creds", namespace, {"username": "default", "password": "x" * 16}))
    spec = external_spec("unused", "redis-creds")
    spec["databases"]["postgresql"] = {"managed": {"replicas": 1}}
    with kubeblocks_simulator(cluster, namespace):
        apply_yaml(cluster, manifest("rag", namespace, spec))
        await wait_ready(cluster, namespace, "rag", 90)
    assert kget(cluster, namespace, CLUSTERS, "rag-pg") is not None
    assert kget(cluster, namespace, CLUSTERS, "rag-redis") is None
    modes = {db["name"]: db["mode"] for db in status(cluster, namespace, "rag")["databases"]}
    assert modes == {"postgresql": "Managed", "redis": "External"}
    env = env_of(kget(cluster, namespace, "deployment", "rag-api") or {})
    assert env["POSTGRES_HOST"]["value"] == "rag-pg-postgresql-postgresql"
    assert env["REDIS_HOST"]["value"] == "redis.example.internal"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-creds", "key": "password"}


async def test_deletion_policies(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    policies = {"keep": "Retain", "drop": "Delete", "wipe": "WipeOut"}
    with kubeblocks_simulator(cluster, namespace):
        for name, policy in policies.items():
            apply_yaml(cluster, manifest(name, namespace, {"databases": {"deletionPolicy": policy}}))
        for name in policies:
            await wait_ready(cluster, namespace, name, 90)
        expected_termination = {"Retain": "DoNotTerminate", "Delete": "Delete", "WipeOut": "WipeOut"}
        for name, policy in policies.items():
            for suffix in ("pg", "redis"):
                obj = kget(cluster, namespace, CLUSTERS, f"{name}-{suffix}")
                assert obj is not None
                assert obj["spec"]["terminationPolicy"] == expected_termination[policy]
                owners = obj["metadata"].get("ownerReferences") or []
                if policy == "Retain":
                    assert owners == []
                else:
                    assert [o["name"] for o in owners] == [name] and owners[0]["kind"] == "ApeRAG"
            assert database(cluster, namespace, name, "postgresql")["deletionPolicy"] == policy

        for name in policies:
            cluster.kubectl("delete", "-n", namespace, f"aperag/{name}", "--wait=true", "--timeout=60s")

        def collected() -> bool:
            return all(kget(cluster, namespace, CLUSTERS, f"{n}-{s}") is None for n in ("drop", "wipe")
                       for s in ("pg", "redis"))  # fmt: skip

        await wait_until(collected, timeout=60, what="Delete/WipeOut Clusters garbage-collected")
        await wait_until(
            lambda: kget(cluster, namespace, "deployment", "keep-api") is None, timeout=60, what="app gone"
        )
    # Retain: the Clusters (and so their volumes and account Secrets) survive the ApeRAG.
    for suffix in ("pg", "redis"):
        kept = kget(cluster, namespace, CLUSTERS, f"keep-{suffix}")
        assert kept is not None and kept["metadata"].get("deletionTimestamp") is None
    assert kget(cluster, namespace, "secret", "keep-pg-postgresql-account-postgres") is not None


async def test_database_spec_change_updates_the_cluster(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    with kubeblocks_simulator(cluster, namespace):
        apply_yaml(cluster, manifest("rag", namespace))
        await wait_ready(cluster, namespace, "rag", 90)
        # KubeBlocks is slow to take up the next change: observedGeneration lags.
        cluster.kubectl("annotate", "-n", namespace, f"{CLUSTERS}/rag-pg", "sim.kubeblocks.io/observe=false")
        spec = {
            "databases": {
                "deletionPolicy": "Delete",
                "postgresql": {"managed": {"replicas": 2, "storage": {"size": "30Gi"}}},
            }
        }
        apply_yaml(cluster, manifest("rag", namespace, spec))

        def updated() -> bool:
            pg = kget(cluster, namespace, CLUSTERS, "rag-pg") or {}
            component = (pg.get("spec", {}).get("componentSpecs") or [{}])[0]
            claim = (component.get("volumeClaimTemplates") or [{}])[0]
            return component.get("replicas") == 2 and claim["spec"]["resources"]["requests"]["storage"] == "30Gi"

        await wait_until(updated, timeout=30, what="Cluster rag-pg updated")
        await wait_until(
            lambda: "not yet observed" in cond(cluster, namespace, "rag", "DatabasesReady").get("message", ""),
            timeout=30,
            what="DatabasesReady waits for the new generation",
        )
        assert cond(cluster, namespace, "rag", "Degraded")["status"] == "False"
        # The deletion policy moved to Delete: the Cluster now has the owner reference.
        pg = kget(cluster, namespace, CLUSTERS, "rag-pg") or {}
        assert pg["spec"]["terminationPolicy"] == "Delete"
        assert [o["kind"] for o in pg["metadata"].get("ownerReferences") or []] == ["ApeRAG"]

        cluster.kubectl("annotate", "-n", namespace, f"{CLUSTERS}/rag-pg", "sim.kubeblocks.io/observe-")
        await wait_until(
            lambda: cond(cluster, namespace, "rag", "DatabasesReady").get("status") == "True",
            timeout=30,
            what="DatabasesReady again",
        )
        await wait_ready(cluster, namespace, "rag", 60)
        # Back to Retain: the owner reference goes, so deleting the ApeRAG keeps the Cluster.
        # (The storage stays: shrinking it is refused by the CRD.)
        spec["databases"]["deletionPolicy"] = "Retain"
        refused = apply_yaml(cluster, manifest("rag", namespace, {}), check=False)
        assert refused.returncode != 0 and "storage size cannot shrink" in refused.stderr
        apply_yaml(cluster, manifest("rag", namespace, spec))
        await wait_until(
            lambda: not ((kget(cluster, namespace, CLUSTERS, "rag-pg") or {}).get("metadata", {}).get(
                "ownerReferences")),
            timeout=30,
            what="owner reference removed",
        )  # fmt: skip


# --- a cluster without KubeBlocks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_kubeblocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A separate fresh cluster that never gets the KubeBlocks CRDs, with the ApeRAG CRD."""
    with bare_cluster(tmp_path_factory, "no-kubeblocks") as bare:
        yield bare


async def test_kubeblocks_not_installed(no_kubeblocks: Cluster, tmp_path: Path) -> None:
    bare = no_kubeblocks
    ns = f"no-kb-{uuid.uuid4().hex[:6]}"
    bare.kubectl("create", "namespace", ns)
    await wait_until(lambda: kget(bare, ns, "serviceaccount", "default") is not None, timeout=30, what="default SA")
    op = start_operator(bare, tmp_path / "operator.log", "--namespace", ns)
    try:
        await wait_until(lambda: op.health() is not None, timeout=60, what="operator liveness")
        apply_yaml(bare, manifest("rag", ns))
        apply_yaml(bare, secret_manifest("pg-creds", ns, {"username": "u", "password": "p"}))
        apply_yaml(bare, manifest("ext", ns, external_spec("pg-creds")))

        def not_installed() -> bool:
            c = cond(bare, ns, "rag", "DatabasesReady")
            return c.get("status") == "False" and c.get("reason") == "KubeBlocksNotInstalled"

        await wait_until(not_installed, timeout=30, what="KubeBlocksNotInstalled")
        degraded = cond(bare, ns, "rag", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "KubeBlocksNotInstalled"
        assert "clusters.apps.kubeblocks.io" in degraded["message"]
        assert status(bare, ns, "rag")["phase"] == "Degraded"
        # Nothing else breaks: the other children are there, the app workloads are held back, and an
        # ApeRAG with external databases in the same namespace becomes Ready.
        assert kget(bare, ns, "configmap", "rag-config") is not None
        assert kget(bare, ns, "service", "rag-api") is not None
        assert kget(bare, ns, "deployment", "rag-api") is None
        await wait_ready(bare, ns, "ext", 60)
        await wait_idle(op, ns, "rag")
        assert op.proc.poll() is None
        assert "Traceback" not in op.logs()

        # KubeBlocks installed later: the operator notices without a restart and carries on.
        crd_root = shared_dir() / "fixtures" / "crds" / "kubeblocks-v1.0.2"
        bare.kubectl("apply", "--server-side", "--field-manager=aperag-tests", "-f", str(crd_root))
        bare.wait_established("clusters.apps.kubeblocks.io")
        with kubeblocks_simulator(bare, ns) as errors:
            await wait_ready(bare, ns, "rag", 120)
        assert errors == []
        assert kget(bare, ns, CLUSTERS, "rag-pg") is not None
        assert op.proc.poll() is None  # the same process
    finally:
        op.stop()


@pytest.mark.usefixtures("aperag_crd")
def test_examples_are_accepted(cluster: Cluster, namespace: str) -> None:
    root = CRD_FILE.parents[1] / "examples"
    for example in ("aperag-minimal.yaml", "aperag-external-db.yaml"):
        cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(root / example))
