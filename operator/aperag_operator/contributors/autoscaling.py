"""Autoscaling, as a contributor: the workers on the Celery queue (KEDA), the API on CPU (an HPA).

Pure: it reads whether KEDA's kinds are served, the autoscalers it made and the HPA KEDA made, and
returns:

* children: the workers' ScaledObject and TriggerAuthentication, or (KEDA not installed) a CPU
  HorizontalPodAutoscaler for the workers; the API's HorizontalPodAutoscaler. All three kinds are
  owned and pruned when no longer desired (autoscaling turned off, KEDA installed later);
* ``autoscaled``: the components whose replicas an autoscaler owns, so their Deployments are built
  without ``spec.replicas`` (handed over first, see ``reconcile.replicas_handover``) and their status
  and health gate count the Deployment's live replicas;
* ``status.autoscaling`` (each autoscaler with its own conditions and the conditions of the HPA KEDA made)
  and the ``AutoscalingReady`` condition, so a person sees why workers are not scaling.

KEDA installed after the operator started: its kinds turn LISTED, every ApeRAG is reconciled again and
the workers move from the CPU HPA to the ScaledObject without a restart. The CPU HPA is deleted first
and the ScaledObject created in the next reconcile, so two autoscalers never drive the workers at once.
Autoscaling does not gate anything: the app serves whatever the autoscalers do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aperag_operator.builders import autoscaling
from aperag_operator.builders.common import Instance, Obj
from aperag_operator.cache import KindState, owner_of
from aperag_operator.contributors.base import Context, Contribution
from aperag_operator.kinds import HORIZONTAL_POD_AUTOSCALER, SCALED_OBJECT, TRIGGER_AUTHENTICATION, Kind

NAME = "autoscaling"
CONDITION = "AutoscalingReady"
#: After the CPU HPA of the workers is deleted (KEDA installed later), look again this soon to create
#: the ScaledObject (the deletion was the operator's own: no watch event wakes the resource for it).
SWITCH_REQUEUE_SECONDS = 1.0

Verdict = tuple[bool, str, str]  # (ready, reason, message)


def _conditions(obj: Obj | None) -> list[Obj]:
    """An object's conditions as type/status/reason/message (no timestamps: the status stays stable)."""
    out = []
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        entry = {"type": str(cond.get("type", "")), "status": str(cond.get("status", "Unknown"))}
        for field_name in ("reason", "message"):
            if cond.get(field_name):
                entry[field_name] = str(cond[field_name])
        out.append(entry)
    return out


def _find(conditions: Sequence[Obj], ctype: str) -> Obj | None:
    return next((c for c in conditions if c["type"] == ctype), None)


def _hpa_problem(name: str, conditions: Sequence[Obj]) -> Verdict | None:
    """Why an HPA does not scale, from its conditions; None when it does. ScalingActive=False with
    ScalingDisabled is KEDA's HPA at zero replicas (KEDA itself scales from zero): not a problem."""
    able = _find(conditions, "AbleToScale")
    active = _find(conditions, "ScalingActive")
    for cond in (able, active):
        if cond is None or cond["status"] == "True":
            continue
        if cond is active and cond.get("reason") == "ScalingDisabled":
            continue
        reason = cond.get("reason") or f"{cond['type']}False"
        return False, reason, f"HorizontalPodAutoscaler {name}: {cond.get('message') or reason}"
    return None


def _hpa_report(name: str, hpa: Obj | None) -> tuple[dict[str, Any], Verdict]:
    status = (hpa or {}).get("status") or {}
    conditions = _conditions(hpa)
    report: dict[str, Any] = {"conditions": conditions}
    for field_name in ("currentReplicas", "desiredReplicas"):
        if status.get(field_name) is not None:
            report[field_name] = int(status[field_name])
    if not conditions:
        return report, (False, "AutoscalerPending", f"HorizontalPodAutoscaler {name} has not reported yet")
    problem = _hpa_problem(name, conditions)
    return report, problem or (True, "Scaling", f"HorizontalPodAutoscaler {name} scales")


def _scaled_object_report(
    name: str, scaled_object: Obj | None, keda_hpa_name: str, keda_hpa: Obj | None
) -> tuple[dict[str, Any], Verdict]:
    conditions = _conditions(scaled_object)
    hpa_conditions = _conditions(keda_hpa)
    hpa_status = (keda_hpa or {}).get("status") or {}
    report: dict[str, Any] = {
        "horizontalPodAutoscaler": ((scaled_object or {}).get("status") or {}).get("hpaName") or keda_hpa_name,
        "conditions": conditions,
        "hpaConditions": hpa_conditions,
    }
    for field_name in ("currentReplicas", "desiredReplicas"):
        if hpa_status.get(field_name) is not None:
            report[field_name] = int(hpa_status[field_name])
    what = f"ScaledObject {name}"
    if not conditions:
        return report, (
            False,
            "ScaledObjectPending",
            f"KEDA has not reported on {what} yet: is the KEDA operator running?",
        )
    paused = _find(conditions, "Paused")
    if paused is not None and paused["status"] == "True":
        return report, (False, "ScaledObjectPaused", f"{what} is paused: {paused.get('message', '')}".rstrip(": "))
    ready = _find(conditions, "Ready")
    if ready is None or ready["status"] != "True":
        reason = (ready or {}).get("reason") or "ScaledObjectNotReady"
        return report, (False, reason, f"{what} is not ready: {(ready or {}).get('message') or reason}")
    fallback = _find(conditions, "Fallback")
    if fallback is not None and fallback["status"] == "True":
        message = fallback.get("message") or "the queue cannot be read"
        return report, (False, "ScalerFallback", f"{what} uses its fallback replicas: {message}")
    problem = _hpa_problem(report["horizontalPodAutoscaler"], hpa_conditions)
    if problem is not None:
        return report, problem
    active = _find(conditions, "Active")
    state = "active" if active is not None and active["status"] == "True" else "idle"
    return report, (True, "Scaling", f"{what} scales the workers on the queue ({state})")


def _queue_metric(inst: Instance, target: autoscaling.RedisTarget) -> str:
    worker = inst.spec.autoscaling.worker
    return (
        f"Redis list {autoscaling.QUEUE} (database {autoscaling.queue_database_index(inst.spec)}) at "
        f"{target.address}: {worker.list_length} queued tasks per worker; running tasks "
        f"({autoscaling.UNACKED}): {inst.spec.components.worker.concurrency} per worker"
    )


def _cpu_metric(cpu: int, memory: int | None = None) -> str:
    text = f"CPU {cpu}% of requests"
    return text + (f", memory {memory}% of requests" if memory is not None else "")


class AutoscalingContributor:
    name = NAME
    requires: tuple[str, ...] = ()
    watched_kinds: tuple[Kind, ...] = (SCALED_OBJECT, TRIGGER_AUTHENTICATION, HORIZONTAL_POD_AUTOSCALER)
    #: Pruned when owned and no longer desired. KEDA's own HPA is owned by its ScaledObject, not by the
    #: ApeRAG, so it is never pruned here (KEDA deletes it with the ScaledObject).
    owned_kinds: tuple[Kind, ...] = (SCALED_OBJECT, TRIGGER_AUTHENTICATION, HORIZONTAL_POD_AUTOSCALER)

    def secret_names(self, instance: Instance) -> frozenset[str]:
        return frozenset()

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        inst = context.instance
        autoscaled = autoscaling.autoscaled_components(inst.spec)
        if not autoscaled:
            return Contribution()
        children: list[Obj] = []
        statuses: dict[str, Any] = {}
        verdicts: list[Verdict] = []
        requeue: float | None = None
        if "worker" in autoscaled:
            report, verdict, worker_children, requeue = self._worker(context)
            children += worker_children
            statuses["worker"] = report
            verdicts.append(verdict)
        if "api" in autoscaled:
            api = inst.spec.autoscaling.api
            name = autoscaling.hpa_name(inst, "api")
            children.append(autoscaling.hpa(inst, "api"))
            report, verdict = _hpa_report(name, context.observed.get(HORIZONTAL_POD_AUTOSCALER, name))
            statuses["api"] = {
                "kind": HORIZONTAL_POD_AUTOSCALER.kind,
                "name": name,
                "metric": _cpu_metric(api.target_cpu_utilization, api.target_memory_utilization),
                "minReplicas": api.min_replicas,
                "maxReplicas": api.max_replicas,
                **report,
            }
            verdicts.append((verdict[0], verdict[1], f"api: {verdict[2]}"))
        failing = [v for v in verdicts if not v[0]]
        if failing:
            condition = {
                "type": CONDITION,
                "status": "False",
                "reason": failing[0][1],
                "message": "; ".join(v[2] for v in failing),
            }
        else:
            condition = {
                "type": CONDITION,
                "status": "True",
                "reason": "AutoscalersReady",
                "message": "; ".join(v[2] for v in verdicts),
            }
        return Contribution(
            children=tuple(children),
            status={"autoscaling": statuses},
            conditions=(condition,),
            autoscaled=autoscaled,
            requeue_after=requeue,
        )

    def _worker(self, context: Context) -> tuple[dict[str, Any], Verdict, list[Obj], float | None]:
        inst = context.instance
        observed = context.observed
        worker = inst.spec.autoscaling.worker
        target = autoscaling.redis_target(inst)
        states = {observed.state(SCALED_OBJECT), observed.state(TRIGGER_AUTHENTICATION)}
        cpu_name = autoscaling.hpa_name(inst, "worker")
        if states == {KindState.LISTED} and target is not None:
            cpu_hpa = observed.get(HORIZONTAL_POD_AUTOSCALER, cpu_name)
            so_name = autoscaling.scaled_object_name(inst)
            base = {
                "kind": SCALED_OBJECT.kind,
                "name": so_name,
                "metric": _queue_metric(inst, target),
                "minReplicas": worker.min_replicas,
                "maxReplicas": worker.max_replicas,
            }
            if cpu_hpa is not None and owner_of(cpu_hpa) == (inst.namespace, inst.name):
                # KEDA was installed meanwhile: the CPU HPA goes first (no longer desired: pruned now), the
                # ScaledObject comes in the next reconcile.
                verdict = (
                    False,
                    "SwitchingToKEDA",
                    f"worker: KEDA is installed: HorizontalPodAutoscaler {cpu_name} is removed, then "
                    f"ScaledObject {so_name} takes over",
                )
                return base, verdict, [], SWITCH_REQUEUE_SECONDS
            children: list[Obj] = []
            auth = autoscaling.trigger_authentication(inst, target)
            if auth is not None:
                children.append(auth)
            children.append(autoscaling.scaled_object(inst, target))
            scaled_object = observed.get(SCALED_OBJECT, so_name)
            hpa_name = ((scaled_object or {}).get("status") or {}).get("hpaName") or autoscaling.keda_hpa_name(inst)
            report, verdict = _scaled_object_report(
                so_name, scaled_object, hpa_name, observed.get(HORIZONTAL_POD_AUTOSCALER, hpa_name)
            )
            return {**base, **report}, (verdict[0], verdict[1], f"worker: {verdict[2]}"), children, None
        # No KEDA (or a queue KEDA cannot address): the workers scale on CPU, and the condition says why.
        report, _ = _hpa_report(cpu_name, observed.get(HORIZONTAL_POD_AUTOSCALER, cpu_name))
        status = {
            "kind": HORIZONTAL_POD_AUTOSCALER.kind,
            "name": cpu_name,
            "metric": _cpu_metric(worker.target_cpu_utilization),
            "minReplicas": max(1, worker.min_replicas),
            "maxReplicas": worker.max_replicas,
            **report,
        }
        fallback = f"the workers scale on CPU instead (HorizontalPodAutoscaler {cpu_name})"
        if target is None:
            verdict = (
                False,
                "QueueNotAddressable",
                f"worker: KEDA cannot read a Redis URL from a Secret; {fallback}: set "
                "databases.redis.external.host and credentialsSecretRef to scale on the queue",
            )
        elif KindState.FORBIDDEN in states:
            verdict = (
                False,
                "KEDANotVisible",
                f"worker: the operator may not list {SCALED_OBJECT} and {TRIGGER_AUTHENTICATION}; {fallback}: "
                "grant it their rules (charts/aperag-operator/files/rbac-rules.yaml)",
            )
        else:
            verdict = (
                False,
                "KEDANotInstalled",
                f"worker: KEDA is not installed (no {SCALED_OBJECT}); {fallback}; install KEDA to scale on "
                "the queue: the operator switches without a restart",
            )
        return status, verdict, [autoscaling.hpa(inst, "worker")], None
