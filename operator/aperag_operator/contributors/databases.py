"""The databases as a contributor: KubeBlocks Clusters (managed) or connection settings (external).

Pure: everything comes from the cache view (the Clusters, whether KubeBlocks' CRD is served, the key
*names* of the referenced Secrets) and goes to :func:`aperag_operator.databases.evaluate_databases`.

* env: the connection variables of the app containers (secrets only as ``secretKeyRef``);
* children: a KubeBlocks Cluster per managed database (none while KubeBlocks is missing). Clusters
  are watched but never pruned: a Cluster the spec no longer lists holds data and is left alone;
* problems: while the databases are not ready the app Deployments are held back (not created on
  first install, not rolled later); an expected wait is Progressing, a Cluster Abnormal/Failed, a
  missing external Secret or KubeBlocks missing is Degraded;
* status: ``status.databases`` and the ``DatabasesReady`` condition.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aperag_operator.builders.common import Instance, Obj, finalize, labels, owner_reference
from aperag_operator.builders.database_env import build_database_env, referenced_secret_keys
from aperag_operator.builders.kubeblocks_cluster import build_database_clusters, managed_databases
from aperag_operator.cache import KindState
from aperag_operator.contributors.base import Context, Contribution
from aperag_operator.databases import DatabasesEvaluation, evaluate_databases
from aperag_operator.kinds import KUBEBLOCKS_CLUSTER, Kind
from aperag_operator.status import Problem

NAME = "databases"


def gate_problems(evaluation: DatabasesEvaluation) -> tuple[Problem, ...]:
    """Nothing when ready, else one problem that holds back the app workloads."""
    if evaluation.ready:
        return ()
    if evaluation.degraded:
        return (
            Problem(
                evaluation.degraded_reason or evaluation.reason,
                evaluation.degraded_message or evaluation.message,
                blocks_workloads=True,
                degraded=True,
            ),
        )
    return (Problem(evaluation.reason, evaluation.message, blocks_workloads=True, degraded=False),)


class DatabasesContributor:
    name = NAME
    requires: tuple[str, ...] = ()
    watched_kinds: tuple[Kind, ...] = (KUBEBLOCKS_CLUSTER,)
    owned_kinds: tuple[Kind, ...] = ()  # Clusters hold data: never pruned

    def secret_names(self, instance: Instance) -> frozenset[str]:
        return frozenset(referenced_secret_keys(instance.name, instance.spec.databases))

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        inst = context.instance
        databases = inst.spec.databases
        observed = context.observed
        managed = managed_databases(inst.name, databases)
        state = observed.state(KUBEBLOCKS_CLUSTER) if managed else KindState.LISTED
        installed = state is not KindState.NOT_INSTALLED
        clusters: dict[str, Mapping[str, Any] | None] = {
            db.cluster_name: observed.get(KUBEBLOCKS_CLUSTER, db.cluster_name) for db in managed
        }
        secrets: dict[str, Collection[str]] = {}
        for secret_name in sorted(referenced_secret_keys(inst.name, databases)):
            keys = observed.secret_keys(secret_name)
            if keys is not None:
                secrets[secret_name] = keys
        evaluation = evaluate_databases(inst.name, databases, clusters, secrets, installed)
        problems = gate_problems(evaluation)
        if state is KindState.FORBIDDEN:
            problems = (
                Problem(
                    "ClustersNotVisible",
                    f"the operator may not list {KUBEBLOCKS_CLUSTER}: grant it get/list/watch on them "
                    "(charts/aperag-operator/files/rbac-rules.yaml)",
                ),
                *problems,
            )
        children: tuple[Obj, ...] = ()
        if installed:
            children = tuple(
                finalize(cluster)
                for cluster in build_database_clusters(
                    inst.name, inst.namespace, databases, owner_reference(inst), labels(inst)
                )
            )
        return Contribution(
            env=tuple(build_database_env(inst.name, databases)),
            children=children,
            problems=problems,
            status={"databases": evaluation.status_databases},
            conditions=(evaluation.condition,),
        )
