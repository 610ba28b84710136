"""The reconcile engine: an in-memory cache of the children (fed by kopf's watch streams), a coalescing
work queue keyed by ApeRAG, and one level-based reconcile per key.

Why a queue of our own: a change to any child (drift, a Deployment's rollout progress) must trigger a
reconcile of its *parent*, and kopf only calls handlers for the object whose event arrived. Child
events therefore enqueue the owner's key; a key that is already queued is not queued twice, and a key
that changes while it is being reconciled is reconciled once more afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType
from pydantic import ValidationError

from aperag_operator import kube
from aperag_operator.builders.children import CHILD_KINDS, WORKLOAD_KINDS, key
from aperag_operator.builders.common import FIELD_MANAGER, Instance, Obj
from aperag_operator.builders.deployment import enabled_components
from aperag_operator.builders.deployment import name as deployment_name
from aperag_operator.reconcile import (
    Hooks,
    ObjKey,
    all_desired,
    is_paused,
    missing_secrets,
    parse_instance,
    plan,
    secret_references,
)
from aperag_operator.spec.model import API_GROUP, API_VERSION, KIND, parse_spec
from aperag_operator.status import ComponentState, Problem, component_state, compute_status, transitions

log = logging.getLogger("aperag_operator")

ParentKey = tuple[str, str]  # (namespace, name)
APERAG_API_VERSION = f"{API_GROUP}/{API_VERSION}"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def _rv(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_of(obj: Obj) -> ParentKey | None:
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return (meta.get("namespace", ""), ref["name"])
    return None


class Cache:
    """Latest known state of every watched object, by (apiVersion/kind, namespace, name).

    Fed by watch events and by the responses of our own writes; an older resourceVersion never replaces
    a newer one (resourceVersions are etcd revisions here; see docs/design.md)."""

    def __init__(self) -> None:
        self.objects: dict[ObjKey, Obj] = {}
        self.by_owner: dict[str, set[ObjKey]] = {}

    def put(self, obj: Obj) -> None:
        k = key(obj)
        old = self.objects.get(k)
        if old is not None and _rv(old) > _rv(obj) > 0:
            return
        self._unindex(k)
        self.objects[k] = obj
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("uid"):
                self.by_owner.setdefault(ref["uid"], set()).add(k)

    def remove(self, k: ObjKey) -> None:
        self._unindex(k)
        self.objects.pop(k, None)

    def _unindex(self, k: ObjKey) -> None:
        old = self.objects.get(k)
        for ref in ((old or {}).get("metadata") or {}).get("ownerReferences") or []:
            self.by_owner.get(ref.get("uid", ""), set()).discard(k)

    def get(self, k: ObjKey) -> Obj | None:
        return self.objects.get(k)

    def owned(self, uid: str, kinds: Iterable[str]) -> list[Obj]:
        wanted = set(kinds)
        return [self.objects[k] for k in sorted(self.by_owner.get(uid, set())) if k in self.objects and k[0] in wanted]


class Controller:
    """Owns the lightkube client, the cache and the work queue."""

    def __init__(
        self, client: AsyncClient, *, hooks: Hooks | None = None, workers: int = 8, child_delay: float = 0.2
    ) -> None:
        self.client = client
        self.hooks = hooks or Hooks()
        self.cache = Cache()
        self.parents: dict[ParentKey, Obj] = {}
        #: Secret (namespace, name) -> parents referencing it, so a Secret appearing wakes them up.
        self.secret_refs: dict[tuple[str, str], set[ParentKey]] = {}
        self.queue: asyncio.Queue[ParentKey] = asyncio.Queue()
        self._queued: set[ParentKey] = set()
        self._running: set[ParentKey] = set()
        self._dirty: set[ParentKey] = set()
        self._delayed: set[ParentKey] = set()
        self.child_delay = child_delay
        self._workers: list[asyncio.Task[None]] = []
        self._n_workers = workers
        self.kinds = tuple(f"{av}/{k}" for av, k in (*CHILD_KINDS, *self.hooks.extra_kinds))
        self.reconciles = 0
        self.instance = os.environ.get("HOSTNAME") or socket.gethostname()

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self._n_workers):
            self._workers.append(asyncio.create_task(self._worker(), name=f"aperag-reconcile-{i}"))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    # --- events in -----------------------------------------------------------------------------------

    def on_parent_event(self, event_type: str | None, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        pk = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.parents.pop(pk, None)
            self._forget_secret_refs(pk)
            self.hooks.forget(*pk)
            return
        old = self.parents.get(pk)
        if old is not None and _rv(old) > _rv(obj) > 0:
            return
        self.parents[pk] = obj
        self.enqueue(pk)

    def on_child_event(self, event_type: str | None, obj: Obj) -> None:
        if event_type == "DELETED":
            self.cache.remove(key(obj))
        else:
            self.cache.put(obj)
        parent = owner_of(obj)
        if parent is not None and parent in self.parents:
            self.enqueue_soon(parent)

    def on_instance_labeled_event(self, event_type: str | None, obj: Obj) -> None:
        """An object that belongs to an ApeRAG by its ``app.kubernetes.io/instance`` label rather than an
        owner reference (e.g. a KubeBlocks Cluster kept under the Retain policy): cache it, wake the owner."""
        if event_type == "DELETED":
            self.cache.remove(key(obj))
        else:
            self.cache.put(obj)
        meta = obj.get("metadata") or {}
        instance = (meta.get("labels") or {}).get(INSTANCE_LABEL)
        parent = (meta.get("namespace", ""), instance) if instance else None
        if parent is not None and parent in self.parents:
            self.enqueue_soon(parent)

    def on_secret_event(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        for parent in self.secret_refs.get((meta.get("namespace", ""), meta.get("name", "")), set()):
            self.enqueue_soon(parent)

    def enqueue_soon(self, pk: ParentKey) -> None:
        """Enqueue after ``child_delay`` seconds: the burst of child events of one rollout (or of our own
        applies) then costs one reconcile and one status write instead of one each."""
        if self.child_delay <= 0:
            self.enqueue(pk)
            return
        if pk in self._delayed:
            return
        self._delayed.add(pk)
        asyncio.get_running_loop().call_later(self.child_delay, self._fire, pk)

    def _fire(self, pk: ParentKey) -> None:
        self._delayed.discard(pk)
        self.enqueue(pk)

    def resync(self) -> None:
        """Enqueue every known resource (the periodic safety net)."""
        for pk in list(self.parents):
            self.enqueue(pk)

    def enqueue(self, pk: ParentKey) -> None:
        if pk in self._running:
            self._dirty.add(pk)
            return
        if pk in self._queued:
            return
        self._queued.add(pk)
        self.queue.put_nowait(pk)

    async def _worker(self) -> None:
        while True:
            pk = await self.queue.get()
            self._queued.discard(pk)
            self._running.add(pk)
            try:
                await self.reconcile(pk)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile of %s/%s failed", *pk)
            finally:
                self._running.discard(pk)
                if pk in self._dirty:
                    self._dirty.discard(pk)
                    self.enqueue(pk)

    def idle(self) -> bool:
        return not self._queued and not self._running

    # --- the reconcile -------------------------------------------------------------------------------

    async def reconcile(self, pk: ParentKey) -> None:
        body = self.parents.get(pk)
        if body is None:
            return
        self.reconciles += 1
        namespace, _name = pk
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # children go through garbage collection
        generation = int(meta.get("generation", 1))
        paused = is_paused(body)
        problems: list[Problem] = []
        created: list[str] = []
        try:
            spec = parse_spec(body.get("spec") or {})
        except ValidationError as err:
            problems.append(Problem("InvalidSpec", _validation_message(err)))
            await self._write_status(body, generation, None, {}, problems, paused, created)
            return
        inst = parse_instance(body, spec)
        self._remember_secret_refs(pk, inst)
        problems += await missing_secrets(namespace, spec, self._read_secret)
        if self.hooks.gates is not None:
            problems += await self.hooks.gates(inst, self.cache.get)
        blocked = any(p.blocks_workloads for p in problems)
        desired = all_desired(inst, self.hooks)
        owned = self.cache.owned(inst.uid, self.kinds)
        todo = plan(desired, self.cache.get, owned, workloads_blocked=blocked)
        if not paused:
            # Two waves, each concurrent: everything the pods need (ServiceAccount, ConfigMap, PVC,
            # Services, extra children such as databases) first, then the workloads.
            first = [o for o in todo.apply if o["kind"] not in WORKLOAD_KINDS]
            second = [o for o in todo.apply if o["kind"] in WORKLOAD_KINDS]
            for wave in (first, second):
                outcomes = await asyncio.gather(*(self._apply_tracked(o) for o in wave))
                for obj, existed, error in outcomes:
                    child = f"{obj['kind']} {obj['metadata']['name']}"
                    if error is not None:
                        problems.append(Problem("ApplyFailed", f"{child}: {error}", False))
                    elif not existed:
                        created.append(child)
            await asyncio.gather(*(self._delete(k) for k in todo.delete))
        await self._write_status(body, generation, inst, self._components(inst), problems, paused, created)
        done = len(todo.apply) + len(todo.delete) if not paused else 0
        log.log(
            logging.INFO if done else logging.DEBUG,
            "reconciled %s/%s: applied=%d deleted=%d held_back=%d problems=%d paused=%s",
            namespace,
            inst.name,
            0 if paused else len(todo.apply),
            0 if paused else len(todo.delete),
            len(todo.held_back),
            len(problems),
            paused,
        )

    def _components(self, inst: Instance) -> dict[str, ComponentState]:
        states: dict[str, ComponentState] = {}
        for component in enabled_components(inst):
            dep = self.cache.get(("apps/v1/Deployment", inst.namespace, deployment_name(inst, component)))
            spec_replicas = 1 if component == "beat" else getattr(inst.spec.components, component).replicas
            states[component] = component_state(spec_replicas, dep)
        return states

    async def _write_status(
        self,
        body: Obj,
        generation: int,
        inst: Instance | None,
        components: dict[str, ComponentState],
        problems: list[Problem],
        paused: bool,
        created: list[str],
    ) -> None:
        old = body.get("status") or {}
        version = inst.spec.version if inst else str((body.get("spec") or {}).get("version", ""))
        extra = self.hooks.extra_status(inst, self.cache.get) if (inst and self.hooks.extra_status) else None
        new = compute_status(
            generation=generation,
            version=version,
            previous=old,
            components=components,
            problems=problems,
            paused=paused,
            now=_now(),
            extra=extra,
        )
        if created:
            await self._event(body, "Normal", "Created", "created " + ", ".join(created))
        if new == old:
            return
        meta = body["metadata"]
        patch = {
            "apiVersion": APERAG_API_VERSION,
            "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": new,
        }
        try:
            result = await self.client.patch(
                kube.aperag_class().Status,
                meta["name"],
                patch,
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except ApiError as err:
            if err.status.code == 404:
                return
            raise
        updated = kube.to_dict(result)
        pk = (meta["namespace"], meta["name"])
        current = self.parents.get(pk)
        if current is not None and _rv(updated) >= _rv(current):
            self.parents[pk] = updated
        for etype, reason, message in transitions(old, new):
            await self._event(body, etype, reason, message)

    # --- I/O -----------------------------------------------------------------------------------------

    async def _apply_tracked(self, obj: Obj) -> tuple[Obj, bool, str | None]:
        """Apply one child and put the result in the cache: (desired, existed before, error)."""
        existed = self.cache.get(key(obj)) is not None
        try:
            applied = await self._apply(obj)
        except ApiError as err:
            return obj, existed, str(err.status.message)
        self.cache.put(applied)
        return obj, existed, None

    async def _apply(self, obj: Obj) -> Obj:
        cls = kube.resource_class(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        log.debug("applying %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
        result = await self.client.patch(
            cls,
            meta["name"],
            copy.deepcopy(obj),
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )
        return kube.to_dict(result)

    async def _delete(self, k: ObjKey) -> None:
        type_path, namespace, name = k
        api_version, _, kind = type_path.rpartition("/")
        cls = kube.resource_class(api_version, kind)
        log.info("deleting %s %s/%s (no longer desired)", kind, namespace, name)
        try:
            await self.client.delete(cls, name, namespace=namespace)
        except ApiError as err:
            if err.status.code != 404:
                raise
        self.cache.remove(k)

    async def _read_secret(self, namespace: str, name: str) -> Obj | None:
        try:
            result = await self.client.get(kube.resource_class("v1", "Secret"), name, namespace=namespace)
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise
        return kube.to_dict(result)

    async def _event(self, body: Obj, etype: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": APERAG_API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        cls = kube.resource_class("v1", "Event")
        try:
            await self.client.create(cls.from_dict(event))
        except ApiError as err:  # events are best effort
            log.warning("could not post event %s: %s", reason, err.status.message)
        log.info("%s/%s: %s %s: %s", meta["namespace"], meta["name"], etype, reason, message)

    def _remember_secret_refs(self, pk: ParentKey, inst: Instance) -> None:
        self._forget_secret_refs(pk)
        names = {ref.name for ref in secret_references(inst.spec)} | set(self.hooks.secret_names(inst))
        for secret_name in names:
            self.secret_refs.setdefault((inst.namespace, secret_name), set()).add(pk)

    def _forget_secret_refs(self, pk: ParentKey) -> None:
        for parents in self.secret_refs.values():
            parents.discard(pk)


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"spec.{loc}: {e['msg']}")
    return "; ".join(parts)
