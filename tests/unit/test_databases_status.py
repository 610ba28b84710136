"""Evaluation of database readiness: the DatabasesReady condition, Degraded, and status.databases."""

from __future__ import annotations

from typing import Any

import pytest
from aperag_operator.databases import evaluate_databases
from aperag_operator.spec.databases import DatabasesSpec

ACCOUNT_KEYS = {"username", "password"}
PG_SECRET = "rag-pg-postgresql-account-postgres"
REDIS_SECRET = "rag-redis-redis-account-default"
ALL_SECRETS: dict[str, set[str]] = {PG_SECRET: ACCOUNT_KEYS, REDIS_SECRET: ACCOUNT_KEYS}


def cluster(
    phase: str | None, generation: int = 1, observed: int | None = 1, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"generation": generation}, "status": dict(status)}
    if phase is not None:
        body["status"]["phase"] = phase
    if observed is not None:
        body["status"]["observedGeneration"] = observed
    return body


def running() -> dict[str, Any]:
    return cluster("Running")


def evaluate(
    clusters: dict[str, Any],
    secrets: dict[str, set[str]] | None = None,
    data: dict[str, Any] | None = None,
    installed: bool = True,
) -> Any:
    return evaluate_databases(
        "rag",
        DatabasesSpec.model_validate(data or {}),
        clusters,
        ALL_SECRETS if secrets is None else secrets,
        installed,
    )


def test_all_running_is_ready() -> None:
    result = evaluate({"rag-pg": running(), "rag-redis": running()})
    assert result.ready and not result.degraded
    assert result.condition == {
        "type": "DatabasesReady",
        "status": "True",
        "reason": "DatabasesReady",
        "message": "all databases ready: postgresql, redis",
    }
    assert result.degraded_reason is None
    assert result.status_databases == [
        {
            "name": "postgresql",
            "mode": "Managed",
            "ready": True,
            "phase": "Running",
            "reason": "Ready",
            "message": "Cluster rag-pg is Running",
            "cluster": "rag-pg",
            "deletionPolicy": "Retain",
            "endpoint": "rag-pg-postgresql-postgresql:5432",
        },
        {
            "name": "redis",
            "mode": "Managed",
            "ready": True,
            "phase": "Running",
            "reason": "Ready",
            "message": "Cluster rag-redis is Running",
            "cluster": "rag-redis",
            "deletionPolicy": "Retain",
            "endpoint": "rag-redis-redis-redis:6379",
        },
    ]


def test_first_install_waits_for_missing_and_creating_clusters() -> None:
    result = evaluate({"rag-pg": cluster("Creating")})
    assert not result.ready and not result.degraded
    assert result.reason == "ClustersNotReady"
    assert "postgresql: Cluster rag-pg is Creating" in result.message
    assert "redis: Cluster rag-redis does not exist yet" in result.message
    assert [db["phase"] for db in result.status_databases] == ["Creating", "Missing"]


def test_cluster_without_status_yet() -> None:
    result = evaluate({"rag-pg": {"metadata": {"generation": 1}}, "rag-redis": running()})
    assert not result.ready and result.reason == "ClustersNotReady"


@pytest.mark.parametrize("observed", [None, 1])
def test_running_for_an_older_generation_is_not_ready(observed: int | None) -> None:
    result = evaluate({"rag-pg": cluster("Running", generation=2, observed=observed), "rag-redis": running()})
    assert not result.ready and not result.degraded
    assert result.reason == "ClustersNotReady"
    assert "generation 2 not yet observed" in result.message


def test_newer_observed_generation_is_fine() -> None:
    assert evaluate({"rag-pg": cluster("Running", generation=3, observed=3), "rag-redis": running()}).ready


@pytest.mark.parametrize("phase, reason", [("Abnormal", "ClusterAbnormal"), ("Failed", "ClusterFailed")])
def test_abnormal_or_failed_degrades_with_the_clusters_message(phase: str, reason: str) -> None:
    result = evaluate(
        {"rag-pg": running(), "rag-redis": cluster(phase, message="pod redis-0 CrashLoopBackOff")}
    )
    assert not result.ready and result.degraded
    assert result.reason == reason and result.degraded_reason == reason
    assert "Cluster rag-redis is " + phase in result.message
    assert "CrashLoopBackOff" in result.message and "CrashLoopBackOff" in result.degraded_message


def test_abnormal_message_from_conditions_or_components() -> None:
    conditions = [{"type": "Ready", "status": "False", "message": "component redis not ready"}]
    result = evaluate({"rag-pg": running(), "rag-redis": cluster("Abnormal", conditions=conditions)})
    assert "Ready: component redis not ready" in result.message
    components = {"redis": {"phase": "Failed", "message": {"pod/redis-0": "OOMKilled"}}}
    result = evaluate({"rag-pg": running(), "rag-redis": cluster("Abnormal", components=components)})
    assert "redis pod/redis-0: OOMKilled" in result.message


def test_recovery_clears_degraded() -> None:
    assert evaluate({"rag-pg": running(), "rag-redis": cluster("Abnormal")}).degraded
    recovered = evaluate({"rag-pg": running(), "rag-redis": running()})
    assert recovered.ready and not recovered.degraded


def test_failed_outranks_abnormal_outranks_waiting() -> None:
    result = evaluate({"rag-pg": cluster("Abnormal"), "rag-redis": cluster("Failed")})
    assert result.reason == "ClusterFailed"
    assert result.message.index("postgresql") < result.message.index("redis")
    assert evaluate({"rag-pg": cluster("Abnormal")}).reason == "ClusterAbnormal"


def test_managed_account_secret_missing() -> None:
    result = evaluate({"rag-pg": running(), "rag-redis": running()}, secrets={PG_SECRET: {"username"}})
    assert not result.ready and result.reason == "SecretMissing"
    assert f"Secret {PG_SECRET} has no key password" in result.message
    assert f"Secret {REDIS_SECRET} not found" in result.message
    assert not result.degraded  # KubeBlocks writes these; waiting is right


def test_kubeblocks_not_installed() -> None:
    result = evaluate({}, installed=False)
    assert not result.ready and result.degraded
    assert result.reason == "KubeBlocksNotInstalled" == result.degraded_reason
    assert "clusters.apps.kubeblocks.io" in result.message


def test_kubeblocks_not_needed_when_everything_is_external() -> None:
    data = {
        "postgresql": {"external": {"host": "pg", "credentialsSecretRef": {"name": "pg"}}},
        "redis": {"external": {"host": "redis"}},
    }
    result = evaluate({}, secrets={"pg": ACCOUNT_KEYS}, data=data, installed=False)
    assert result.ready
    assert [db["mode"] for db in result.status_databases] == ["External", "External"]
    assert result.status_databases[0]["endpoint"] == "pg:5432"
    assert "cluster" not in result.status_databases[0]


def test_external_secret_missing_then_appears() -> None:
    data = {"postgresql": {"external": {"host": "pg", "credentialsSecretRef": {"name": "pg-creds"}}}}
    waiting = evaluate({"rag-redis": running()}, secrets={REDIS_SECRET: ACCOUNT_KEYS}, data=data)
    assert not waiting.ready and waiting.degraded
    assert waiting.reason == "SecretMissing"
    assert "postgresql: Secret pg-creds not found" in waiting.message
    wrong_key = evaluate(
        {"rag-redis": running()}, secrets={REDIS_SECRET: ACCOUNT_KEYS, "pg-creds": {"user"}}, data=data
    )
    assert "Secret pg-creds has no key password" in wrong_key.message
    assert "Secret pg-creds has no key username" in wrong_key.message
    ready = evaluate(
        {"rag-redis": running()}, secrets={REDIS_SECRET: ACCOUNT_KEYS, "pg-creds": ACCOUNT_KEYS}, data=data
    )
    assert ready.ready


def test_mixed_managed_postgresql_external_redis() -> None:
    data = {"redis": {"external": {"urlSecretRef": {"name": "redis-url", "key": "url"}}}}
    result = evaluate(
        {"rag-pg": running()}, secrets={PG_SECRET: ACCOUNT_KEYS, "redis-url": {"url"}}, data=data
    )
    assert result.ready
    redis = result.status_databases[1]
    assert redis["mode"] == "External" and "endpoint" not in redis  # the URL lives in a Secret


def test_qdrant_and_elasticsearch_are_evaluated() -> None:
    data = {"vectorStore": {"type": "qdrant"}, "fullTextStore": {"type": "elasticsearch"}}
    secrets = {**ALL_SECRETS, "rag-es-master-account-elastic": ACCOUNT_KEYS}
    clusters = {name: running() for name in ("rag-pg", "rag-redis", "rag-qdrant", "rag-es")}
    assert evaluate(clusters, secrets=secrets, data=data).ready
    del clusters["rag-qdrant"]
    result = evaluate(clusters, secrets=secrets, data=data)
    assert not result.ready and "qdrant: Cluster rag-qdrant does not exist yet" in result.message


def test_status_never_contains_secret_values() -> None:
    data = {"postgresql": {"external": {"host": "pg", "credentialsSecretRef": {"name": "pg"}}}}
    result = evaluate(
        {"rag-redis": running()}, secrets={"pg": ACCOUNT_KEYS, REDIS_SECRET: ACCOUNT_KEYS}, data=data
    )
    text = repr(result.status_databases) + repr(result.condition)
    assert "password" not in text.lower().replace("passwordkey", "")


def test_long_messages_are_truncated() -> None:
    result = evaluate({"rag-pg": running(), "rag-redis": cluster("Failed", message="x" * 5000)})
    assert len(result.message) <= 1024
