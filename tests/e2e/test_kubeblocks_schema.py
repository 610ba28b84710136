"""Against the real API server: generated Clusters pass the upstream KubeBlocks CRD, the databases CEL
rules of the ApeRAG CRD hold, and the KubeBlocks simulator behaves like KubeBlocks."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from aperag_operator.builders import backup_opsrequest
from aperag_operator.builders.common import Instance, Release
from aperag_operator.builders.kubeblocks_cluster import build_database_clusters, managed_databases
from aperag_operator.spec.databases import DatabasesSpec
from aperag_operator.spec.model import parse_spec
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret, Service

from e2e.simulators.kubeblocks import (
    ANNOTATION_BACKUP_PHASE,
    ANNOTATION_MESSAGE,
    ANNOTATION_PHASE,
    Cluster,
    KubeBlocksSimulator,
    OpsRequest,
)
from tests.harness.cluster import Cluster as LocalCluster
from tests.harness.wait import wait_until

pytestmark = pytest.mark.cluster

LABELS = {"app.kubernetes.io/name": "aperag", "app.kubernetes.io/managed-by": "aperag-operator"}

SPEC_SHAPES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all": {"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}},
    "big": {
        "deletionPolicy": "WipeOut",
        "postgresql": {
            "managed": {
                "replicas": 3,
                "serviceVersion": "16.9.0",
                "storage": {"size": "100Gi", "storageClassName": "fast-ssd"},
                "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
            }
        },
        "redis": {"managed": {"deletionPolicy": "Delete"}},
        "vectorStore": {"type": "qdrant", "qdrant": {"managed": {"replicas": 3}}},
        "fullTextStore": {"type": "elasticsearch", "elasticsearch": {"managed": {"replicas": 3}}},
    },
}


def apply(cluster: LocalCluster, obj: dict[str, Any], namespace: str) -> Any:
    return cluster.kubectl(
        "apply", "--server-side", "--field-manager=aperag-tests", "-n", namespace, "-f", "-",
        input=json.dumps(obj), check=False,
    )  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SPEC_SHAPES))
def test_generated_clusters_pass_the_upstream_schema(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str, shape: str
) -> None:
    spec = DatabasesSpec.model_validate(SPEC_SHAPES[shape])
    clusters = build_database_clusters(f"s-{shape}", namespace, spec, None, LABELS)
    assert clusters
    for obj in clusters:
        result = apply(cluster, obj, namespace)
        assert result.returncode == 0, f"{obj['metadata']['name']}: {result.stderr}"
        stored = json.loads(
            cluster.kubectl(
                "get", "clusters.apps.kubeblocks.io", obj["metadata"]["name"], "-n", namespace, "-o", "json"
            ).stdout
        )
        # Nothing was pruned: every field we sent is known to the schema.
        assert _contains(stored["spec"], obj["spec"]), (obj["spec"], stored["spec"])


def test_the_upstream_schema_is_really_enforced(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str
) -> None:
    (pg, _redis) = build_database_clusters("bad", namespace, DatabasesSpec(), None, LABELS)
    pg["spec"]["terminationPolicy"] = "Halt"
    result = apply(cluster, pg, namespace)
    assert result.returncode != 0 and "terminationPolicy" in result.stderr


def test_growing_a_cluster_updates_it_in_place(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str
) -> None:
    small = DatabasesSpec.model_validate({})
    big = DatabasesSpec.model_validate(
        {"postgresql": {"managed": {"replicas": 2, "storage": {"size": "50Gi"}, "serviceVersion": "16.9.0"}}}
    )
    for spec in (small, big):
        for obj in build_database_clusters("grow", namespace, spec, None, LABELS):
            result = apply(cluster, obj, namespace)
            assert result.returncode == 0, result.stderr
    stored = json.loads(
        cluster.kubectl("get", "clusters.apps.kubeblocks.io", "grow-pg", "-n", namespace, "-o", "json").stdout
    )
    component = stored["spec"]["componentSpecs"][0]
    assert component["replicas"] == 2
    assert component["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"


def _contains(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(actual) == len(wanted) and all(map(_contains, actual, wanted))
    return bool(actual == wanted)


def test_backup_opsrequest_passes_the_upstream_schema(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str
) -> None:
    inst = Instance("up", namespace, "00000000-0000-0000-0000-00000000000b", parse_spec({"version": "0.5.0"}))
    request = backup_opsrequest.request("up", "up-pg", Release("0.5.0", "ghcr.io/apecloud/aperag:0.5.0"), 1)
    ops = backup_opsrequest.build(inst, request)
    ops["metadata"].pop("ownerReferences")  # no ApeRAG object behind this test's uid
    result = apply(cluster, ops, namespace)
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        cluster.kubectl("get", "opsrequests.operations.kubeblocks.io", ops["metadata"]["name"], "-n", namespace,
                        "-o", "json").stdout
    )  # fmt: skip
    # Nothing was pruned: every field we sent is known to the schema.
    assert _contains(stored["spec"], ops["spec"]), (ops["spec"], stored["spec"])
    ops["spec"]["type"] = "Snapshot"
    ops["metadata"]["name"] = "bad-type"
    refused = apply(cluster, ops, namespace)
    assert refused.returncode != 0 and "spec.type" in refused.stderr


# --- the databases CEL rules of the ApeRAG CRD -------------------------------------------------------------


def aperag(name: str, databases: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "aperag.io/v1alpha1",
        "kind": "ApeRAG",
        "metadata": {"name": name},
        "spec": {"version": "v0.1.0", "databases": databases},
    }


@pytest.mark.parametrize(
    "first, second, message",
    [
        (
            {"postgresql": {"managed": {"storage": {"size": "20Gi"}}}},
            {"postgresql": {"managed": {"storage": {"size": "10Gi"}}}},
            "storage size cannot shrink",
        ),
        ({}, {"vectorStore": {"type": "qdrant"}}, "vectorStore.type is immutable"),
        ({}, {"fullTextStore": {"type": "elasticsearch"}}, "fullTextStore.type is immutable"),
        (
            {"redis": {"managed": {}}},
            {"redis": {"external": {"host": "redis.example"}}},
            "cannot switch between managed and external",
        ),
        (
            {},
            {"postgresql": {"managed": {"serviceVersion": "17.5.0"}}},
            "major version of a managed database cannot change",
        ),
        (
            {"postgresql": {"managed": {"storage": {"storageClassName": "a"}}}},
            {"postgresql": {"managed": {"storage": {"storageClassName": "b"}}}},
            "storageClassName is immutable",
        ),
    ],
)
def test_cel_refuses_changes_kubeblocks_cannot_make(
    cluster: LocalCluster,
    aperag_crd: str,
    namespace: str,
    first: dict[str, Any],
    second: dict[str, Any],
    message: str,
) -> None:
    result = apply(cluster, aperag("cel", first), namespace)
    assert result.returncode == 0, result.stderr
    result = apply(cluster, aperag("cel", second), namespace)
    assert result.returncode != 0, f"accepted: {second}"
    assert message in result.stderr


def test_cel_allows_growth(cluster: LocalCluster, aperag_crd: str, namespace: str) -> None:
    assert apply(cluster, aperag("grow", {}), namespace).returncode == 0
    grown = {
        "postgresql": {"managed": {"replicas": 3, "storage": {"size": "40Gi"}, "serviceVersion": "16.9.0"}}
    }
    result = apply(cluster, aperag("grow", grown), namespace)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "databases, message",
    [
        (
            {
                "postgresql": {
                    "managed": {},
                    "external": {"host": "db", "credentialsSecretRef": {"name": "s"}},
                }
            },
            "exactly one of managed or external",
        ),
        ({"postgresql": {"external": {"port": 5432}}}, "exactly one of host or urlSecretRef"),
        ({"vectorStore": {"qdrant": {"managed": {}}}}, "qdrant may only be set when type is qdrant"),
        ({"postgresql": {"managed": {"storage": {"size": "lots"}}}}, "size"),
    ],
)
def test_cel_refuses_bad_databases(
    cluster: LocalCluster, aperag_crd: str, namespace: str, databases: dict[str, Any], message: str
) -> None:
    result = apply(cluster, aperag("bad", databases), namespace)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_defaults_are_stored(cluster: LocalCluster, aperag_crd: str, namespace: str) -> None:
    assert apply(cluster, aperag("defaults", {}), namespace).returncode == 0
    stored = yaml.safe_load(
        cluster.kubectl("get", "aperag", "defaults", "-n", namespace, "-o", "yaml").stdout
    )
    databases = stored["spec"]["databases"]
    assert databases["deletionPolicy"] == "Retain"
    assert databases["postgresql"]["managed"]["storage"]["size"] == "20Gi"
    assert databases["redis"]["managed"]["resources"]["limits"]["memory"] == "512Mi"
    assert databases["vectorStore"]["type"] == "pgvector"
    assert DatabasesSpec.model_validate(databases) == DatabasesSpec()


# --- the KubeBlocks simulator ----------------------------------------------------------------------------


async def test_simulator_runs_clusters_and_creates_secrets_and_services(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str, kube: AsyncClient
) -> None:
    spec = DatabasesSpec.model_validate(SPEC_SHAPES["all"])
    async with KubeBlocksSimulator(kube, namespace) as sim:
        for obj in build_database_clusters("sim", namespace, spec, None, LABELS):
            assert apply(cluster, obj, namespace).returncode == 0
        for db in managed_databases("sim", spec):

            async def running(name: str = db.cluster_name) -> bool:
                status = (await kube.get(Cluster, name, namespace=namespace)).to_dict().get("status") or {}  # type: ignore[no-untyped-call]
                return bool(status.get("phase") == "Running" and status.get("observedGeneration") == 1)

            await wait_until(running, timeout=30, what=f"Cluster {db.cluster_name} Running")
            service = await kube.get(Service, db.service_name, namespace=namespace)
            assert service.spec is not None and service.spec.ports is not None
            assert db.port in [port.port for port in service.spec.ports]
            assert service.metadata is not None and service.metadata.ownerReferences
            assert service.metadata.ownerReferences[0].name == db.cluster_name
            if db.account_secret_name is not None:
                secret = await kube.get(Secret, db.account_secret_name, namespace=namespace)
                assert secret.data is not None and {"username", "password"} <= set(secret.data)
        assert not sim.errors


async def test_simulator_abnormal_on_demand_and_generation(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str, kube: AsyncClient
) -> None:
    (pg, _redis) = build_database_clusters("sick", namespace, DatabasesSpec(), None, LABELS)

    async def status() -> dict[str, Any]:
        obj = (await kube.get(Cluster, "sick-pg", namespace=namespace)).to_dict()  # type: ignore[no-untyped-call]
        return dict(obj.get("status") or {})

    def phase_is(phase: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await status()).get("phase") == phase

        return check

    async with KubeBlocksSimulator(kube, namespace, provisioning_seconds=0.2) as sim:
        assert apply(cluster, pg, namespace).returncode == 0
        assert (await status()).get("phase") in (None, "Creating", "Running")
        await wait_until(phase_is("Running"), timeout=30, what="Running")
        pg["metadata"]["annotations"] = {ANNOTATION_PHASE: "Abnormal"}
        assert apply(cluster, pg, namespace).returncode == 0
        await wait_until(phase_is("Abnormal"), timeout=30, what="Abnormal")
        assert (await status())["components"]["postgresql"]["phase"] == "Failed"
        pg["metadata"]["annotations"] = {}
        pg["spec"]["componentSpecs"][0]["replicas"] = 2
        assert apply(cluster, pg, namespace).returncode == 0
        await wait_until(phase_is("Running"), timeout=30, what="Running again")
        assert (await status())["observedGeneration"] == 2
        assert not sim.errors


async def test_simulator_completes_or_fails_backup_opsrequests(
    cluster: LocalCluster, upstream_crds: list[str], namespace: str, kube: AsyncClient
) -> None:
    """Backups on a healthy Cluster succeed; a Cluster annotated to fail them fails them with its message;
    a backup of a Cluster that does not exist fails."""
    inst = Instance("bk", namespace, "00000000-0000-0000-0000-00000000000c", parse_spec({"version": "0.5.0"}))
    (good, doomed) = [
        build_database_clusters(name, namespace, DatabasesSpec(), None, LABELS)[0] for name in ("good", "doomed")
    ]
    doomed["metadata"]["annotations"] = {ANNOTATION_BACKUP_PHASE: "Failed", ANNOTATION_MESSAGE: "disk full"}
    release = Release("0.5.0", "ghcr.io/apecloud/aperag:0.5.0")

    async def phase(name: str) -> str:
        obj = (await kube.get(OpsRequest, name, namespace=namespace)).to_dict()  # type: ignore[no-untyped-call]
        return str((obj.get("status") or {}).get("phase") or "")

    async with KubeBlocksSimulator(kube, namespace, provisioning_seconds=0.3) as sim:
        for obj in (good, doomed):  # first: a backup of a Cluster that does not exist (yet) fails
            assert apply(cluster, obj, namespace).returncode == 0
        expected = {}
        for cluster_name, outcome in (("good-pg", "Succeed"), ("doomed-pg", "Failed"), ("missing-pg", "Failed")):
            ops = backup_opsrequest.build(inst, backup_opsrequest.request(cluster_name, cluster_name, release, 1))
            ops["metadata"].pop("ownerReferences")
            assert apply(cluster, ops, namespace).returncode == 0
            expected[ops["metadata"]["name"]] = outcome
        for name, outcome in expected.items():

            async def finished(name: str = name, outcome: str = outcome) -> bool:
                return await phase(name) == outcome

            await wait_until(finished, timeout=30, what=f"OpsRequest {name} {outcome}")
        doomed_ops = next(n for n in expected if n.startswith("doomed-pg"))
        obj = (await kube.get(OpsRequest, doomed_ops, namespace=namespace)).to_dict()  # type: ignore[no-untyped-call]
        assert obj["status"]["conditions"][0]["message"] == "disk full"
        assert obj["status"]["completionTimestamp"]
        assert not sim.errors
