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
