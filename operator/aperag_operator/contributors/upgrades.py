"""Migrations, upgrades and rollbacks, as a contributor: the I/O-free glue around the upgrade machine.

It reads what the machine needs from the cache (the ApeRAG's migration Jobs and their Pods' termination
messages, its Backup OpsRequests, its Deployments), asks :func:`aperag_operator.upgrade.decide`, and
hands back the Jobs/OpsRequests to create, the release the Deployments must run (or that they must not
move), the status fields (``upgrade``, ``history``, ``version``), the phase, Events and when to look
again. Its state lives in the status, so a restarted operator resumes where it stopped.

Jobs and OpsRequests are create-only: a Job's pod template cannot change, so one that exists is never
applied again (nor pruned: ``ttlSecondsAfterFinished`` removes it, after the result is recorded).
"""

from __future__ import annotations

from collections.abc import Mapping

from aperag_operator.builders import backup_opsrequest, deployment, migration_job
from aperag_operator.builders.common import Instance, Obj
from aperag_operator.builders.kubeblocks_cluster import managed_databases
from aperag_operator.contributors.autoscaling import NAME as AUTOSCALING
from aperag_operator.contributors.base import Context, Contribution
from aperag_operator.contributors.databases import NAME as DATABASES
from aperag_operator.kinds import DEPLOYMENT, JOB, Kind, register
from aperag_operator.upgrade import (
    RETRY_ANNOTATION,
    UpgradeInputs,
    UpgradeObserved,
    decide,
    observe_backup,
    observe_deployments,
    observe_job,
)

NAME = "upgrades"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

#: The Pods of migration Jobs (for their termination messages): a few among all the Pods of a namespace,
#: so the watch selects them on the server.
MIGRATION_POD = register(
    Kind(
        "v1",
        "Pod",
        "pods",
        selector=f"app.kubernetes.io/component={migration_job.COMPONENT},app.kubernetes.io/managed-by=aperag-operator",
    )
)
OPSREQUEST = register(
    Kind(
        backup_opsrequest.OPSREQUEST_API_VERSION,
        backup_opsrequest.OPSREQUEST_KIND,
        backup_opsrequest.OPSREQUEST_PLURAL,
    )
)


class UpgradesContributor:
    name = NAME
    #: The databases' gate: no migration starts before they are ready (and their env wires the Jobs);
    #: autoscaling: which components' live replicas the health gate counts.
    requires: tuple[str, ...] = (DATABASES, AUTOSCALING)
    watched_kinds: tuple[Kind, ...] = (JOB, MIGRATION_POD, OPSREQUEST)
    owned_kinds: tuple[Kind, ...] = ()  # create-only; never pruned

    def secret_names(self, instance: Instance) -> frozenset[str]:
        return frozenset()

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        inst = context.instance
        observed = context.observed
        databases = upstream[DATABASES]
        blocking = [p for p in (*context.prerequisites, *databases.problems) if p.blocks_workloads]
        postgres = next((db.cluster_name for db in managed_databases(inst.name, inst.spec.databases)
                         if db.key == "postgresql"), None)  # fmt: skip
        inputs = UpgradeInputs(
            name=inst.name,
            namespace=inst.namespace,
            spec=inst.spec,
            gates_open=not blocking,
            gates_reason="; ".join(p.message for p in blocking),
            paused=context.paused,
            retry_token=context.annotations.get(RETRY_ANNOTATION),
            postgres_cluster=postgres,
        )
        pods: dict[str, list[Obj]] = {}
        for pod in observed.labeled(MIGRATION_POD):
            job_name = ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL)
            if job_name:
                pods.setdefault(str(job_name), []).append(pod)
        jobs = {j["metadata"]["name"]: observe_job(j, pods.get(j["metadata"]["name"], [])) for j in observed.owned(JOB)}
        backups = {o["metadata"]["name"]: observe_backup(o) for o in observed.owned(OPSREQUEST)}
        deployments = observe_deployments(
            inst.spec,
            {c: observed.get(DEPLOYMENT, deployment.name(inst, c)) for c in deployment.enabled_components(inst)},
            upstream[AUTOSCALING].autoscaled,
        )
        decision = decide(
            inputs, dict(context.status), UpgradeObserved(jobs=jobs, backups=backups, deployments=deployments),
            context.now,
        )  # fmt: skip
        children: list[Obj] = []
        for job in decision.jobs:
            if observed.get(JOB, job.name) is None:
                children.append(migration_job.build(inst, job, databases.env))
        for backup in decision.backups:
            if observed.get(OPSREQUEST, backup.name) is None:
                children.append(backup_opsrequest.build(inst, backup))
        return Contribution(
            children=tuple(children),
            problems=decision.problems,
            status=decision.status_fields(),
            events=tuple((e.type, e.reason, e.message) for e in decision.events),
            requeue_after=decision.requeue_after,
            workload_release=decision.deployments,
            hold_workloads=decision.deployments is None,
            phase=decision.phase,
        )
