"""Pure status computation: observed children and problems in, the resource's status out.

Conditions follow the Kubernetes API convention (type, status, reason, message, lastTransitionTime,
observedGeneration). ``lastTransitionTime`` only moves when a condition's status flips, and nothing in
the status changes unless the world did, so a resync writes no status (no heartbeat timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aperag_operator.builders.common import Obj

READY, PROGRESSING, DEGRADED, PAUSED = "Ready", "Progressing", "Degraded", "Paused"


@dataclass(frozen=True)
class Problem:
    """Something that keeps the resource from being reconciled as asked (shown as Degraded)."""

    reason: str
    message: str
    #: Whether it blocks applying the app workloads (a gate); other children are still applied.
    blocks_workloads: bool = True
    #: False for an expected wait (e.g. databases still being created): Ready=False and
    #: Progressing=True with this reason, but not Degraded.
    degraded: bool = True


@dataclass(frozen=True)
class ComponentState:
    desired: int
    ready: int
    updated: int
    available: int
    is_ready: bool
    failure: str | None = None

    def as_status(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "ready": self.ready,
            "updated": self.updated,
            "available": self.available,
            "isReady": self.is_ready,
        }


def component_state(desired: int | None, deployment: Obj | None) -> ComponentState:
    """Roll one Deployment's status up into desired/ready/updated/available.

    ``desired`` is the replica count the spec asks for; None when an autoscaler owns the replicas: the
    Deployment's live ``spec.replicas`` (what the autoscaler last set) is then the count to reach, so a
    scale-up under way is a rollout in progress and a scale-down is not a failure."""
    if deployment is None:
        return ComponentState(desired or 0, 0, 0, 0, False)
    if desired is None:
        live = (deployment.get("spec") or {}).get("replicas")
        desired = int(live) if live is not None else 1
    desired_replicas = desired
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    observed_generation = status.get("observedGeneration", 0)
    ready = int(status.get("readyReplicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    available = int(status.get("availableReplicas", 0) or 0)
    total = int(status.get("replicas", 0) or 0)
    failure = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            failure = cond.get("message") or "progress deadline exceeded"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = cond.get("message") or "replica failure"
    is_ready = (
        observed_generation >= generation
        and updated == desired_replicas
        and ready == desired_replicas
        and available == desired_replicas
        and total == desired_replicas
    )
    return ComponentState(desired_replicas, ready, updated, available, is_ready, failure)


def _condition(
    previous: dict[str, Obj], ctype: str, status: bool, reason: str, message: str, generation: int, now: str
) -> Obj:
    value = "True" if status else "False"
    old = previous.get(ctype)
    changed = old is None or old.get("status") != value
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed or not old else old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def compute_status(
    *,
    generation: int,
    version: str,
    previous: Obj | None,
    components: dict[str, ComponentState],
    problems: list[Problem],
    paused: bool,
    now: str,
    extra: Obj | None = None,
    phase: str | None = None,
    kept_components: Obj | None = None,
) -> Obj:
    """The full new status. ``extra`` is merged in (contributors' status fields and conditions);
    ``phase`` is a contributor's step (Migrating, RollingOut, ...) shown instead of the roll-up, except
    when paused. ``kept_components``: the previous status's components, shown when the spec could not be
    read (nothing was touched, so they still describe what runs)."""
    previous = previous or {}
    prev_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    failing = {name: st.failure for name, st in components.items() if st.failure}
    all_ready = bool(components) and all(st.is_ready for st in components.values())
    not_ready = [f"{n} {st.ready}/{st.desired} ready" for n, st in components.items() if not st.is_ready]

    waits = [p for p in problems if not p.degraded]
    problems = [p for p in problems if p.degraded]
    if problems:
        degraded = (True, problems[0].reason, "; ".join(p.message for p in problems))
    elif failing:
        degraded = (True, "ComponentFailing", "; ".join(f"{n}: {m}" for n, m in failing.items()))
    else:
        degraded = (False, "AsExpected", "")

    # A wait that does not hold the workloads back (a migration while the running version serves) keeps
    # Ready as the components are; it shows in Progressing.
    blocking_waits = [p for p in waits if p.blocks_workloads]
    if problems or blocking_waits:
        first = (problems or blocking_waits)[0]
        ready = (False, first.reason, first.message)
    elif all_ready:
        ready = (True, "AllComponentsReady", "all components are ready")
    else:
        ready = (False, "ComponentsNotReady", ", ".join(not_ready))

    if paused:
        progressing = (False, "Paused", "reconciliation is paused")
    elif problems:
        progressing = (False, problems[0].reason, problems[0].message)
    elif waits:
        progressing = (True, waits[0].reason, "; ".join(p.message for p in waits))
    elif all_ready:
        progressing = (False, "Complete", "all components are up to date")
    else:
        progressing = (True, "RollingOut", ", ".join(not_ready))

    paused_c = (
        (True, "Paused", 'annotation aperag.io/paused is "true": no writes to children')
        if paused
        else (False, "Reconciling", "")
    )

    conditions = [
        _condition(prev_conditions, ctype, *value, generation, now)
        for ctype, value in (
            (READY, ready),
            (PROGRESSING, progressing),
            (DEGRADED, degraded),
            (PAUSED, paused_c),
        )
    ]
    if paused:
        rolled_up = "Paused"
    elif phase:
        rolled_up = phase
    elif degraded[0]:
        rolled_up = "Degraded"
    elif all_ready and not waits:
        rolled_up = "Ready"
    else:
        rolled_up = "Progressing"
    status: Obj = {
        "observedGeneration": generation,
        "phase": rolled_up,
        "conditions": conditions,
    }
    if components:
        status["components"] = {name: st.as_status() for name, st in components.items()}
    elif kept_components:
        # The spec could not be read: what runs keeps running, and the status keeps showing it.
        status["components"] = kept_components
    # No components at all: the key is left out rather than applied as {} (server-side apply turns the
    # emptied map of a previous status into null, which the schema refuses: the whole status write fails).
    running = version if all_ready else previous.get("version")
    if running:
        status["version"] = running
    if extra:
        extra = dict(extra)
        # Extra conditions (e.g. DatabasesReady) follow the core ones, with the same transition rules.
        for cond in extra.pop("conditions", None) or []:
            conditions.append(
                _condition(
                    prev_conditions,
                    str(cond["type"]),
                    cond.get("status") == "True",
                    str(cond.get("reason", "")),
                    str(cond.get("message", "")),
                    generation,
                    now,
                )
            )
        status.update(extra)
    return status


def condition(status: Obj | None, ctype: str) -> Obj | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            result: Obj = cond
            return result
    return None


def is_true(status: Obj | None, ctype: str) -> bool:
    cond = condition(status, ctype)
    return bool(cond and cond.get("status") == "True")


def transitions(old: Obj | None, new: Obj) -> list[tuple[str, str, str]]:
    """Kubernetes Events (type, reason, message) for significant transitions between two statuses."""
    events: list[tuple[str, str, str]] = []
    if is_true(new, READY) and not is_true(old, READY):
        events.append(("Normal", "Ready", f"all components are ready (version {new.get('version', '')})"))
    new_degraded = condition(new, DEGRADED)
    old_degraded = condition(old, DEGRADED)
    if (
        new_degraded
        and new_degraded["status"] == "True"
        and (
            not old_degraded
            or old_degraded.get("status") != "True"
            or old_degraded.get("reason") != new_degraded.get("reason")
        )
    ):
        events.append(("Warning", str(new_degraded["reason"]), str(new_degraded.get("message", ""))))
    if is_true(old, DEGRADED) and not is_true(new, DEGRADED):
        events.append(("Normal", "Recovered", "no longer degraded"))
    if is_true(new, PAUSED) and not is_true(old, PAUSED):
        events.append(("Normal", "Paused", "reconciliation paused"))
    if is_true(old, PAUSED) and not is_true(new, PAUSED):
        events.append(("Normal", "Resumed", "reconciliation resumed"))
    return events
