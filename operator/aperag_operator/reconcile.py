"""Pure reconcile logic: what to apply, what to delete, what is blocked, and the seams for later issues.

The controller (controller.py) does the I/O; everything here is a plain function of its inputs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aperag_operator.builders.children import WORKLOAD_KINDS, desired_children, key
from aperag_operator.builders.common import Instance, Obj
from aperag_operator.diff import needs_apply
from aperag_operator.spec.model import ApeRAGSpec
from aperag_operator.status import Problem

ObjKey = tuple[str, str, str]


class SecretReader(Protocol):
    async def __call__(self, namespace: str, name: str) -> Obj | None: ...


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


async def missing_secrets(namespace: str, spec: ApeRAGSpec, read: SecretReader) -> list[Problem]:
    """A Degraded problem for each referenced Secret or key that does not exist (names only, no values)."""
    problems: list[Problem] = []
    seen: dict[str, Obj | None] = {}
    for ref in secret_references(spec):
        if ref.name not in seen:
            seen[ref.name] = await read(namespace, ref.name)
        secret = seen[ref.name]
        if secret is None:
            problems.append(
                Problem("SecretNotFound", f"Secret {ref.name} (referenced by {ref.field}) not found")
            )
        elif (
            ref.key is not None
            and ref.key not in (secret.get("data") or {})
            and ref.key not in (secret.get("stringData") or {})
        ):
            problems.append(
                Problem(
                    "SecretKeyNotFound", f"Secret {ref.name} has no key {ref.key} (referenced by {ref.field})"
                )
            )
    return problems


@dataclass
class Hooks:
    """Seams for later issues (databases, upgrades). Every hook has a harmless default.

    * ``database_env(inst)``: env vars (core/v1 EnvVar dicts) with the database connection settings,
      passed to every app container (deployment.app_env).
    * ``extra_children(inst)``: more desired objects (e.g. KubeBlocks Clusters), applied like the others,
      before the app workloads.
    * ``gates(inst, observed)``: problems that hold back the app workloads (e.g. DatabasesReady=False);
      return them with ``blocks_workloads=True``.
    * ``extra_status(inst, observed)``: keys merged into status (e.g. per-database state), plus extra
      conditions under the key ``"conditions"`` appended after the core ones.
    * ``extra_kinds``: (apiVersion, kind) of extra children, so that they are watched and pruned.
    * ``secret_names(inst)``: more Secrets whose events wake the resource up.
    * ``forget(namespace, name)``: the resource was deleted.
    """

    database_env: Callable[[Instance], list[Obj]] = lambda _inst: []
    extra_children: Callable[[Instance], list[Obj]] = lambda _inst: []
    gates: Callable[[Instance, Callable[[ObjKey], Obj | None]], Awaitable[list[Problem]]] | None = None
    extra_status: Callable[[Instance, Callable[[ObjKey], Obj | None]], Obj] | None = None
    extra_kinds: tuple[tuple[str, str], ...] = ()
    #: Names of more Secrets (in the resource's namespace) whose appearance or change should trigger a
    #: reconcile (e.g. the database credentials).
    secret_names: Callable[[Instance], list[str]] = lambda _inst: []
    #: Called with (namespace, name) when the resource is gone, to drop what the hooks remember of it.
    forget: Callable[[str, str], None] = lambda _namespace, _name: None


@dataclass
class Plan:
    """What one reconcile will do to the children."""

    apply: list[Obj] = field(default_factory=list)
    delete: list[ObjKey] = field(default_factory=list)
    held_back: list[ObjKey] = field(default_factory=list)
    desired: list[Obj] = field(default_factory=list)


def all_desired(inst: Instance, hooks: Hooks) -> list[Obj]:
    """Extra children (databases) first, then the core children."""
    return [*hooks.extra_children(inst), *desired_children(inst, hooks.database_env(inst))]


def plan(
    desired: list[Obj],
    observed: Callable[[ObjKey], Obj | None],
    owned: list[Obj],
    *,
    workloads_blocked: bool,
) -> Plan:
    """Compare desired with observed: apply only what differs, delete owned children no longer desired,
    hold back workloads while a gate is closed (without deleting anything that runs)."""
    result = Plan(desired=desired)
    wanted = {key(obj) for obj in desired}
    for obj in desired:
        if workloads_blocked and obj["kind"] in WORKLOAD_KINDS:
            result.held_back.append(key(obj))
            continue
        if needs_apply(obj, observed(key(obj))):
            result.apply.append(obj)
    for obj in owned:
        if key(obj) not in wanted:
            result.delete.append(key(obj))
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
    from aperag_operator.builders.common import PAUSED_ANNOTATION

    annotations: dict[str, Any] = (body.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).lower() == "true"
