"""A stand-in for the KubeBlocks controller, for tests: what KubeBlocks does as the operator sees it.

The test cluster has the KubeBlocks CRDs but no KubeBlocks. This simulator watches the
``apps.kubeblocks.io/v1`` Clusters of one namespace and, like KubeBlocks 1.0:

* moves each Cluster Creating -> Running (Updating -> Running after a spec change), writing
  ``status.phase``, ``status.observedGeneration``, ``status.components.<name>`` and a ``Ready``
  condition through the status subresource (only when something changes);
* creates, owned by the Cluster, the account Secrets ``<cluster>-<component>-account-<user>`` (keys
  ``username`` and ``password``) and the Services ``<cluster>-<component>-<service>`` with the names
  and ports of the KubeBlocks addons.

Its facts about the addons are its own (not imported from the operator), so the tests check the
operator's assumptions instead of repeating them. Tests steer it with annotations on a Cluster:

* ``sim.kubeblocks.io/phase: Abnormal`` (or ``Failed``, ``Creating``, ...): force that phase;
  ``sim.kubeblocks.io/message``: the message that goes with it;
* ``sim.kubeblocks.io/observe: "false"``: stop observing new generations (observedGeneration lags);
* ``sim.kubeblocks.io/hold-secrets: "true"``: do not create the account Secrets (yet);
* ``sim.kubeblocks.io/backup-phase: Failed`` (or ``Aborted``, ``Cancelled``, ``Running``...): how Backup
  OpsRequests on this Cluster end (``Running``: they never end); ``sim.kubeblocks.io/message`` goes with it.

It also plays the ``operations.kubeblocks.io/v1alpha1`` OpsRequests of type Backup: Creating, Running,
then ``Succeed`` (KubeBlocks' spelling) after ``provisioning_seconds``, or the phase the Cluster's (or the
OpsRequest's own) ``sim.kubeblocks.io/backup-phase`` annotation asks for; ``Failed`` at once when the
Cluster does not exist. Like KubeBlocks it writes ``status.phase``, ``progress``, the start and
completion timestamps and a condition through the status subresource.

It polls rather than keeping a watch open: phases change on timers, and a list every
``interval`` seconds in one namespace is cheap and never misses an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

Cluster = create_namespaced_resource("apps.kubeblocks.io", "v1", "Cluster", "clusters")
OpsRequest = create_namespaced_resource("operations.kubeblocks.io", "v1alpha1", "OpsRequest", "opsrequests")

ANNOTATION_PHASE = "sim.kubeblocks.io/phase"
ANNOTATION_MESSAGE = "sim.kubeblocks.io/message"
ANNOTATION_OBSERVE = "sim.kubeblocks.io/observe"
ANNOTATION_HOLD_SECRETS = "sim.kubeblocks.io/hold-secrets"
ANNOTATION_BACKUP_PHASE = "sim.kubeblocks.io/backup-phase"
OPS_FINAL_PHASES = frozenset({"Succeed", "Failed", "Cancelled", "Aborted"})
FIELD_MANAGER = "kubeblocks-simulator"


@dataclass(frozen=True)
class AddonFacts:
    """The Services (name -> ports) and system accounts of one KubeBlocks ComponentDefinition."""

    services: dict[str, dict[str, int]]
    accounts: tuple[str, ...]


# From the KubeBlocks 1.0 addons' ComponentDefinitions.
ADDONS_BY_CLUSTER_DEF: dict[str, AddonFacts] = {
    "postgresql": AddonFacts(
        {"postgresql": {"tcp-postgresql": 5432, "tcp-pgbouncer": 6432}},
        ("postgres", "kbadmin", "kbreplicator"),
    ),
    "redis": AddonFacts({"redis": {"redis": 6379}}, ("default",)),
    "qdrant": AddonFacts({"qdrant": {"tcp-qdrant": 6333, "grpc-qdrant": 6334}}, ()),
}
ADDONS_BY_COMPONENT_DEF: dict[str, AddonFacts] = {
    r"^elasticsearch-8": AddonFacts(
        {"http": {"http": 9200}, "agent": {"agent": 8080}}, ("elastic",)
    ),
}


def addon_for(cluster_spec: dict[str, Any], component: dict[str, Any]) -> AddonFacts | None:
    component_def = component.get("componentDef")
    if component_def:
        for pattern, facts in ADDONS_BY_COMPONENT_DEF.items():
            if re.match(pattern, component_def):
                return facts
        return None
    return ADDONS_BY_CLUSTER_DEF.get(cluster_spec.get("clusterDef", ""))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Seen:
    """What the simulator remembers about one Cluster (by uid)."""

    generation: int
    changed_at: float
    first: bool = True
    created: set[str] = field(default_factory=set)


class KubeBlocksSimulator:
    """``async with KubeBlocksSimulator(client, namespace) as sim:`` runs the simulated controller."""

    def __init__(
        self, client: AsyncClient, namespace: str, *, provisioning_seconds: float = 0.5, interval: float = 0.2
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.provisioning_seconds = provisioning_seconds
        self.interval = interval
        self.errors: list[BaseException] = []
        self._seen: dict[str, _Seen] = {}
        self._ops_seen: dict[str, float] = {}
        self._ops_installed = True
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KubeBlocksSimulator:
        self._task = asyncio.create_task(self._run(), name=f"kubeblocks-simulator-{self.namespace}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep simulating; a test can assert on sim.errors
                self._record(err)
            await asyncio.sleep(self.interval)

    def _record(self, err: BaseException) -> None:
        """A failure a test should see; a 429 (the API server asking to retry later, e.g. while the
        storage of a CRD created a moment ago initialises) is retried at the next pass, as a
        controller's work queue would."""
        if isinstance(err, ApiError) and err.status.code == 429:
            return
        self.errors.append(err)

    async def reconcile_all(self) -> None:
        """One pass over every Cluster and every OpsRequest in the namespace."""
        clusters: dict[str, dict[str, Any]] = {}
        async for cluster in self.client.list(Cluster, namespace=self.namespace):
            obj = cluster.to_dict()  # type: ignore[no-untyped-call]
            clusters[obj["metadata"]["name"]] = obj
            # One broken Cluster must not stall the others, as in a real controller's work queue.
            try:
                await self.reconcile(obj)
            except ApiError as err:
                self._record(err)
        if not self._ops_installed:
            return
        try:
            ops_requests = [ops.to_dict() async for ops in self.client.list(OpsRequest, namespace=self.namespace)]  # type: ignore[no-untyped-call]
        except ApiError as err:
            if err.status.code != 404:
                raise
            self._ops_installed = False  # the OpsRequest CRD is not installed in this cluster
            return
        for ops in ops_requests:
            try:
                await self.reconcile_ops(ops, clusters.get((ops.get("spec") or {}).get("clusterName", "")))
            except ApiError as err:
                self._record(err)

    async def reconcile_ops(self, ops: dict[str, Any], cluster: dict[str, Any] | None) -> None:
        """Moves a Backup OpsRequest through Creating and Running to its final phase."""
        metadata = ops["metadata"]
        status = ops.get("status") or {}
        if metadata.get("deletionTimestamp") or (ops.get("spec") or {}).get("type") != "Backup":
            return
        if status.get("phase") in OPS_FINAL_PHASES:
            return
        now = time.monotonic()
        first_seen = self._ops_seen.setdefault(metadata["uid"], now)
        own = metadata.get("annotations") or {}
        cluster_annotations = ((cluster or {}).get("metadata") or {}).get("annotations") or {}
        wanted = own.get(ANNOTATION_BACKUP_PHASE) or cluster_annotations.get(ANNOTATION_BACKUP_PHASE) or "Succeed"
        message = own.get(ANNOTATION_MESSAGE) or cluster_annotations.get(ANNOTATION_MESSAGE) or ""
        if cluster is None:
            phase, message = "Failed", f"Cluster {ops['spec'].get('clusterName')} not found"
        elif now - first_seen < self.provisioning_seconds:
            phase = "Creating" if not status.get("phase") else "Running"
        else:
            phase = wanted
        new_status: dict[str, Any] = {"phase": phase, "progress": "1/1" if phase in OPS_FINAL_PHASES else "0/1"}
        new_status["startTimestamp"] = status.get("startTimestamp") or _now()
        if phase in OPS_FINAL_PHASES:
            new_status["completionTimestamp"] = _now()
        new_status["conditions"] = [
            {
                "type": {"Succeed": "Succeed", "Failed": "Failed"}.get(phase, "Backup"),
                "status": "True",
                "reason": {"Succeed": "OpsRequestProcessedSuccessfully"}.get(phase, f"OpsRequest{phase}"),
                "message": message or f"simulated backup: {phase}",
                "lastTransitionTime": _now(),
            }
        ]
        if status.get("phase") == phase:
            return
        await self.client.patch(
            OpsRequest.Status,
            metadata["name"],
            {"status": new_status},
            namespace=self.namespace,
            patch_type=PatchType.MERGE,
        )

    async def reconcile(self, cluster: dict[str, Any]) -> None:
        metadata = cluster["metadata"]
        if metadata.get("deletionTimestamp"):
            return
        generation = int(metadata.get("generation") or 1)
        annotations = metadata.get("annotations") or {}
        seen = self._seen.get(metadata["uid"])
        now = time.monotonic()
        if seen is None:
            seen = self._seen[metadata["uid"]] = _Seen(generation=generation, changed_at=now)
        observe = annotations.get(ANNOTATION_OBSERVE, "true") != "false"
        if observe and generation != seen.generation:
            seen.generation, seen.changed_at, seen.first = generation, now, False

        await self._ensure_children(
            cluster, seen, hold_secrets=annotations.get(ANNOTATION_HOLD_SECRETS) == "true"
        )

        settling = now - seen.changed_at < self.provisioning_seconds
        phase = annotations.get(ANNOTATION_PHASE) or (
            ("Creating" if seen.first else "Updating") if settling else "Running"
        )
        message = annotations.get(ANNOTATION_MESSAGE, "" if phase == "Running" else f"simulated {phase}")
        status = self._status(cluster, phase, message, seen.generation if observe else None)
        if not _contains(cluster.get("status") or {}, status):
            await self.client.patch(
                Cluster.Status,
                metadata["name"],
                {"status": status},
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )

    def _status(
        self, cluster: dict[str, Any], phase: str, message: str, observed: int | None
    ) -> dict[str, Any]:
        old = cluster.get("status") or {}
        # Component phases have no Abnormal in KubeBlocks 1.0: an abnormal cluster has failed components.
        component_phase = "Failed" if phase in ("Abnormal", "Failed") else phase
        components = {
            component["name"]: {
                "phase": component_phase,
                "upToDate": phase == "Running",
                **({"message": {"simulator": message}} if message else {}),
            }
            for component in cluster["spec"].get("componentSpecs") or []
        }
        ready = "True" if phase == "Running" else "False"
        old_ready = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), None)
        condition = {
            "type": "Ready",
            "status": ready,
            "reason": "ClusterReady" if ready == "True" else f"Cluster{phase}",
            "message": message or "all components are running",
            "lastTransitionTime": (
                old_ready["lastTransitionTime"] if old_ready and old_ready.get("status") == ready else _now()
            ),
            "observedGeneration": observed or old.get("observedGeneration") or 0,
        }
        status: dict[str, Any] = {"phase": phase, "components": components, "conditions": [condition]}
        status["message"] = message
        if observed is not None:
            status["observedGeneration"] = observed
        return status

    async def _ensure_children(self, cluster: dict[str, Any], seen: _Seen, *, hold_secrets: bool) -> None:
        metadata = cluster["metadata"]
        name = metadata["name"]
        owner = {
            "apiVersion": "apps.kubeblocks.io/v1",
            "kind": "Cluster",
            "name": name,
            "uid": metadata["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for component in cluster["spec"].get("componentSpecs") or []:
            facts = addon_for(cluster["spec"], component)
            if facts is None:
                continue
            component_name = f"{name}-{component['name']}"
            labels = {
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "kubeblocks",
                "apps.kubeblocks.io/component-name": component["name"],
            }
            children: list[dict[str, Any]] = []
            for service, ports in facts.services.items():
                children.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": f"{component_name}-{service}", "labels": labels},
                        "spec": {
                            "selector": labels,
                            "ports": [
                                {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                                for port_name, port in ports.items()
                            ],
                        },
                    }
                )
            if not hold_secrets:
                for account in facts.accounts:
                    children.append(
                        {
                            "apiVersion": "v1",
                            "kind": "Secret",
                            "metadata": {"name": f"{component_name}-account-{account}", "labels": labels},
                            "type": "Opaque",
                            "stringData": {"username": account, "password": secrets.token_urlsafe(12)},
                        }
                    )
            for child in children:
                key = f"{child['kind']}/{child['metadata']['name']}"
                if key in seen.created:
                    continue
                child["metadata"]["namespace"] = self.namespace
                child["metadata"]["ownerReferences"] = [owner]
                try:
                    await self.client.create(from_dict(child))
                except ApiError as err:
                    if err.status.code != 409:
                        raise
                seen.created.add(key)


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` already holds everything in ``wanted`` (so a write would change nothing)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)
