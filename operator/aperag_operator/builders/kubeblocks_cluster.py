"""KubeBlocks 1.0 ``apps.kubeblocks.io/v1`` Clusters for the managed databases of an ApeRAG.

Pure: spec in, plain dicts out. The shapes follow the KubeBlocks 1.0 addons (ClusterDefinitions
postgresql/redis/qdrant, ComponentDefinition elasticsearch-8) and are validated in the tests against
the upstream CRD schema. The naming facts (Service and account Secret names) are KubeBlocks' own:
``<cluster>-<component>-<service>`` and ``<cluster>-<component>-account-<user>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aperag_operator.spec.databases import (
    DatabasesSpec,
    DeletionPolicy,
    ManagedElasticsearch,
    ManagedPostgreSQL,
    ManagedQdrant,
    ManagedRedis,
    StorageSpec,
)

KUBEBLOCKS_API_VERSION = "apps.kubeblocks.io/v1"
KUBEBLOCKS_GROUP = "apps.kubeblocks.io"
CLUSTER_KIND = "Cluster"
CLUSTER_PLURAL = "clusters"
CLUSTER_CRD_NAME = f"{CLUSTER_PLURAL}.{KUBEBLOCKS_GROUP}"

DatabaseKey = Literal["postgresql", "redis", "qdrant", "elasticsearch"]
DATABASE_KEYS: tuple[DatabaseKey, ...] = ("postgresql", "redis", "qdrant", "elasticsearch")

# Retain keeps the Cluster even against a direct `kubectl delete cluster`: DoNotTerminate makes
# KubeBlocks refuse to tear it down.
TERMINATION_POLICIES: dict[DeletionPolicy, str] = {
    "Retain": "DoNotTerminate",
    "Delete": "Delete",
    "WipeOut": "WipeOut",
}


@dataclass(frozen=True)
class EngineFacts:
    """What KubeBlocks' addon for one engine names things (cluster suffix is ours)."""

    cluster_suffix: str
    component: str
    service: str
    port: int
    # System account whose Secret the app logs in with; None when the engine has no accounts.
    account: str | None


ENGINES: dict[DatabaseKey, EngineFacts] = {
    "postgresql": EngineFacts("pg", "postgresql", "postgresql", 5432, "postgres"),
    "redis": EngineFacts("redis", "redis", "redis", 6379, "default"),
    "qdrant": EngineFacts("qdrant", "qdrant", "qdrant", 6333, None),
    # The Elasticsearch addon requires the component holding the master role to be named "master";
    # one component holds all roles, so it keeps its name when it grows from single- to multi-node.
    "elasticsearch": EngineFacts("es", "master", "http", 9200, "elastic"),
}


@dataclass(frozen=True)
class ManagedDatabase:
    """One managed database of an ApeRAG and the KubeBlocks names derived from it."""

    key: DatabaseKey
    cluster_name: str
    component: str
    service_name: str
    port: int
    account_secret_name: str | None
    deletion_policy: DeletionPolicy

    @property
    def termination_policy(self) -> str:
        return TERMINATION_POLICIES[self.deletion_policy]


def cluster_name(name: str, key: DatabaseKey) -> str:
    """The Cluster of database ``key`` of the ApeRAG ``name``: ``<name>-pg``, ``<name>-redis``, ..."""
    return f"{name}-{ENGINES[key].cluster_suffix}"


def service_name(name: str, key: DatabaseKey) -> str:
    facts = ENGINES[key]
    return f"{cluster_name(name, key)}-{facts.component}-{facts.service}"


def account_secret_name(name: str, key: DatabaseKey) -> str | None:
    facts = ENGINES[key]
    if facts.account is None:
        return None
    return f"{cluster_name(name, key)}-{facts.component}-account-{facts.account}"


ManagedSpec = ManagedPostgreSQL | ManagedRedis | ManagedQdrant | ManagedElasticsearch


def managed_specs(databases: DatabasesSpec) -> list[tuple[DatabaseKey, ManagedSpec]]:
    """The managed databases in use, in a fixed order (PostgreSQL, Redis, Qdrant, Elasticsearch)."""
    out: list[tuple[DatabaseKey, ManagedSpec]] = []
    if databases.postgresql.managed is not None:
        out.append(("postgresql", databases.postgresql.managed))
    if databases.redis.managed is not None:
        out.append(("redis", databases.redis.managed))
    qdrant = databases.vector_store.effective_qdrant
    if qdrant is not None and qdrant.managed is not None:
        out.append(("qdrant", qdrant.managed))
    elasticsearch = databases.full_text_store.effective_elasticsearch
    if elasticsearch is not None and elasticsearch.managed is not None:
        out.append(("elasticsearch", elasticsearch.managed))
    return out


def managed_databases(name: str, databases: DatabasesSpec) -> list[ManagedDatabase]:
    """Every managed database with its Cluster, Service and account Secret names."""
    return [
        ManagedDatabase(
            key=key,
            cluster_name=cluster_name(name, key),
            component=ENGINES[key].component,
            service_name=service_name(name, key),
            port=ENGINES[key].port,
            account_secret_name=account_secret_name(name, key),
            deletion_policy=spec.deletion_policy or databases.deletion_policy,
        )
        for key, spec in managed_specs(databases)
    ]


def _volume_claim_templates(storage: StorageSpec) -> list[dict[str, Any]]:
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    # "data" is the volume name every one of these ComponentDefinitions mounts its data directory from.
    return [{"name": "data", "spec": claim_spec}]


def _component(cluster: str, key: DatabaseKey, spec: ManagedSpec) -> dict[str, Any]:
    component: dict[str, Any] = {
        "name": ENGINES[key].component,
        "serviceVersion": spec.service_version,
        "replicas": getattr(spec, "replicas", 1),
    }
    resources = spec.resources.to_kubernetes()
    if resources:
        component["resources"] = resources
    component["volumeClaimTemplates"] = _volume_claim_templates(spec.storage)
    if key == "postgresql":
        # The PostgreSQL ComponentDefinition tells Patroni to find its members by this label; the
        # addon's examples mark it as required, valued <cluster>-<component>.
        component["labels"] = {
            "apps.kubeblocks.postgres.patroni/scope": f"{cluster}-{ENGINES[key].component}"
        }
    if key == "elasticsearch":
        component["componentDef"] = "elasticsearch-8"
        if component["replicas"] == 1:
            variables = {"mode": "single-node"}
        else:
            variables = {"mode": "multi-node", "roles": "master,data,ingest,transform"}
        component["configs"] = [{"name": "es-cm", "variables": variables}]
    return component


_TOPOLOGIES: dict[DatabaseKey, tuple[str, str] | None] = {
    "postgresql": ("postgresql", "replication"),
    # "replication" would need a sentinel component; one ApeRAG needs one Redis.
    "redis": ("redis", "standalone"),
    "qdrant": ("qdrant", "cluster"),
    # No ClusterDefinition: the component names its ComponentDefinition itself.
    "elasticsearch": None,
}


def build_database_cluster(
    name: str,
    namespace: str,
    key: DatabaseKey,
    spec: ManagedSpec,
    deletion_policy: DeletionPolicy,
    owner_ref: dict[str, Any] | None,
    labels: dict[str, str],
) -> dict[str, Any]:
    """One KubeBlocks Cluster for database ``key``."""
    cluster = cluster_name(name, key)
    metadata: dict[str, Any] = {
        "name": cluster,
        "namespace": namespace,
        "labels": {**labels, "app.kubernetes.io/component": key},
    }
    # Retain must survive the deletion of the ApeRAG: an owner reference would let the garbage
    # collector delete the Cluster with it.
    if owner_ref is not None and deletion_policy != "Retain":
        metadata["ownerReferences"] = [owner_ref]
    cluster_spec: dict[str, Any] = {"terminationPolicy": TERMINATION_POLICIES[deletion_policy]}
    topology = _TOPOLOGIES[key]
    if topology is not None:
        cluster_spec["clusterDef"], cluster_spec["topology"] = topology
    cluster_spec["componentSpecs"] = [_component(cluster, key, spec)]
    return {
        "apiVersion": KUBEBLOCKS_API_VERSION,
        "kind": CLUSTER_KIND,
        "metadata": metadata,
        "spec": cluster_spec,
    }


def build_database_clusters(
    name: str,
    namespace: str,
    databases: DatabasesSpec,
    owner_ref: dict[str, Any] | None,
    labels: dict[str, str],
) -> list[dict[str, Any]]:
    """A KubeBlocks Cluster per managed database of the ApeRAG ``name`` (none when all are external).

    ``owner_ref`` is the ApeRAG's owner reference (controller=True, blockOwnerDeletion=True); it is only
    attached to Clusters whose deletion policy is Delete or WipeOut. ``labels`` are the standard
    labels of the ApeRAG's children; ``app.kubernetes.io/component`` is set to the database.
    """
    return [
        build_database_cluster(
            name, namespace, key, spec, spec.deletion_policy or databases.deletion_policy, owner_ref, labels
        )
        for key, spec in managed_specs(databases)
    ]
