"""The app's database environment variables (Kubernetes ``EnvVar`` dicts) for one ApeRAG.

Managed databases point at KubeBlocks' Service and account Secret names; external ones at the host
and Secrets from the spec. Passwords (and URLs, which may embed one) only ever travel as
``secretKeyRef``: never as a literal value, so they never land in a ConfigMap, the Deployment spec,
the resource's status or a log line. Variable names are the app's contract (docs/app.md).
"""

from __future__ import annotations

from typing import Any

from aperag_operator.builders.kubeblocks_cluster import (
    ENGINES,
    DatabaseKey,
    account_secret_name,
    service_name,
)
from aperag_operator.spec.databases import (
    CredentialsSecretRef,
    DatabasesSpec,
    ElasticsearchSpec,
    PostgreSQLSpec,
    QdrantSpec,
    RedisSpec,
    SecretKeyRef,
)

# The app's variable names (docs/app.md).
POSTGRES_HOST = "POSTGRES_HOST"
POSTGRES_PORT = "POSTGRES_PORT"
POSTGRES_DB = "POSTGRES_DB"
POSTGRES_USER = "POSTGRES_USER"
POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
POSTGRES_SSLMODE = "POSTGRES_SSLMODE"
DATABASE_URL = "DATABASE_URL"
REDIS_HOST = "REDIS_HOST"
REDIS_PORT = "REDIS_PORT"
REDIS_USER = "REDIS_USER"
REDIS_PASSWORD = "REDIS_PASSWORD"
REDIS_SSL = "REDIS_SSL"
REDIS_URL = "REDIS_URL"
VECTOR_DB_TYPE = "VECTOR_DB_TYPE"
QDRANT_URL = "QDRANT_URL"
QDRANT_API_KEY = "QDRANT_API_KEY"
FULLTEXT_TYPE = "FULLTEXT_TYPE"
# The app names its PostgreSQL full-text store "postgres" (docs/app.md); the spec says "postgresql".
FULLTEXT_TYPE_VALUES = {"postgresql": "postgres", "elasticsearch": "elasticsearch"}
ES_HOST_NAME = "ES_HOST_NAME"
ES_PORT = "ES_PORT"
ES_PROTOCOL = "ES_PROTOCOL"
ES_USER = "ES_USER"
ES_PASSWORD = "ES_PASSWORD"
ES_URL = "ES_URL"

# The database KubeBlocks' PostgreSQL creates; the app's migrations create their tables in it.
MANAGED_POSTGRES_DATABASE = "postgres"
# KubeBlocks account Secrets hold these keys.
ACCOUNT_USERNAME_KEY = "username"
ACCOUNT_PASSWORD_KEY = "password"

EnvVar = dict[str, Any]


def _value(name: str, value: str | int) -> EnvVar:
    return {"name": name, "value": str(value)}


def _secret(name: str, secret: str, key: str) -> EnvVar:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _credentials(user_var: str, password_var: str, ref: CredentialsSecretRef) -> list[EnvVar]:
    env = []
    if ref.username_key:
        env.append(_secret(user_var, ref.name, ref.username_key))
    env.append(_secret(password_var, ref.name, ref.password_key))
    return env


def _url(var: str, ref: SecretKeyRef) -> EnvVar:
    return _secret(var, ref.name, ref.key)


def _postgresql_env(name: str, spec: PostgreSQLSpec) -> list[EnvVar]:
    if spec.managed is not None:
        secret = account_secret_name(name, "postgresql")
        assert secret is not None
        return [
            _value(POSTGRES_HOST, service_name(name, "postgresql")),
            _value(POSTGRES_PORT, ENGINES["postgresql"].port),
            _value(POSTGRES_DB, MANAGED_POSTGRES_DATABASE),
            _secret(POSTGRES_USER, secret, ACCOUNT_USERNAME_KEY),
            _secret(POSTGRES_PASSWORD, secret, ACCOUNT_PASSWORD_KEY),
            _value(POSTGRES_SSLMODE, "disable"),
        ]
    external = spec.external
    assert external is not None
    if external.url_secret_ref is not None:
        return [_url(DATABASE_URL, external.url_secret_ref)]
    assert external.host is not None and external.credentials_secret_ref is not None
    return [
        _value(POSTGRES_HOST, external.host),
        _value(POSTGRES_PORT, external.port),
        _value(POSTGRES_DB, external.database),
        *_credentials(POSTGRES_USER, POSTGRES_PASSWORD, external.credentials_secret_ref),
        _value(POSTGRES_SSLMODE, "require" if external.tls else "disable"),
    ]


def _redis_env(name: str, spec: RedisSpec) -> list[EnvVar]:
    if spec.managed is not None:
        secret = account_secret_name(name, "redis")
        assert secret is not None
        return [
            _value(REDIS_HOST, service_name(name, "redis")),
            _value(REDIS_PORT, ENGINES["redis"].port),
            _secret(REDIS_USER, secret, ACCOUNT_USERNAME_KEY),
            _secret(REDIS_PASSWORD, secret, ACCOUNT_PASSWORD_KEY),
            _value(REDIS_SSL, "false"),
        ]
    external = spec.external
    assert external is not None
    if external.url_secret_ref is not None:
        return [_url(REDIS_URL, external.url_secret_ref)]
    assert external.host is not None
    env = [_value(REDIS_HOST, external.host), _value(REDIS_PORT, external.port)]
    if external.credentials_secret_ref is not None:
        env += _credentials(REDIS_USER, REDIS_PASSWORD, external.credentials_secret_ref)
    env.append(_value(REDIS_SSL, "true" if external.tls else "false"))
    return env


def _qdrant_env(name: str, spec: QdrantSpec) -> list[EnvVar]:
    if spec.managed is not None:
        # The managed Qdrant has no API key; NetworkPolicy, not a key, guards it.
        return [_value(QDRANT_URL, f"http://{service_name(name, 'qdrant')}:{ENGINES['qdrant'].port}")]
    external = spec.external
    assert external is not None
    env = [
        _url(QDRANT_URL, external.url_secret_ref)
        if external.url_secret_ref
        else _value(QDRANT_URL, str(external.url))
    ]
    if external.api_key_secret_ref is not None:
        env.append(_secret(QDRANT_API_KEY, external.api_key_secret_ref.name, external.api_key_secret_ref.key))
    return env


def _elasticsearch_env(name: str, spec: ElasticsearchSpec) -> list[EnvVar]:
    if spec.managed is not None:
        secret = account_secret_name(name, "elasticsearch")
        assert secret is not None
        return [
            _value(ES_HOST_NAME, service_name(name, "elasticsearch")),
            _value(ES_PORT, ENGINES["elasticsearch"].port),
            _value(ES_PROTOCOL, "http"),
            _secret(ES_USER, secret, ACCOUNT_USERNAME_KEY),
            _secret(ES_PASSWORD, secret, ACCOUNT_PASSWORD_KEY),
        ]
    external = spec.external
    assert external is not None
    if external.url_secret_ref is not None:
        return [_url(ES_URL, external.url_secret_ref)]
    assert external.host is not None
    env = [
        _value(ES_HOST_NAME, external.host),
        _value(ES_PORT, external.port),
        _value(ES_PROTOCOL, "https" if external.tls else "http"),
    ]
    if external.credentials_secret_ref is not None:
        env += _credentials(ES_USER, ES_PASSWORD, external.credentials_secret_ref)
    return env


def env_by_database(name: str, databases: DatabasesSpec) -> dict[DatabaseKey, list[EnvVar]]:
    """The variables of each database in use, keyed by database, in a stable order."""
    out: dict[DatabaseKey, list[EnvVar]] = {
        "postgresql": _postgresql_env(name, databases.postgresql),
        "redis": _redis_env(name, databases.redis),
    }
    qdrant = databases.vector_store.effective_qdrant
    if qdrant is not None:
        out["qdrant"] = _qdrant_env(name, qdrant)
    elasticsearch = databases.full_text_store.effective_elasticsearch
    if elasticsearch is not None:
        out["elasticsearch"] = _elasticsearch_env(name, elasticsearch)
    return out


def build_database_env(name: str, databases: DatabasesSpec) -> list[EnvVar]:
    """The database variables of the app containers of the ApeRAG ``name``, in a stable order."""
    per_database = env_by_database(name, databases)
    env = [*per_database["postgresql"], *per_database["redis"]]
    env.append(_value(VECTOR_DB_TYPE, databases.vector_store.type))
    env += per_database.get("qdrant", [])
    env.append(_value(FULLTEXT_TYPE, FULLTEXT_TYPE_VALUES[databases.full_text_store.type]))
    env += per_database.get("elasticsearch", [])
    return env


def secret_keys_of(env: list[EnvVar]) -> dict[str, set[str]]:
    """The Secrets (name -> keys) a list of variables reads through ``secretKeyRef``."""
    needed: dict[str, set[str]] = {}
    for var in env:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            needed.setdefault(ref["name"], set()).add(ref["key"])
    return needed


def referenced_secret_keys(name: str, databases: DatabasesSpec) -> dict[str, set[str]]:
    """Every Secret (name -> keys) the app's database variables read: what must exist before rollout."""
    return secret_keys_of(build_database_env(name, databases))
