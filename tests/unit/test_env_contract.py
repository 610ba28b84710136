"""The environment contract between the operator and the app, checked from both sides at once.

The env the operator builds for each app container (Deployments and the migration Job: ConfigMap,
operator settings, the databases' env, Secrets by reference) is resolved the way the kubelet resolves it
and fed to the app's own settings loader; the settings must be the intended ones. A variable renamed
on one side only fails here, not in a cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
from aperag_operator.builders import migration_job
from aperag_operator.builders.common import target_release
from aperag_operator.builders.database_env import build_database_env

from aperag.config import Settings, load_settings
from tests.images.pod_runner import Objects, resolve_env
from tests.unit.test_builders import all_desired

from .helpers import instance

ACCOUNTS = {
    "demo-pg-postgresql-account-postgres": {"username": "postgres", "password": "pg pass/:@"},
    "demo-redis-redis-account-default": {"username": "default", "password": "redis-pass"},
    "demo-es-master-account-elastic": {"username": "elastic", "password": "es-pass"},
}
EXTERNAL_SECRETS = {
    "pg-url": {"url": "postgresql://app:secret@pg.example.internal:6543/rag?sslmode=require"},
    "redis-creds": {"username": "", "password": "r-pass"},
    "qdrant": {"apiKey": "q-key"},
    "s3": {"accessKeyId": "AKIA", "secretAccessKey": "s3-secret"},
    "api-keys": {"apiKeys": "k1,k2"},
}


def settings_of(spec: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, Settings]:
    """What the app's loader makes of each app container the operator would run for ``spec``."""
    children = all_desired(spec)
    config_maps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    objects = Objects(secrets=secrets, config_maps=config_maps)
    out: dict[str, Settings] = {}
    for dep in children:
        if dep["kind"] != "Deployment":
            continue
        container = dep["spec"]["template"]["spec"]["containers"][0]
        out[dep["metadata"]["labels"]["app.kubernetes.io/component"]] = load_settings(resolve_env(container, objects))
    inst = instance(spec)
    job = migration_job.build(
        inst,
        migration_job.request(inst.name, "upgrade", target_release(inst.spec), "head", 1),
        build_database_env(inst.name, inst.spec.databases),
    )
    out["migration"] = load_settings(resolve_env(job["spec"]["template"]["spec"]["containers"][0], objects))
    return out


def test_managed_databases_reach_every_app_container() -> None:
    every = settings_of({}, ACCOUNTS)
    assert set(every) == {"api", "worker", "beat", "migration"}
    for component, settings in every.items():
        assert settings.database_url == (
            "postgresql+psycopg://postgres:pg%20pass%2F%3A%40@demo-pg-postgresql-postgresql:5432/postgres?sslmode=disable"
        ), component
        assert settings.redis_url == "redis://default:redis-pass@demo-redis-redis-redis:6379/0", component
        assert (settings.vector_db_type, settings.fulltext_type) == ("pgvector", "postgres")
        assert settings.object_store_type == "local" and settings.object_store_local_root_dir == "/data/objects"


def test_managed_qdrant_and_elasticsearch() -> None:
    spec = {"databases": {"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}}}
    settings = settings_of(spec, ACCOUNTS)["worker"]
    assert settings.vector_db_type == "qdrant" and settings.qdrant_url == "http://demo-qdrant-qdrant-qdrant:6333"
    assert settings.fulltext_type == "elasticsearch" and settings.es_url == "http://demo-es-master-http:9200"
    assert (settings.es_user, settings.es_password) == ("elastic", "es-pass")


def test_external_databases_from_url_secrets_with_tls_and_s3() -> None:
    spec = {
        "databases": {
            "postgresql": {"external": {"urlSecretRef": {"name": "pg-url", "key": "url"}}},
            "redis": {
                "external": {
                    "host": "redis.example.internal",
                    "port": 6380,
                    "tls": True,
                    "credentialsSecretRef": {"name": "redis-creds", "usernameKey": ""},
                }
            },
            "vectorStore": {
                "type": "qdrant",
                "qdrant": {
                    "external": {
                        "url": "https://qdrant.example.internal:6333",
                        "apiKeySecretRef": {"name": "qdrant", "key": "apiKey"},
                    }
                },
            },
        },
        "objectStorage": {
            "type": "s3",
            "s3": {
                "bucket": "docs",
                "endpoint": "https://minio.example.internal",
                "region": "eu-1",
                "usePathStyle": True,
                "credentialsSecret": {"name": "s3"},
            },
        },
        "app": {"apiKeysSecret": {"name": "api-keys"}},
    }
    every = settings_of(spec, EXTERNAL_SECRETS)
    api = every["api"]
    assert api.database_url == "postgresql+psycopg://app:secret@pg.example.internal:6543/rag?sslmode=require"
    assert api.redis_url == "rediss://:r-pass@redis.example.internal:6380/0"
    assert (api.qdrant_url, api.qdrant_api_key) == ("https://qdrant.example.internal:6333", "q-key")
    assert api.object_store_type == "s3" and api.object_store_s3_bucket == "docs"
    assert (api.object_store_s3_access_key, api.object_store_s3_secret_key) == ("AKIA", "s3-secret")
    assert api.object_store_s3_endpoint == "https://minio.example.internal" and api.object_store_s3_region == "eu-1"
    assert api.object_store_s3_use_path_style is True
    assert api.api_keys == ("k1", "k2")
    assert every["worker"].api_keys == ()  # only the API gets the keys
    assert every["migration"].database_url == api.database_url  # the Job migrates the database the app uses


def test_the_users_env_and_config_win() -> None:
    spec = {
        "app": {
            "config": {"CHUNK_SIZE": "400", "LOG_LEVEL": "DEBUG"},
            "env": [{"name": "POSTGRES_HOST", "value": "pgbouncer.example.internal"}],
        }
    }
    for component, settings in settings_of(spec, ACCOUNTS).items():
        assert settings.chunk_size == 400, component
        assert settings.database_url.split("@")[1].startswith("pgbouncer.example.internal:5432"), component


@pytest.mark.parametrize("component", ["api", "worker", "beat", "migration"])
def test_the_settings_load_without_a_configuration_error(component: str) -> None:
    assert settings_of({}, ACCOUNTS)[component].database_configured


def test_chat_model_and_graph_settings_from_config_and_secret_refs() -> None:
    """The documented way (docs/app.md, "Chat model in a cluster"): endpoint and model in spec.app.env
    or config, the key from a Secret by reference, the graph's knobs in spec.app.config."""
    spec = {
        "app": {
            "config": {"GRAPH_EXTRACTION_BATCH": "8", "GRAPH_EXTRACTION_CONCURRENCY": "3", "LLM_TIMEOUT_SECONDS": "90"},
            "env": [
                {"name": "LLM_API_BASE", "value": "http://vllm.models.svc:8000/v1"},
                {"name": "LLM_MODEL", "value": "qwen2.5-7b-instruct"},
                {"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}},
            ],
        }
    }
    secrets = {**ACCOUNTS, "llm": {"apiKey": "sk-llm secret"}}
    for component, settings in settings_of(spec, secrets).items():
        assert (settings.llm_api_base, settings.llm_model) == (
            "http://vllm.models.svc:8000/v1", "qwen2.5-7b-instruct"), component  # fmt: skip
        assert settings.llm_api_key == "sk-llm secret", component
        assert settings.llm_timeout_seconds == 90.0, component
        assert (settings.graph_enabled, settings.graph_extraction_batch, settings.graph_extraction_concurrency) == (
            True, 8, 3), component  # fmt: skip
    off = settings_of({"app": {"config": {"GRAPH_ENABLED": "false"}}}, ACCOUNTS)
    assert not any(s.graph_enabled for s in off.values())
    # Without a chat model the app runs with the offline extractor: nothing LLM_* is set by the operator.
    assert all(s.llm_api_base == s.llm_model == s.llm_api_key == "" for s in off.values())


@pytest.mark.parametrize("enabled", [True, False])
def test_the_console_setting_reaches_the_api(enabled: bool) -> None:
    """spec.console.enabled is the API's Settings.console_enabled (APERAG_CONSOLE_ENABLED): the API
    process serves the web console; no other component serves HTTP to users."""
    every = settings_of({"console": {"enabled": enabled}}, ACCOUNTS)
    assert every["api"].console_enabled is enabled
    assert settings_of({}, ACCOUNTS)["api"].console_enabled is True  # the default: the console is served
