"""The engine: informers fill the cache, changes feed the work queue, one short reconcile per key.

A reconcile reads the cache, decides (``reconcile.decide``, pure, with the contributors) and acts
(applies, deletes, writes the status, posts Events). All I/O goes through ``kubeapi``.

* Start-up barrier: no reconcile runs before every watched kind has been listed (and, for a namespace,
  its Secrets), so a restarted operator sees every existing child and writes nothing that did not
  change.
* A change to a child wakes its owner (by owner reference, else by the instance label), after
  ``child_delay`` seconds so that the burst of one rollout costs one reconcile.
* A reconcile that fails is retried with exponential backoff; one that asks for it (a Job to poll, a
  deadline) runs again after ``requeue_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from aperag_operator.builders.common import REPLICAS_HANDOVER_MANAGER, Instance, Obj
from aperag_operator.builders.deployment import enabled_components
from aperag_operator.builders.deployment import name as deployment_name
from aperag_operator.cache import (
    ALL,
    INSTANCE_LABEL,
    Cache,
    Change,
    KindState,
    ParentKey,
    is_ours,
    parent_of,
    strip_secret,
)
from aperag_operator.contributors.base import Contributor, EventSpec, ordered
from aperag_operator.diff import list_repair_patch
from aperag_operator.field_paths import describe
from aperag_operator.health import Health
from aperag_operator.informer import Informer
from aperag_operator.kinds import (
    APERAG,
    CORE_CHILD_KINDS,
    DEPLOYMENT,
    KNOWN_KINDS,
    SECRET,
    WORKLOAD_KINDS,
    Kind,
    ObjKey,
    key,
    kind_of,
)
from aperag_operator.kubeapi import ApiFailure, Failure, KubeApi
from aperag_operator.metrics import OperatorMetrics
from aperag_operator.reconcile import Decision, decide, secret_references
from aperag_operator.status import ComponentState, Problem, component_state, compute_status, transitions
from aperag_operator.upgrade.facts import facts
from aperag_operator.workqueue import WorkQueue

log = logging.getLogger("aperag_operator")


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_changed(previous: Obj | None, current: Obj) -> bool:
    """Whether an ApeRAG event asks for a reconcile: anything but the status (which the operator wrote
    itself) and the bookkeeping metadata."""
    if previous is None:
        return True
    a, b = previous.get("metadata") or {}, current.get("metadata") or {}
    return any(a.get(f) != b.get(f) for f in ("uid", "generation", "labels", "annotations", "deletionTimestamp"))


class CacheView:
    """The contributors' read-only view of the cache for one ApeRAG (``contributors.base.Observed``)."""

    def __init__(self, cache: Cache, namespace: str, name: str, uid: str) -> None:
        self.cache = cache
        self.namespace = namespace
        self.name = name
        self.uid = uid

    def get(self, kind: Kind, name: str) -> Obj | None:
        return self.cache.get((kind.type_path, self.namespace, name))

    def owned(self, kind: Kind) -> list[Obj]:
        return self.cache.owned(self.uid, [kind.type_path])

    def labeled(self, kind: Kind) -> list[Obj]:
        return [
            obj
            for obj in self.cache.objects(kind.type_path, self.namespace)
            if ((obj.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL) == self.name
            and parent_of(obj) == (self.namespace, self.name)
        ]

    def state(self, kind: Kind) -> KindState:
        return self.cache.state(kind.type_path, self.namespace)

    def secret_keys(self, name: str) -> frozenset[str] | None:
        secret = self.cache.get((SECRET.type_path, self.namespace, name))
        if secret is None:
            return None
        return frozenset(secret.get("data") or {})


class Controller:
    def __init__(
        self,
        api: KubeApi,
        contributors: Sequence[Contributor],
        *,
        namespaces: Sequence[str] = (),
        workers: int = 8,
        child_delay: float = 0.2,
        resync_interval: float = 60.0,
        relist_interval: float = 600.0,
        watch_timeout: int = 60,
        health: Health | None = None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api = api
        self.contributors = ordered(list(contributors))
        #: Watched namespaces; empty means the whole cluster.
        self.namespaces = tuple(namespaces)
        self.cache = Cache()
        self.queue: WorkQueue[ParentKey] = WorkQueue()
        self.health = health or Health()
        self.workers = workers
        self.child_delay = child_delay
        self.resync_interval = resync_interval
        self.relist_interval = relist_interval
        self.watch_timeout = watch_timeout
        # Built once, from the final contributors: what is watched, and what is pruned.
        self.pruned_kinds: tuple[Kind, ...] = (
            *CORE_CHILD_KINDS,
            *(k for c in self.contributors for k in c.owned_kinds),
        )
        self.watched_kinds: tuple[Kind, ...] = tuple(
            dict.fromkeys((*self.pruned_kinds, *(k for c in self.contributors for k in c.watched_kinds)))
        )
        self.informers: dict[tuple[str, str], Informer] = {}
        #: Secret (namespace, name) -> ApeRAGs referencing it, so a Secret appearing wakes them up.
        self.secret_refs: dict[tuple[str, str], set[ParentKey]] = {}
        self._refs_by_parent: dict[ParentKey, set[tuple[str, str]]] = {}
        self._delayed: set[ParentKey] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()
        self._state_changed = asyncio.Event()
        self.reconciles = 0
        self.instance = os.environ.get("HOSTNAME") or socket.gethostname()
        self._busy = 0
        #: ApeRAG -> Unix time of its last reconcile that ended without an error (for the metrics).
        self._last_success: dict[ParentKey, float] = {}
        self.metrics = metrics or OperatorMetrics()
        self.metrics.bind(self)

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.namespaces or (ALL,)

    def start(self) -> None:
        """Starts the informers, then (once they have all listed) the workers and the resync."""
        for scope in self.scopes:
            self._start_informer(APERAG, scope)
            for kind in self.watched_kinds:
                self._start_informer(kind, scope, keep=is_ours)
        self._tasks.append(asyncio.create_task(self._run(), name="aperag-engine"))

    async def _run(self) -> None:
        await self._wait_synced()
        log.info(
            "every watched kind is listed; reconciling",
            extra={"kinds": [str(k) for k in self.watched_kinds], "scopes": list(self.scopes)},
        )
        self.health.synced = True
        self._started.set()
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"aperag-reconcile-{i}"))
        self.resync()
        while True:
            await asyncio.sleep(self.resync_interval)
            self.resync()

    def _all_listed(self) -> bool:
        return all(inf.state.synced for inf in self.informers.values() if inf.kind is not SECRET)

    async def _wait_synced(self) -> None:
        while not self._all_listed():
            self._state_changed.clear()
            await self._state_changed.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for informer in list(self.informers.values()):
            await informer.stop()
        self.informers.clear()
        self.queue.close()

    def _start_informer(self, kind: Kind, scope: str, **options: object) -> None:
        informer = Informer(
            self.api,
            self.cache,
            kind,
            scope,
            on_changes=self._on_changes,
            on_state=self._on_state,
            server_timeout=self.watch_timeout,
            relist_interval=self.relist_interval,
            **options,  # type: ignore[arg-type]
        )
        self.informers[(kind.type_path, scope)] = informer
        informer.start()

    # --- events in -----------------------------------------------------------------------------------

    def parents(self, namespace: str | None = None) -> list[ParentKey]:
        return [
            (o["metadata"]["namespace"], o["metadata"]["name"]) for o in self.cache.objects(APERAG.type_path, namespace)
        ]

    def _on_changes(self, kind: Kind, changes: list[Change]) -> None:
        if kind is APERAG:
            for change in changes:
                self._on_parent(change)
            return
        if kind is SECRET:
            for change in changes:
                meta = change.obj["metadata"]
                for parent in self.secret_refs.get((meta["namespace"], meta["name"]), set()):
                    self.enqueue_soon(parent)
            return
        for change in changes:
            owner = parent_of(change.obj)
            if owner is not None and self.cache.get((APERAG.type_path, *owner)) is not None:
                self.enqueue_soon(owner)

    def _on_parent(self, change: Change) -> None:
        meta = change.obj["metadata"]
        pk: ParentKey = (meta["namespace"], meta["name"])
        if change.deleted:
            self.queue.discard(pk)
            self._last_success.pop(pk, None)
            self._forget_secret_refs(pk)
            self._maybe_stop_secret_informer(pk[0])
            return
        self._ensure_secret_informer(pk[0])
        if _spec_changed(change.previous, change.obj):
            self.queue.add(pk)

    def _on_state(self, kind: Kind, scope: str, state: KindState) -> None:
        """A kind became listed, installed or uninstalled: every ApeRAG that could see it may decide
        differently now (KubeBlocks installed after the operator started, a namespace's Secrets listed)."""
        self._state_changed.set()
        if not self._started.is_set():
            return
        for pk in self.parents(None if scope == ALL else scope):
            self.queue.add(pk)

    def _ensure_secret_informer(self, namespace: str) -> None:
        """Secrets are watched only in namespaces that hold an ApeRAG, and kept without their values."""
        if (SECRET.type_path, namespace) not in self.informers:
            self._start_informer(SECRET, namespace, transform=strip_secret)

    def _maybe_stop_secret_informer(self, namespace: str) -> None:
        if self.parents(namespace):
            return
        informer = self.informers.pop((SECRET.type_path, namespace), None)
        if informer is not None:
            self._tasks.append(asyncio.create_task(informer.stop()))
            for k in [key(s) for s in self.cache.objects(SECRET.type_path, namespace)]:
                self.cache.remove(k)

    def enqueue_soon(self, pk: ParentKey) -> None:
        """Enqueue after ``child_delay`` seconds: the burst of child events of one rollout (or of our own
        applies) then costs one reconcile and one status write instead of one each."""
        if self.child_delay <= 0:
            self.queue.add(pk)
            return
        if pk in self._delayed:
            return
        self._delayed.add(pk)
        asyncio.get_running_loop().call_later(self.child_delay, self._fire, pk)

    def _fire(self, pk: ParentKey) -> None:
        self._delayed.discard(pk)
        self.queue.add(pk)

    def resync(self) -> None:
        """Enqueue every known ApeRAG (the periodic safety net); a failing one keeps its backoff."""
        for pk in self.parents():
            self.queue.add_unless_backing_off(pk)

    # --- the workers ---------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            pk = await self.queue.get()
            self._busy += 1
            started = time.perf_counter()
            result = "error"
            try:
                requeue_after = await self.reconcile(pk)
            except asyncio.CancelledError:
                result = ""
                raise
            except ApiFailure as failure:
                delay = self.queue.add_rate_limited(pk)
                log.warning("reconcile of %s/%s failed: %s; retrying in %.1fs", *pk, failure, delay)
            except Exception:
                delay = self.queue.add_rate_limited(pk)
                log.exception("reconcile of %s/%s failed; retrying in %.1fs", *pk, delay)
            else:
                result = "success"
                self.queue.forget(pk)
                if self.cache.get((APERAG.type_path, *pk)) is not None:
                    self._last_success[pk] = time.time()
                if requeue_after is not None:
                    self.queue.add_after(pk, requeue_after)
            finally:
                self._busy -= 1
                self.queue.done(pk)
                if result:
                    self.metrics.reconciled(result, time.perf_counter() - started)

    # --- what the metrics read at scrape time (metrics.EngineView) -----------------------------------

    def queue_depth(self) -> int:
        return self.queue.depth()

    def queue_oldest_age(self) -> float:
        return self.queue.oldest_age()

    def busy_workers(self) -> int:
        return self._busy

    def resources(self) -> list[Obj]:
        return self.cache.objects(APERAG.type_path)

    def last_success(self) -> Mapping[ParentKey, float]:
        return self._last_success

    # --- the reconcile -------------------------------------------------------------------------------

    async def reconcile(self, pk: ParentKey) -> float | None:
        """One reconcile; returns when to run again (None: when something changes)."""
        body = self.cache.get((APERAG.type_path, *pk))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # children go through garbage collection
        namespace = pk[0]
        if not self.cache.synced([SECRET.type_path, *(k.type_path for k in self.watched_kinds)], namespace):
            return None  # the namespace's Secrets are still being listed; their listing enqueues it again
        self.reconciles += 1
        meta = body["metadata"]
        view = CacheView(self.cache, namespace, meta["name"], meta["uid"])
        decision = decide(body, view, self.contributors, self.cache.get, self._prunable, _now())
        if decision.instance is not None:
            self._remember_secret_refs(pk, decision.instance)
        problems = list(decision.problems)
        created: list[str] = []
        retry = False
        todo = decision.plan
        if not decision.paused:
            # Replicas an autoscaler takes over are handed over before the Deployment lets go of them; a
            # Deployment whose handover failed is not applied (it would fall to 1 replica).
            not_handed_over = set()
            for handover, failure in await asyncio.gather(*(self._hand_over(o) for o in todo.handover)):
                if failure is not None:
                    retry = retry or failure.retryable
                    not_handed_over.add(key(handover))
                    problems.append(Problem("ApplyFailed", f"replicas of {handover['kind']} "
                                            f"{handover['metadata']['name']}: {failure}", False))  # fmt: skip
            # Two waves, each concurrent: everything the pods need first, then the workloads.
            waves = (
                [o for o in todo.apply if o["kind"] not in WORKLOAD_KINDS],
                [o for o in todo.apply if o["kind"] in WORKLOAD_KINDS and key(o) not in not_handed_over],
            )
            for wave in waves:
                for obj, existed, failure in await asyncio.gather(*(self._apply(o) for o in wave)):
                    if failure is not None:
                        self.metrics.apply_failed(obj["kind"], failure.kind.value)
                        retry = retry or failure.retryable
                        problems.append(Problem("ApplyFailed", describe(obj, failure.causes, failure.message), False))
                    elif not existed:
                        created.append(f"{obj['kind']} {obj['metadata']['name']}")
            for k, failure in zip(
                todo.delete, await asyncio.gather(*(self._delete(k) for k in todo.delete)), strict=True
            ):
                if failure is not None:
                    retry = retry or failure.retryable
                    problems.append(Problem("DeleteFailed", f"{k[0].rpartition('/')[2]} {k[2]}: {failure}", False))
        # The contributors' story first (a migration succeeded), then what it led to (Deployments created).
        events: list[EventSpec] = [e for c in decision.contributions.values() for e in c.events]
        if created:
            events.append(("Normal", "Created", "created " + ", ".join(created)))
        await self._write_status(body, decision, problems, events)
        done = 0 if decision.paused else len(todo.apply) + len(todo.delete)
        log.log(
            logging.INFO if done or problems else logging.DEBUG,
            "reconciled %s/%s: applied=%d deleted=%d held_back=%d problems=%d paused=%s",
            namespace,
            meta["name"],
            0 if decision.paused else len(todo.apply),
            0 if decision.paused else len(todo.delete),
            len(todo.held_back),
            len(problems),
            decision.paused,
        )
        if retry:
            raise ApiFailure(Failure.SERVER_ERROR, 0, "an apply failed on the server side")
        return decision.requeue_after

    def _prunable(self, inst: Instance) -> list[Obj]:
        return self.cache.owned(inst.uid, [k.type_path for k in self.pruned_kinds])

    def _components(self, inst: Instance, autoscaled: frozenset[str]) -> dict[str, ComponentState]:
        states: dict[str, ComponentState] = {}
        for component in enabled_components(inst):
            dep = self.cache.get((DEPLOYMENT.type_path, inst.namespace, deployment_name(inst, component)))
            spec_replicas = 1 if component == "beat" else getattr(inst.spec.components, component).replicas
            # An autoscaled component's desired replicas are the Deployment's own (the autoscaler's).
            states[component] = component_state(None if component in autoscaled else spec_replicas, dep)
        return states

    async def _write_status(
        self, body: Obj, decision: Decision, problems: list[Problem], events: list[EventSpec]
    ) -> None:
        old = body.get("status") or {}
        meta = body["metadata"]
        inst = decision.instance
        extra: Obj = {}
        conditions: list[Obj] = []
        for contribution in decision.contributions.values():
            extra.update(contribution.status)
            conditions.extend(contribution.conditions)
        if conditions:
            extra["conditions"] = conditions
        new = compute_status(
            generation=int(meta.get("generation", 1)),
            version=inst.spec.version if inst else str((body.get("spec") or {}).get("version", "")),
            previous=old,
            components=self._components(inst, decision.autoscaled) if inst else {},
            problems=problems,
            paused=decision.paused,
            now=_stamp(_now()),
            extra=extra,
            phase=next((c.phase for c in decision.contributions.values() if c.phase), None),
            kept_components=None if inst else old.get("components"),
        )
        for etype, reason, message in events:
            await self._event(body, etype, reason, message)
        if new == old:
            return
        patch = {
            "apiVersion": APERAG.api_version,
            "kind": APERAG.kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": new,
        }
        updated = await self.api.apply_status(patch)
        if updated is None:
            return  # deleted meanwhile
        self.cache.put(updated)
        # Counted once the status that records them is written (a failed write retries the same step).
        self.metrics.record(facts(old, new, {reason for _, reason, _ in events}, _now()))
        for etype, reason, message in transitions(old, new):
            await self._event(body, etype, reason, message)

    # --- acting --------------------------------------------------------------------------------------

    async def _apply(self, obj: Obj) -> tuple[Obj, bool, ApiFailure | None]:
        """Applies one child and puts the result in the cache: (desired, existed before, failure)."""
        observed = self.cache.get(key(obj))
        try:
            applied = await self.api.apply(obj)
        except ApiFailure as failure:
            if failure.kind is not Failure.INVALID or observed is None:
                return obj, observed is not None, failure
            repair = list_repair_patch(obj, observed)
            if repair is None:
                return obj, True, failure
            # Drift in a list merged by a key other than the name (a Service port edited by hand):
            # put the lists back whole, then apply again.
            log.info(
                "%s %s/%s: replacing drifted lists %s",
                obj["kind"],
                obj["metadata"]["namespace"],
                obj["metadata"]["name"],
                sorted(k for k in repair if k != "metadata"),
            )
            try:
                self.cache.put(
                    await self.api.merge_patch(
                        kind_of(obj), obj["metadata"]["namespace"], obj["metadata"]["name"], repair
                    )
                )
                applied = await self.api.apply(obj)
            except ApiFailure as second:
                return obj, True, second
        self.cache.put(applied)
        return obj, observed is not None, None

    async def _hand_over(self, obj: Obj) -> tuple[Obj, ApiFailure | None]:
        """Applies a Deployment's current replicas under the handover manager (not forced). A conflict
        means another manager (the autoscaler) already owns the field: nothing to hand over."""
        meta = obj["metadata"]
        try:
            self.cache.put(await self.api.apply(obj, field_manager=REPLICAS_HANDOVER_MANAGER, force=False))
        except ApiFailure as failure:
            if failure.kind is not Failure.CONFLICT:
                return obj, failure
        log.info(
            "%s %s/%s: spec.replicas (%s) handed over to the autoscaler",
            obj["kind"], meta["namespace"], meta["name"], obj["spec"]["replicas"],
        )  # fmt: skip
        return obj, None

    async def _delete(self, k: ObjKey) -> ApiFailure | None:
        type_path, namespace, name = k
        kind = KNOWN_KINDS[type_path]
        log.info("deleting %s %s/%s (no longer desired)", kind.kind, namespace, name)
        try:
            await self.api.delete(kind, namespace, name)
        except ApiFailure as failure:
            return failure
        self.cache.remove(k)
        return None

    async def _event(self, body: Obj, etype: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        moment = datetime.now(UTC)
        now = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": APERAG.api_version,
                "kind": APERAG.kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "aperag-operator"},
            "reportingComponent": "aperag-operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            # Microseconds: the order of a story told within one second (MigrationSucceeded, RollingOut).
            "eventTime": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": "Reconcile",
            "count": 1,
        }
        try:
            await self.api.create(event)
        except ApiFailure as failure:  # events are best effort
            log.warning("could not post event %s: %s", reason, failure)
        log.info("%s/%s: %s %s: %s", meta["namespace"], meta["name"], etype, reason, message)

    # --- Secrets that wake a resource up -------------------------------------------------------------

    def _remember_secret_refs(self, pk: ParentKey, inst: Instance) -> None:
        names = {ref.name for ref in secret_references(inst.spec)}
        for contributor in self.contributors:
            names |= contributor.secret_names(inst)
        wanted = {(inst.namespace, n) for n in names}
        if wanted == self._refs_by_parent.get(pk):
            return
        self._forget_secret_refs(pk)
        for ref in wanted:
            self.secret_refs.setdefault(ref, set()).add(pk)
        self._refs_by_parent[pk] = wanted

    def _forget_secret_refs(self, pk: ParentKey) -> None:
        for ref in self._refs_by_parent.pop(pk, set()):
            parents = self.secret_refs.get(ref)
            if parents is not None:
                parents.discard(pk)
                if not parents:
                    del self.secret_refs[ref]


def contact_details(ctl: Controller) -> dict[str, object]:
    """What the health endpoints add to their report."""
    return {"queue": ctl.queue.depth(), "reconciles": ctl.reconciles}
