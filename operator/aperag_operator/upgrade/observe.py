"""Turning observed Kubernetes objects (plain dicts, as read from the API) into the machine's observations.
Pure: the operator's glue lists the objects and calls these."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from aperag_operator.builders import deployment
from aperag_operator.builders.migration_job import CONTAINER
from aperag_operator.spec.model import ApeRAGSpec
from aperag_operator.status import component_state
from aperag_operator.upgrade.types import (
    BackupObservation,
    DeploymentObservation,
    JobObservation,
    JobState,
    MigrationReport,
)

Obj = Mapping[str, Any]


def _revisions(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def parse_report(message: str) -> MigrationReport | None:
    """The app's JSON report (docs/app.md) from a termination message; None when the message is not one
    (e.g. the end of the log, which ``FallbackToLogsOnError`` puts there when the app died before)."""
    try:
        raw = json.loads(message)
    except (ValueError, TypeError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("ok"), bool) or "action" not in raw:
        return None
    changed = raw.get("changed")
    reason = raw.get("reason")
    return MigrationReport(
        ok=raw["ok"],
        action=str(raw.get("action") or ""),
        reason=str(reason) if reason else None,
        message=str(raw.get("message") or ""),
        before=_revisions(raw.get("before")),
        current=_revisions(raw.get("current")),
        changed=changed if isinstance(changed, bool) else None,
    )


def _condition(job: Obj, kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            found: Mapping[str, Any] = cond
            return found
    return None


def _termination_message(pod: Obj) -> str | None:
    """The migration container's termination message ("" when it left none); None while it runs."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else None)
    terminated = ((status or {}).get("state") or {}).get("terminated")
    if terminated is None:
        return None
    return str(terminated.get("message") or "")


def observe_job(job: Obj, pods: Sequence[Obj]) -> JobObservation:
    """A migration Job and the pods it created (label ``batch.kubernetes.io/job-name``).

    The Job is over only at its terminal condition (``Complete`` or ``Failed``, which the Job controller
    sets once the pods are gone; ``FailureTarget`` alone is not over). The report is read from the
    newest pod that terminated.
    """
    name = str((job.get("metadata") or {}).get("name") or "")
    failed = _condition(job, "Failed")
    state: JobState = "Running"
    reason = message = ""
    if _condition(job, "Complete") is not None:
        state = "Succeeded"
    elif failed is not None:
        state = "Failed"
        reason, message = str(failed.get("reason") or ""), str(failed.get("message") or "")
    newest = sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)
    for pod in newest:
        text = _termination_message(pod)
        if text is None:
            continue
        report = parse_report(text)
        return JobObservation(name, state, reason, message, report, "" if report else text.strip())
    return JobObservation(name, state, reason, message)


def observe_backup(ops: Obj) -> BackupObservation:
    """A Backup OpsRequest: its phase, and the message of its latest condition."""
    status = ops.get("status") or {}
    conditions = status.get("conditions") or []
    message = str(conditions[-1].get("message") or "") if conditions else ""
    name = str((ops.get("metadata") or {}).get("name") or "")
    return BackupObservation(name, str(status.get("phase") or ""), message)


def observe_deployments(
    spec: ApeRAGSpec, deployments: Mapping[str, Obj | None], autoscaled: Collection[str] = ()
) -> dict[str, DeploymentObservation]:
    """Each existing component Deployment: its pod template's release and its rolled-up readiness. The
    replicas of an ``autoscaled`` component are the Deployment's live ones (the autoscaler's), not the
    spec's: an autoscaler moving them during a rollout neither fails nor passes the health gate early."""
    out: dict[str, DeploymentObservation] = {}
    for component, obj in deployments.items():
        if obj is None:
            continue
        template = (obj.get("spec") or {}).get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        containers = (template.get("spec") or {}).get("containers") or [{}]
        desired = None if component in autoscaled else deployment.desired_replicas(spec, component)
        state = component_state(desired, dict(obj))
        version, image = labels.get("app.kubernetes.io/version"), containers[0].get("image")
        out[component] = DeploymentObservation(version, image, state)
    return out
