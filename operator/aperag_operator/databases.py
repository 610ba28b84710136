"""Are the databases of an ApeRAG ready? Pure evaluation of what the reconcile observed.

Input: the spec, the KubeBlocks Clusters as read from the API (dicts, ``None`` when missing), which
Secrets exist with which keys, and whether the KubeBlocks Cluster CRD is installed. Output: the
``DatabasesReady`` condition, whether the ApeRAG is Degraded, and ``status.databases``. Nothing here
ever reads a Secret's values: only names and keys appear in messages.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aperag_operator.builders.database_env import env_by_database, secret_keys_of
from aperag_operator.builders.kubeblocks_cluster import (
    CLUSTER_CRD_NAME,
    DatabaseKey,
    ManagedDatabase,
    managed_databases,
)
from aperag_operator.spec.databases import DatabasesSpec, DatabaseStatus

CONDITION_TYPE = "DatabasesReady"

REASON_READY = "DatabasesReady"
REASON_KUBEBLOCKS_NOT_INSTALLED = "KubeBlocksNotInstalled"
REASON_CLUSTER_FAILED = "ClusterFailed"
REASON_CLUSTER_ABNORMAL = "ClusterAbnormal"
REASON_SECRET_MISSING = "SecretMissing"
REASON_CLUSTERS_NOT_READY = "ClustersNotReady"

# When several databases have problems, the condition shows the most serious reason (first here);
# the message lists every problem.
REASON_PRIORITY = (
    REASON_KUBEBLOCKS_NOT_INSTALLED,
    REASON_CLUSTER_FAILED,
    REASON_CLUSTER_ABNORMAL,
    REASON_SECRET_MISSING,
    REASON_CLUSTERS_NOT_READY,
)

# Observed Cluster phases that need a human (KubeBlocks will not fix them by itself soon).
_DEGRADED_PHASES = {"Failed": REASON_CLUSTER_FAILED, "Abnormal": REASON_CLUSTER_ABNORMAL}
# Messages come from other controllers; keep conditions readable.
_MAX_MESSAGE = 1024


@dataclass(frozen=True)
class DatabaseState:
    """One database as evaluated."""

    key: DatabaseKey
    mode: Literal["Managed", "External"]
    ready: bool
    phase: str
    reason: str
    message: str
    degraded: bool = False
    cluster: str | None = None
    deletion_policy: str | None = None
    endpoint: str | None = None

    def to_status(self) -> dict[str, Any]:
        """The ``status.databases[]`` entry (camelCase, unset fields left out)."""
        return DatabaseStatus.model_validate(
            {
                "name": self.key,
                "mode": self.mode,
                "ready": self.ready,
                "phase": self.phase,
                "reason": self.reason,
                "message": self.message,
                "cluster": self.cluster,
                "deletionPolicy": self.deletion_policy,
                "endpoint": self.endpoint,
            }
        ).model_dump(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class DatabasesEvaluation:
    """The verdict over all databases of one ApeRAG."""

    ready: bool
    reason: str
    message: str
    degraded: bool
    databases: list[DatabaseState] = field(default_factory=list)

    @property
    def condition(self) -> dict[str, str]:
        """The ``DatabasesReady`` condition (the caller adds lastTransitionTime and observedGeneration)."""
        return {
            "type": CONDITION_TYPE,
            "status": "True" if self.ready else "False",
            "reason": self.reason,
            "message": self.message,
        }

    @property
    def degraded_reason(self) -> str | None:
        """The reason for the ApeRAG's ``Degraded`` condition; None when the databases are not degraded."""
        reasons = [db.reason for db in self.databases if db.degraded]
        return _most_serious(reasons) if reasons else None

    @property
    def degraded_message(self) -> str:
        return _truncate("; ".join(f"{db.key}: {db.message}" for db in self.databases if db.degraded))

    @property
    def status_databases(self) -> list[dict[str, Any]]:
        return [db.to_status() for db in self.databases]


def _most_serious(reasons: Collection[str]) -> str:
    return min(reasons, key=lambda reason: REASON_PRIORITY.index(reason) if reason in REASON_PRIORITY else 99)


def _truncate(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def missing_secret_keys(
    needed: Mapping[str, Collection[str]], secrets: Mapping[str, Collection[str]]
) -> list[str]:
    """Human-readable problems ("Secret x not found", "Secret x has no key y"), sorted, no values."""
    problems = []
    for secret_name in sorted(needed):
        if secret_name not in secrets:
            problems.append(f"Secret {secret_name} not found")
            continue
        for key in sorted(needed[secret_name]):
            if key not in secrets[secret_name]:
                problems.append(f"Secret {secret_name} has no key {key}")
    return problems


def cluster_message(cluster: Mapping[str, Any]) -> str:
    """What KubeBlocks says about a Cluster: status.message, else failed conditions, else components."""
    status = cluster.get("status") or {}
    message = status.get("message")
    if isinstance(message, str) and message:
        return message
    parts = [
        f"{cond.get('type')}: {cond.get('message')}"
        for cond in status.get("conditions") or []
        if cond.get("status") == "False" and cond.get("message")
    ]
    if parts:
        return "; ".join(parts)
    for component, component_status in sorted((status.get("components") or {}).items()):
        for key, value in sorted((component_status.get("message") or {}).items()):
            parts.append(f"{component} {key}: {value}")
    return "; ".join(parts)


def _evaluate_managed(
    db: ManagedDatabase,
    cluster: Mapping[str, Any] | None,
    needed_secrets: Mapping[str, Collection[str]],
    secrets: Mapping[str, Collection[str]],
    kubeblocks_installed: bool,
) -> DatabaseState:
    common: dict[str, Any] = {
        "key": db.key,
        "mode": "Managed",
        "cluster": db.cluster_name,
        "deletion_policy": db.deletion_policy,
        "endpoint": f"{db.service_name}:{db.port}",
    }
    if not kubeblocks_installed:
        return DatabaseState(
            **common,
            ready=False,
            phase="Missing",
            reason=REASON_KUBEBLOCKS_NOT_INSTALLED,
            message=f"cannot create Cluster {db.cluster_name}: the KubeBlocks CRD {CLUSTER_CRD_NAME} is not "
            "installed",
            degraded=True,
        )
    if cluster is None:
        return DatabaseState(
            **common,
            ready=False,
            phase="Missing",
            reason=REASON_CLUSTERS_NOT_READY,
            message=f"Cluster {db.cluster_name} does not exist yet",
        )
    status = cluster.get("status") or {}
    phase = str(status.get("phase") or "")
    if phase in _DEGRADED_PHASES:
        detail = cluster_message(cluster)
        return DatabaseState(
            **common,
            ready=False,
            phase=phase,
            reason=_DEGRADED_PHASES[phase],
            message=_truncate(f"Cluster {db.cluster_name} is {phase}" + (f": {detail}" if detail else "")),
            degraded=True,
        )
    generation = int((cluster.get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return DatabaseState(
            **common,
            ready=False,
            phase=phase or "Pending",
            reason=REASON_CLUSTERS_NOT_READY,
            message=f"Cluster {db.cluster_name} generation {generation} not yet observed by KubeBlocks "
            f"(observed {observed})",
        )
    if phase != "Running":
        return DatabaseState(
            **common,
            ready=False,
            phase=phase or "Pending",
            reason=REASON_CLUSTERS_NOT_READY,
            message=f"Cluster {db.cluster_name} is {phase or 'not yet reported'}",
        )
    problems = missing_secret_keys(needed_secrets, secrets)
    if problems:
        # KubeBlocks writes account Secrets itself; a Running Cluster without one is worth waiting
        # for, not a reason to page anyone.
        return DatabaseState(
            **common, ready=False, phase=phase, reason=REASON_SECRET_MISSING, message="; ".join(problems)
        )
    return DatabaseState(
        **common, ready=True, phase=phase, reason="Ready", message=f"Cluster {db.cluster_name} is Running"
    )


def _external_endpoint(env: list[dict[str, Any]]) -> str | None:
    values = {var["name"]: var.get("value") for var in env if "value" in var}
    for host_var, port_var in (
        ("POSTGRES_HOST", "POSTGRES_PORT"),
        ("REDIS_HOST", "REDIS_PORT"),
        ("ES_HOST_NAME", "ES_PORT"),
    ):
        if values.get(host_var):
            return f"{values[host_var]}:{values.get(port_var)}"
    url = values.get("QDRANT_URL")
    return url if url else None


def _evaluate_external(
    key: DatabaseKey, env: list[dict[str, Any]], secrets: Mapping[str, Collection[str]]
) -> DatabaseState:
    problems = missing_secret_keys(secret_keys_of(env), secrets)
    endpoint = _external_endpoint(env)
    if problems:
        # The spec points at a Secret nobody has created (yet): a human must act; the watch on
        # Secrets brings the reconcile back when it appears.
        return DatabaseState(
            key=key,
            mode="External",
            ready=False,
            phase="SecretMissing",
            reason=REASON_SECRET_MISSING,
            message="; ".join(problems),
            degraded=True,
            endpoint=endpoint,
        )
    return DatabaseState(
        key=key,
        mode="External",
        ready=True,
        phase="Configured",
        reason="Ready",
        message="external",
        endpoint=endpoint,
    )


def evaluate_databases(
    name: str,
    databases: DatabasesSpec,
    clusters: Mapping[str, Mapping[str, Any] | None],
    secrets: Mapping[str, Collection[str]],
    kubeblocks_installed: bool,
) -> DatabasesEvaluation:
    """Evaluates the databases of the ApeRAG ``name``.

    ``clusters`` maps Cluster names to the observed objects (a missing name counts as not existing);
    ``secrets`` maps the names of existing Secrets in the namespace to their keys (``data`` and
    ``stringData`` keys; values are never needed).
    """
    env = env_by_database(name, databases)
    managed = {db.key: db for db in managed_databases(name, databases)}
    states: list[DatabaseState] = []
    for key, database_env in env.items():
        if key in managed:
            db = managed[key]
            states.append(
                _evaluate_managed(
                    db,
                    clusters.get(db.cluster_name),
                    secret_keys_of(database_env),
                    secrets,
                    kubeblocks_installed,
                )
            )
        else:
            states.append(_evaluate_external(key, database_env, secrets))

    not_ready = [state for state in states if not state.ready]
    if not not_ready:
        return DatabasesEvaluation(
            ready=True,
            reason=REASON_READY,
            message="all databases ready: " + ", ".join(state.key for state in states),
            degraded=False,
            databases=states,
        )
    return DatabasesEvaluation(
        ready=False,
        reason=_most_serious([state.reason for state in not_ready]),
        message=_truncate("; ".join(f"{state.key}: {state.message}" for state in not_ready)),
        degraded=any(state.degraded for state in states),
        databases=states,
    )
