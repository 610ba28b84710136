"""The app's database environment: KubeBlocks names for managed databases, spec values for external ones."""

from __future__ import annotations

from typing import Any

from aperag_operator.builders.database_env import build_database_env, referenced_secret_keys
from aperag_operator.spec.databases import DatabasesSpec


def env_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = build_database_env("rag", DatabasesSpec.model_validate(data))
    names = [var["name"] for var in env]
    assert len(names) == len(set(names)), f"duplicate variables: {names}"
    return {var["name"]: var for var in env}


def value(env: dict[str, dict[str, Any]], name: str) -> str:
    return str(env[name]["value"])


def secret(env: dict[str, dict[str, Any]], name: str) -> tuple[str, str]:
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


SENSITIVE = {
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "ES_PASSWORD",
    "QDRANT_API_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "ES_URL",
}


def assert_no_secret_values(env: dict[str, dict[str, Any]]) -> None:
    for name in SENSITIVE & set(env):
        assert "value" not in env[name], f"{name} must come from a Secret"
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}
    for var in env.values():
        assert isinstance(var.get("value", ""), str)


def test_managed_defaults() -> None:
    env = env_of({})
    assert value(env, "POSTGRES_HOST") == "rag-pg-postgresql-postgresql"
    assert value(env, "POSTGRES_PORT") == "5432"
    assert value(env, "POSTGRES_DB") == "postgres"
    assert secret(env, "POSTGRES_USER") == ("rag-pg-postgresql-account-postgres", "username")
    assert secret(env, "POSTGRES_PASSWORD") == ("rag-pg-postgresql-account-postgres", "password")
    assert value(env, "REDIS_HOST") == "rag-redis-redis-redis"
    assert value(env, "REDIS_PORT") == "6379"
    assert secret(env, "REDIS_PASSWORD") == ("rag-redis-redis-account-default", "password")
    assert value(env, "VECTOR_DB_TYPE") == "pgvector"
    assert value(env, "FULLTEXT_TYPE") == "postgres"
    assert "QDRANT_URL" not in env and "ES_HOST_NAME" not in env
    assert_no_secret_values(env)


def test_managed_qdrant_and_elasticsearch() -> None:
    env = env_of({"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}})
    assert value(env, "VECTOR_DB_TYPE") == "qdrant"
    assert value(env, "QDRANT_URL") == "http://rag-qdrant-qdrant-qdrant:6333"
    assert value(env, "FULLTEXT_TYPE") == "elasticsearch"
    assert value(env, "ES_HOST_NAME") == "rag-es-master-http"
    assert value(env, "ES_PORT") == "9200"
    assert value(env, "ES_PROTOCOL") == "http"
    assert secret(env, "ES_PASSWORD") == ("rag-es-master-account-elastic", "password")
    assert_no_secret_values(env)


def test_external_with_host_and_credentials() -> None:
    env = env_of(
        {
            "postgresql": {
                "external": {
                    "host": "pg.corp.example",
                    "port": 6432,
                    "database": "rag",
                    "tls": True,
                    "credentialsSecretRef": {
                        "name": "pg-creds",
                        "usernameKey": "user",
                        "passwordKey": "pass",
                    },
                }
            },
            "redis": {
                "external": {
                    "host": "redis.corp.example",
                    "tls": True,
                    "credentialsSecretRef": {"name": "r", "usernameKey": ""},
                }
            },
            "vectorStore": {
                "type": "qdrant",
                "qdrant": {
                    "external": {
                        "url": "https://q.example",
                        "apiKeySecretRef": {"name": "q", "key": "api-key"},
                    }
                },
            },
            "fullTextStore": {
                "type": "elasticsearch",
                "elasticsearch": {
                    "external": {"host": "es.example", "tls": True, "credentialsSecretRef": {"name": "es"}}
                },
            },
        }
    )
    assert value(env, "POSTGRES_HOST") == "pg.corp.example"
    assert value(env, "POSTGRES_PORT") == "6432"
    assert value(env, "POSTGRES_DB") == "rag"
    assert value(env, "POSTGRES_SSLMODE") == "require"
    assert secret(env, "POSTGRES_USER") == ("pg-creds", "user")
    assert secret(env, "POSTGRES_PASSWORD") == ("pg-creds", "pass")
    assert value(env, "REDIS_SSL") == "true"
    assert "REDIS_USER" not in env  # usernameKey "" = password-only Redis
    assert secret(env, "REDIS_PASSWORD") == ("r", "password")
    assert value(env, "QDRANT_URL") == "https://q.example"
    assert secret(env, "QDRANT_API_KEY") == ("q", "api-key")
    assert value(env, "ES_PROTOCOL") == "https"
    assert secret(env, "ES_USER") == ("es", "username")
    assert_no_secret_values(env)


def test_external_redis_without_auth() -> None:
    env = env_of({"redis": {"external": {"host": "redis"}}})
    assert value(env, "REDIS_HOST") == "redis"
    assert "REDIS_PASSWORD" not in env and "REDIS_USER" not in env


def test_external_urls_come_from_secrets() -> None:
    env = env_of(
        {
            "postgresql": {"external": {"urlSecretRef": {"name": "pg-url", "key": "dsn"}}},
            "redis": {"external": {"urlSecretRef": {"name": "redis-url", "key": "url"}}},
            "vectorStore": {
                "type": "qdrant",
                "qdrant": {"external": {"urlSecretRef": {"name": "q", "key": "url"}}},
            },
            "fullTextStore": {
                "type": "elasticsearch",
                "elasticsearch": {"external": {"urlSecretRef": {"name": "es", "key": "url"}}},
            },
        }
    )
    assert secret(env, "DATABASE_URL") == ("pg-url", "dsn")
    assert secret(env, "REDIS_URL") == ("redis-url", "url")
    assert secret(env, "QDRANT_URL") == ("q", "url")
    assert secret(env, "ES_URL") == ("es", "url")
    assert "POSTGRES_HOST" not in env and "REDIS_HOST" not in env and "ES_HOST_NAME" not in env
    assert_no_secret_values(env)


def test_referenced_secret_keys() -> None:
    spec = DatabasesSpec.model_validate(
        {
            "redis": {"external": {"host": "r", "credentialsSecretRef": {"name": "r"}}},
            "fullTextStore": {"type": "elasticsearch"},
        }
    )
    assert referenced_secret_keys("rag", spec) == {
        "rag-pg-postgresql-account-postgres": {"username", "password"},
        "r": {"username", "password"},
        "rag-es-master-account-elastic": {"username", "password"},
    }


def test_env_is_deterministic() -> None:
    spec = DatabasesSpec.model_validate({"vectorStore": {"type": "qdrant"}})
    assert build_database_env("rag", spec) == build_database_env("rag", spec)
