"""Pure reconcile logic: from the resource and what was observed, what to apply, delete and hold back.

The controller (controller.py) reads the cache and does the I/O; everything here is a plain function of
its inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from aperag_operator.builders.children import desired_children
from aperag_operator.builders.common import FIELD_MANAGER, PAUSED_ANNOTATION, Instance, Obj
from aperag_operator.contributors.base import Context, Contribution, Contributor, Observed
from aperag_operator.diff import applies_field, needs_apply
from aperag_operator.kinds import DEPLOYMENT, WORKLOAD_KINDS, ObjKey, key
from aperag_operator.spec.model import ApeRAGSpec, parse_spec
from aperag_operator.status import Problem


@dataclass(frozen=True)
class SecretRef:
    """A Secret (and optionally one key of it) that the spec needs."""

    name: str
    key: str | None
    field: str


def secret_references(spec: ApeRAGSpec) -> list[SecretRef]:
    """Every non-optional Secret reference in the spec, with the field that makes it."""
    refs: list[SecretRef] = []
    for i, env in enumerate(spec.app.env):
        ref = env.value_from.secret_key_ref if env.value_from else None
        if ref is not None and not ref.optional:
            refs.append(SecretRef(ref.name, ref.key, f"spec.app.env[{i}].valueFrom.secretKeyRef"))
    for i, src in enumerate(spec.app.env_from):
        if src.secret_ref is not None and not src.secret_ref.optional:
            refs.append(SecretRef(src.secret_ref.name, None, f"spec.app.envFrom[{i}].secretRef"))
    if spec.app.api_keys_secret is not None:
        keys = spec.app.api_keys_secret
        refs.append(SecretRef(keys.name, keys.key, "spec.app.apiKeysSecret"))
    s3 = spec.object_storage.s3
    if spec.object_storage.type == "s3" and s3 is not None:
        creds = s3.credentials_secret
        for k in (creds.access_key_id_key, creds.secret_access_key_key):
            refs.append(SecretRef(creds.name, k, "spec.objectStorage.s3.credentialsSecret"))
    return refs


def missing_secrets(spec: ApeRAGSpec, secret_keys: Callable[[str], frozenset[str] | None]) -> list[Problem]:
    """A Degraded problem for each referenced Secret or key that does not exist (names only, no values)."""
    problems: list[Problem] = []
    for ref in secret_references(spec):
        keys = secret_keys(ref.name)
        if keys is None:
            problems.append(Problem("SecretNotFound", f"Secret {ref.name} (referenced by {ref.field}) not found"))
        elif ref.key is not None and ref.key not in keys:
            problems.append(
                Problem("SecretKeyNotFound", f"Secret {ref.name} has no key {ref.key} (referenced by {ref.field})")
            )
    return problems


@dataclass
class Plan:
    """What one reconcile will do to the children."""

    apply: list[Obj] = field(default_factory=list)
    delete: list[ObjKey] = field(default_factory=list)
    held_back: list[ObjKey] = field(default_factory=list)
    desired: list[Obj] = field(default_factory=list)
    #: Replicas to apply under ``REPLICAS_HANDOVER_MANAGER`` before the Deployment of the same name is
    #: applied without them (see :func:`replicas_handover`).
    handover: list[Obj] = field(default_factory=list)


REPLICAS = ("spec", "replicas")


def replicas_handover(desired: Obj, observed: Obj | None) -> Obj | None:
    """The replicas-only object that must be applied under a second field manager before ``desired`` (a
    Deployment built without ``spec.replicas``: an autoscaler owns them) is applied, or None.

    The server-side apply trap: when the operator is the only manager of ``spec.replicas`` and applies
    a Deployment without it, the API server removes the field and the Deployment falls back to its
    default of 1 replica before any autoscaler acted. Applying the current count under another manager
    first makes that manager a co-owner, so the field survives the operator letting go of it; the
    autoscaler's next write takes it over (Kubernetes' documented way to hand a field to an HPA).
    """
    if desired.get("kind") != DEPLOYMENT.kind or "replicas" in (desired.get("spec") or {}):
        return None
    if observed is None or not applies_field(observed, FIELD_MANAGER, REPLICAS):
        return None
    replicas = (observed.get("spec") or {}).get("replicas")
    if replicas is None:
        return None
    meta = desired["metadata"]
    return {
        "apiVersion": desired["apiVersion"],
        "kind": desired["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": replicas},
    }


def plan(
    desired: Sequence[Obj],
    observed: Callable[[ObjKey], Obj | None],
    prunable: Sequence[Obj],
    *,
    workloads_blocked: bool,
    deletions: Sequence[ObjKey] = (),
) -> Plan:
    """Compare desired with observed: apply only what differs, delete ``prunable`` children (owned, of
    a pruned kind) no longer desired and the ``deletions`` contributors asked for, and hold back
    workloads while a gate is closed (without deleting anything that runs)."""
    result = Plan(desired=list(desired))
    wanted = {key(obj) for obj in desired}
    for obj in desired:
        if workloads_blocked and obj["kind"] in WORKLOAD_KINDS:
            result.held_back.append(key(obj))
            continue
        current = observed(key(obj))
        if needs_apply(obj, current):
            result.apply.append(obj)
            handover = replicas_handover(obj, current)
            if handover is not None:
                result.handover.append(handover)
    for obj in prunable:
        if key(obj) not in wanted:
            result.delete.append(key(obj))
    for k in deletions:
        if k not in wanted and k not in result.delete and observed(k) is not None:
            result.delete.append(k)
    return result


def parse_instance(body: Obj, spec: ApeRAGSpec) -> Instance:
    meta = body["metadata"]
    return Instance(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        spec=spec,
        generation=int(meta.get("generation", 1)),
    )


def is_paused(body: Obj) -> bool:
    annotations: dict[str, Any] = (body.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).lower() == "true"


def validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"spec.{loc}: {e['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Decision:
    """Everything one reconcile decided before acting."""

    instance: Instance | None
    paused: bool
    #: Problems known before acting (invalid spec, missing Secrets, contributors' gates).
    problems: tuple[Problem, ...]
    plan: Plan
    contributions: Mapping[str, Contribution]

    @property
    def autoscaled(self) -> frozenset[str]:
        """Components whose replicas belong to an autoscaler (their live replicas are the desired ones)."""
        return frozenset(c for contribution in self.contributions.values() for c in contribution.autoscaled)

    @property
    def requeue_after(self) -> float | None:
        delays = [c.requeue_after for c in self.contributions.values() if c.requeue_after is not None]
        return min(delays) if delays else None


def decide(
    body: Obj,
    observed: Observed,
    contributors: Sequence[Contributor],
    observed_get: Callable[[ObjKey], Obj | None],
    prunable: Callable[[Instance], Sequence[Obj]],
    now: datetime,
) -> Decision:
    """The whole decision for one ApeRAG: parse, check, ask the contributors, assemble, plan."""
    paused = is_paused(body)
    try:
        spec = parse_spec(body.get("spec") or {})
    except ValidationError as err:
        return Decision(None, paused, (Problem("InvalidSpec", validation_message(err)),), Plan(), {})
    inst = parse_instance(body, spec)
    prerequisites = tuple(missing_secrets(spec, observed.secret_keys))
    context = Context(
        instance=inst,
        annotations=(body.get("metadata") or {}).get("annotations") or {},
        status=body.get("status") or {},
        paused=paused,
        observed=observed,
        now=now,
        prerequisites=prerequisites,
    )
    contributions: dict[str, Contribution] = {}
    for contributor in contributors:  # already ordered: each after those it requires
        upstream = {name: contributions[name] for name in contributor.requires}
        contributions[contributor.name] = contributor.contribute(context, upstream)
    env = [var for c in contributions.values() for var in c.env]
    releases = {c.workload_release for c in contributions.values() if c.workload_release is not None}
    if len(releases) > 1:
        raise ValueError(f"contributors disagree on the release the Deployments run: {sorted(releases)}")
    workloads = dataclasses.replace(inst, release=releases.pop()) if releases else inst
    desired = [obj for c in contributions.values() for obj in c.children]
    autoscaled = frozenset(comp for c in contributions.values() for comp in c.autoscaled)
    desired += desired_children(workloads, env, autoscaled)
    problems = prerequisites + tuple(p for c in contributions.values() for p in c.problems)
    held = any(c.hold_workloads for c in contributions.values())
    result = plan(
        desired,
        observed_get,
        prunable(inst),
        workloads_blocked=held or any(p.blocks_workloads for p in problems),
        deletions=[k for c in contributions.values() for k in c.deletions],
    )
    return Decision(inst, paused, problems, result, contributions)
