"""The databases spec model: defaults, the managed/external rules, and how it renders into the CRD."""

from __future__ import annotations

from typing import Any

import pytest
from aperag_operator.spec.common import is_quantity
from aperag_operator.spec.databases import DatabasesSpec
from pydantic import ValidationError


def parse(data: dict[str, Any]) -> DatabasesSpec:
    return DatabasesSpec.model_validate(data)


def test_default_is_managed_postgresql_and_redis_retained() -> None:
    spec = DatabasesSpec()
    assert spec.deletion_policy == "Retain"
    assert spec.postgresql.managed is not None and spec.postgresql.external is None
    assert spec.redis.managed is not None and spec.redis.external is None
    assert spec.vector_store.type == "pgvector" and spec.vector_store.effective_qdrant is None
    assert spec.full_text_store.type == "postgresql" and spec.full_text_store.effective_elasticsearch is None
    assert spec.postgresql.managed.service_version.startswith("16.")
    assert spec.redis.managed.service_version.startswith("7.2.")
    assert spec.postgresql.managed.resources.to_kubernetes()["requests"]["memory"] == "1Gi"


def test_empty_object_equals_defaults() -> None:
    assert parse({}) == DatabasesSpec()


def test_camel_case_aliases() -> None:
    spec = parse(
        {
            "deletionPolicy": "Delete",
            "postgresql": {"managed": {"serviceVersion": "16.9.0", "storage": {"storageClassName": "fast"}}},
            "vectorStore": {"type": "qdrant"},
            "fullTextStore": {"type": "elasticsearch"},
        }
    )
    assert spec.deletion_policy == "Delete"
    assert spec.postgresql.managed is not None
    assert spec.postgresql.managed.storage.storage_class_name == "fast"
    assert spec.vector_store.effective_qdrant is not None and spec.vector_store.effective_qdrant.is_managed
    elasticsearch = spec.full_text_store.effective_elasticsearch
    assert elasticsearch is not None and elasticsearch.is_managed


@pytest.mark.parametrize(
    "data, message",
    [
        ({"postgresql": {}}, "exactly one of managed or external"),
        (
            {
                "postgresql": {
                    "managed": {},
                    "external": {"host": "db", "credentialsSecretRef": {"name": "s"}},
                }
            },
            "exactly one of managed or external",
        ),
        ({"redis": {"external": {"host": "r"}, "managed": {}}}, "exactly one of managed or external"),
        ({"vectorStore": {"type": "pgvector", "qdrant": {"managed": {}}}}, "only be set when type is qdrant"),
        ({"fullTextStore": {"elasticsearch": {"managed": {}}}}, "only be set when type is elasticsearch"),
        ({"deletionPolicy": "Halt"}, "deletionPolicy"),
        ({"postgresql": {"managed": {"replicas": 0}}}, "replicas"),
        ({"postgresql": {"managed": {"storage": {"size": "lots"}}}}, "size"),
        ({"postgresql": {"managed": {"serviceVersion": "16"}}}, "serviceVersion"),
        ({"redis": {"managed": {"replicas": 2}}}, "replicas"),
        ({"postgresql": {"managed": {"resources": {"requests": {"gpu": "1"}}}}}, "gpu"),
        ({"postgresql": {"external": {"host": "db", "credentialsSecretRef": {"name": "Bad_Name"}}}}, "name"),
        ({"vectorStore": {"type": "milvus"}}, "type"),
        ({"unknown": True}, "unknown"),
    ],
)
def test_invalid_specs_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse(data)


def test_external_postgresql_with_url_secret() -> None:
    spec = parse({"postgresql": {"external": {"urlSecretRef": {"name": "pg-url", "key": "url"}}}})
    assert spec.postgresql.external is not None
    assert spec.postgresql.external.url_secret_ref is not None
    assert spec.postgresql.external.host is None


def test_quantity_syntax() -> None:
    assert is_quantity("20Gi") and is_quantity("500m") and is_quantity("1")
    assert not is_quantity("20 GB") and not is_quantity("")


# --- the rendered CRD schema -------------------------------------------------------------------------------


def _databases_schema() -> dict[str, Any]:
    from aperag_operator.crdgen import build_crd

    crd = build_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema: dict[str, Any] = spec["properties"]["databases"]
    return schema


def _walk(node: dict[str, Any], path: str = "databases") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, prop in node.get("properties", {}).items():
        out += _walk(prop, f"{path}.{name}")
    return out


def test_crd_schema_is_structural() -> None:
    for path, node in _walk(_databases_schema()):
        assert "type" in node, f"{path} has no type"
        assert node.get("description"), f"{path} has no description"
        for forbidden in ("anyOf", "oneOf", "allOf", "$ref", "nullable"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("default", "") is not None, f"{path} has a null default"


def test_crd_defaults_cascade_to_managed_postgresql_and_redis() -> None:
    schema = _databases_schema()
    assert schema["default"] == {}
    assert schema["properties"]["postgresql"]["default"] == {"managed": {}}
    assert schema["properties"]["redis"]["default"] == {"managed": {}}
    # Nothing defaults "managed" or "external" themselves: a user's "external" must not gain a "managed".
    for database in ("postgresql", "redis"):
        for mode in ("managed", "external"):
            assert "default" not in schema["properties"][database]["properties"][mode]
    resources = schema["properties"]["postgresql"]["properties"]["managed"]["properties"]["resources"]
    assert resources["default"]["requests"] == {"cpu": "250m", "memory": "1Gi"}


def _rules(node: dict[str, Any]) -> list[str]:
    return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]


def test_crd_cel_rules() -> None:
    schema = _databases_schema()
    props = schema["properties"]
    for database in ("postgresql", "redis"):
        assert "has(self.managed) != has(self.external)" in _rules(props[database])
        assert "has(self.managed) == has(oldSelf.managed)" in _rules(props[database])
    assert "self == oldSelf" in _rules(props["vectorStore"]["properties"]["type"])
    assert "self == oldSelf" in _rules(props["fullTextStore"]["properties"]["type"])
    managed_pg = props["postgresql"]["properties"]["managed"]["properties"]
    assert any(
        r == "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0"
        for r in _rules(managed_pg["storage"])
    )
    assert any("oldSelf" in r for r in _rules(managed_pg["serviceVersion"]))
    qdrant = props["vectorStore"]["properties"]["qdrant"]
    assert "has(self.managed) != has(self.external)" in _rules(qdrant)
    es_managed = props["fullTextStore"]["properties"]["elasticsearch"]["properties"]["managed"]
    assert any("replicas == 1" in r for r in _rules(es_managed))
    assert "has(self.host) != has(self.urlSecretRef)" in _rules(props["postgresql"]["properties"]["external"])
