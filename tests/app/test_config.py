from __future__ import annotations

import pytest

from aperag.config import ConfigError, load_settings


def test_defaults_mean_embedded_mode() -> None:
    s = load_settings({})
    assert not s.database_configured
    assert s.vector_db_type == "pgvector" and s.fulltext_type == "postgres"
    assert s.api_port == 8000 and not s.auth_enabled


def test_upstream_names_are_read() -> None:
    s = load_settings(
        {
            "POSTGRES_HOST": "db",
            "POSTGRES_PORT": "6432",
            "POSTGRES_DB": "rag",
            "POSTGRES_USER": "u",
            "POSTGRES_PASSWORD": "p@ss/word",
            "REDIS_HOST": "redis",
            "REDIS_PASSWORD": "secret",
            "VECTOR_DB_TYPE": "qdrant",
            "ES_HOST_NAME": "es",
            "ES_PORT": "9201",
            "ES_PROTOCOL": "https",
            "APERAG_API_KEYS": "k1, k2,,",
        }
    )
    assert s.database_url == "postgresql+psycopg://u:p%40ss%2Fword@db:6432/rag"
    assert s.redis_url == "redis://:secret@redis:6379/0"
    assert s.es_url == "https://es:9201"
    assert s.api_keys == ("k1", "k2")


@pytest.mark.parametrize(
    "env",
    [
        {"VECTOR_DB_TYPE": "milvus"},
        {"CHUNK_SIZE": "abc"},
        {"CHUNK_SIZE": "100", "CHUNK_OVERLAP_SIZE": "100"},
        {"FULLTEXT_TYPE": "solr"},
    ],
)
def test_bad_values_are_rejected(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env)


def test_connection_urls_and_tls_flags_the_operator_sets_are_honoured() -> None:
    """The operator passes external databases as URLs from Secrets, or parts plus TLS flags."""
    parts = load_settings({
        "POSTGRES_HOST": "pg.example", "POSTGRES_USER": "app", "POSTGRES_PASSWORD": "p@ss",
        "POSTGRES_DB": "rag", "POSTGRES_SSLMODE": "require",
        "REDIS_HOST": "redis.example", "REDIS_PASSWORD": "r", "REDIS_SSL": "true",
    })  # fmt: skip
    assert parts.database_url == "postgresql+psycopg://app:p%40ss@pg.example:5432/rag?sslmode=require"
    assert parts.redis_url == "rediss://:r@redis.example:6379/0"

    urls = load_settings({
        "DATABASE_URL": "postgresql://u:pw@db.example:6432/rag?sslmode=verify-full",
        "REDIS_URL": "rediss://default:pw@cache.example:6380/2",
        "ES_URL": "https://es.example:9243",
    })  # fmt: skip
    assert urls.database_configured and urls.redis_configured
    assert urls.database_url == "postgresql+psycopg://u:pw@db.example:6432/rag?sslmode=verify-full"
    assert urls.redis_url == "rediss://default:pw@cache.example:6380/2"
    assert urls.es_url == "https://es.example:9243"

    with pytest.raises(ConfigError, match="DATABASE_URL must start with"):
        _ = load_settings({"DATABASE_URL": "mysql://u@h/db"}).database_url
