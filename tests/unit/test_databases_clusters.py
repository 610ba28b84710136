"""KubeBlocks Cluster builder: shapes per engine, deletion policies, and the upstream CRD schema."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aperag_operator.builders.kubeblocks_cluster import (
    build_database_clusters,
    managed_databases,
)
from aperag_operator.spec.databases import DatabasesSpec

KUBEBLOCKS_CRD = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "fixtures"
    / "crds"
    / "kubeblocks-v1.0.2"
    / "apps.kubeblocks.io_clusters.yaml"
)
OWNER = {
    "apiVersion": "aperag.io/v1alpha1",
    "kind": "ApeRAG",
    "name": "rag",
    "uid": "0b6b2e6c-0000-4000-8000-000000000001",
    "controller": True,
    "blockOwnerDeletion": True,
}
LABELS = {"app.kubernetes.io/name": "aperag", "app.kubernetes.io/instance": "rag"}

ALL_MANAGED = {
    "vectorStore": {"type": "qdrant"},
    "fullTextStore": {"type": "elasticsearch"},
}

# Spec shapes every generated Cluster must pass the upstream schema with.
SPEC_SHAPES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-managed": ALL_MANAGED,
    "all-managed-big": {
        "deletionPolicy": "WipeOut",
        "postgresql": {
            "managed": {
                "replicas": 3,
                "serviceVersion": "16.9.0",
                "storage": {"size": "100Gi", "storageClassName": "fast-ssd"},
                "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
            }
        },
        "redis": {"managed": {"deletionPolicy": "Retain", "resources": {"limits": {"cpu": "1"}}}},
        "vectorStore": {
            "type": "qdrant",
            "qdrant": {"managed": {"replicas": 3, "storage": {"size": "50Gi"}}},
        },
        "fullTextStore": {"type": "elasticsearch", "elasticsearch": {"managed": {"replicas": 3}}},
    },
    "mixed": {
        "deletionPolicy": "Delete",
        "redis": {"external": {"host": "redis.example", "credentialsSecretRef": {"name": "redis-creds"}}},
        "fullTextStore": {"type": "elasticsearch"},
    },
}


def clusters_for(data: dict[str, Any], name: str = "rag") -> list[dict[str, Any]]:
    return build_database_clusters(name, "team-a", DatabasesSpec.model_validate(data), OWNER, LABELS)


def by_name(clusters: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {cluster["metadata"]["name"]: cluster for cluster in clusters}


def test_defaults_give_postgresql_and_redis() -> None:
    clusters = by_name(clusters_for({}))
    assert sorted(clusters) == ["rag-pg", "rag-redis"]
    pg = clusters["rag-pg"]
    assert pg["apiVersion"] == "apps.kubeblocks.io/v1" and pg["kind"] == "Cluster"
    assert pg["metadata"]["namespace"] == "team-a"
    assert pg["spec"]["clusterDef"] == "postgresql" and pg["spec"]["topology"] == "replication"
    (component,) = pg["spec"]["componentSpecs"]
    assert component["name"] == "postgresql"
    assert component["serviceVersion"].startswith("16.")
    assert component["replicas"] == 1
    assert component["labels"] == {"apps.kubeblocks.postgres.patroni/scope": "rag-pg-postgresql"}
    assert component["volumeClaimTemplates"] == [
        {
            "name": "data",
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
        }
    ]
    redis = clusters["rag-redis"]
    assert redis["spec"]["clusterDef"] == "redis" and redis["spec"]["topology"] == "standalone"
    assert redis["spec"]["componentSpecs"][0]["name"] == "redis"
    assert redis["spec"]["componentSpecs"][0]["serviceVersion"].startswith("7.2.")


def test_qdrant_and_elasticsearch() -> None:
    clusters = by_name(clusters_for(ALL_MANAGED))
    assert sorted(clusters) == ["rag-es", "rag-pg", "rag-qdrant", "rag-redis"]
    qdrant = clusters["rag-qdrant"]["spec"]
    assert qdrant["clusterDef"] == "qdrant" and qdrant["topology"] == "cluster"
    assert qdrant["componentSpecs"][0]["name"] == "qdrant"
    es = clusters["rag-es"]["spec"]
    assert "clusterDef" not in es and "topology" not in es
    (component,) = es["componentSpecs"]
    assert component["componentDef"] == "elasticsearch-8"
    assert component["serviceVersion"].startswith("8.")
    assert component["configs"] == [{"name": "es-cm", "variables": {"mode": "single-node"}}]


def test_elasticsearch_multi_node() -> None:
    clusters = by_name(
        clusters_for(
            {"fullTextStore": {"type": "elasticsearch", "elasticsearch": {"managed": {"replicas": 3}}}}
        )
    )
    component = clusters["rag-es"]["spec"]["componentSpecs"][0]
    assert component["replicas"] == 3
    assert component["name"] == "master"
    assert component["configs"][0]["variables"]["mode"] == "multi-node"
    assert "master" in component["configs"][0]["variables"]["roles"].split(",")


def test_spec_values_reach_the_cluster() -> None:
    clusters = by_name(clusters_for(SPEC_SHAPES["all-managed-big"]))
    pg = clusters["rag-pg"]["spec"]["componentSpecs"][0]
    assert pg["replicas"] == 3
    assert pg["serviceVersion"] == "16.9.0"
    assert pg["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    claim = pg["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "100Gi"
    assert claim["storageClassName"] == "fast-ssd"
    assert clusters["rag-qdrant"]["spec"]["componentSpecs"][0]["replicas"] == 3


def test_external_databases_get_no_cluster() -> None:
    data = {
        "postgresql": {"external": {"host": "pg.example", "credentialsSecretRef": {"name": "pg"}}},
        "redis": {"external": {"host": "redis.example"}},
        "vectorStore": {"type": "qdrant", "qdrant": {"external": {"url": "http://qdrant:6333"}}},
        "fullTextStore": {
            "type": "elasticsearch",
            "elasticsearch": {"external": {"urlSecretRef": {"name": "es", "key": "url"}}},
        },
    }
    assert clusters_for(data) == []
    assert clusters_for(SPEC_SHAPES["mixed"]) and "rag-redis" not in by_name(
        clusters_for(SPEC_SHAPES["mixed"])
    )


@pytest.mark.parametrize(
    "policy, termination, owned",
    [("Retain", "DoNotTerminate", False), ("Delete", "Delete", True), ("WipeOut", "WipeOut", True)],
)
def test_deletion_policy(policy: str, termination: str, owned: bool) -> None:
    for cluster in clusters_for({**ALL_MANAGED, "deletionPolicy": policy}):
        assert cluster["spec"]["terminationPolicy"] == termination
        assert ("ownerReferences" in cluster["metadata"]) == owned
        if owned:
            assert cluster["metadata"]["ownerReferences"] == [OWNER]


def test_per_database_deletion_policy_overrides_the_global_one() -> None:
    clusters = by_name(clusters_for(SPEC_SHAPES["all-managed-big"]))
    assert clusters["rag-pg"]["spec"]["terminationPolicy"] == "WipeOut"
    assert clusters["rag-redis"]["spec"]["terminationPolicy"] == "DoNotTerminate"
    assert "ownerReferences" not in clusters["rag-redis"]["metadata"]
    dbs = {
        db.key: db
        for db in managed_databases("rag", DatabasesSpec.model_validate(SPEC_SHAPES["all-managed-big"]))
    }
    assert dbs["redis"].deletion_policy == "Retain" and dbs["postgresql"].deletion_policy == "WipeOut"


def test_no_owner_reference_given() -> None:
    for cluster in build_database_clusters(
        "rag", "ns", DatabasesSpec(deletion_policy="Delete"), None, LABELS
    ):
        assert "ownerReferences" not in cluster["metadata"]


def test_labels_and_names_do_not_collide_between_instances() -> None:
    first = by_name(clusters_for(ALL_MANAGED, name="one"))
    second = by_name(clusters_for(ALL_MANAGED, name="two"))
    assert not set(first) & set(second)
    for cluster in first.values():
        labels = cluster["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rag"  # the caller's labels, untouched
        assert labels["app.kubernetes.io/component"] in {"postgresql", "redis", "qdrant", "elasticsearch"}
    assert LABELS == {"app.kubernetes.io/name": "aperag", "app.kubernetes.io/instance": "rag"}


def test_kubeblocks_names() -> None:
    dbs = {db.key: db for db in managed_databases("rag", DatabasesSpec.model_validate(ALL_MANAGED))}
    assert dbs["postgresql"].service_name == "rag-pg-postgresql-postgresql" and dbs["postgresql"].port == 5432
    assert dbs["postgresql"].account_secret_name == "rag-pg-postgresql-account-postgres"
    assert dbs["redis"].service_name == "rag-redis-redis-redis" and dbs["redis"].port == 6379
    assert dbs["redis"].account_secret_name == "rag-redis-redis-account-default"
    assert dbs["qdrant"].service_name == "rag-qdrant-qdrant-qdrant" and dbs["qdrant"].port == 6333
    assert dbs["qdrant"].account_secret_name is None
    assert dbs["elasticsearch"].service_name == "rag-es-master-http" and dbs["elasticsearch"].port == 9200
    assert dbs["elasticsearch"].account_secret_name == "rag-es-master-account-elastic"


def test_builder_is_deterministic() -> None:
    assert clusters_for(SPEC_SHAPES["all-managed-big"]) == clusters_for(SPEC_SHAPES["all-managed-big"])


# --- offline validation against the upstream KubeBlocks 1.0.2 CRD -----------------------------------------


@functools.cache
def _cluster_schema() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 2 MB: the C loader is 10x faster
    crd = yaml.load(KUBEBLOCKS_CRD.read_text(), Loader=loader)
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    schema: dict[str, Any] = v1["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The subset of structural-schema validation the API server does that a builder can get wrong.

    Unknown fields are errors here (the API server would silently prune them, hiding a typo).
    """
    errors: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str):
            errors.append(f"{path}: want int or string")
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        return errors
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool}
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"{path}: want integer, got {value!r}"]
    if kind in checks and not isinstance(value, checks[kind]):
        return [f"{path}: want {kind}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below {schema['minimum']}")
    if isinstance(value, dict):
        for required in schema.get("required", []):
            if required not in value:
                errors.append(f"{path}.{required}: required")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    return errors


def test_validator_catches_mistakes() -> None:
    schema = _cluster_schema()
    bad = {"spec": {"terminationPolicy": "Halt", "componentSpecs": [{"name": "x", "replica": 1}]}}
    errors = schema_errors(bad, schema)
    assert any("terminationPolicy" in e for e in errors)
    assert any("replica: unknown field" in e for e in errors)
    assert any("replicas: required" in e for e in errors)


@pytest.mark.parametrize("shape", sorted(SPEC_SHAPES))
def test_every_cluster_matches_the_upstream_schema(shape: str) -> None:
    clusters = clusters_for(SPEC_SHAPES[shape])
    assert clusters
    for cluster in clusters:
        body = {key: value for key, value in cluster.items() if key != "metadata"}
        assert schema_errors(body, _cluster_schema()) == [], cluster["metadata"]["name"]
