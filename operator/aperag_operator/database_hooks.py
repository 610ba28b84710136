"""The databases plugged into the reconcile through its seams (reconcile.Hooks).

The thin I/O around the pure parts: it finds out whether KubeBlocks is installed, reads the
ApeRAG's Clusters and the *key names* of the Secrets the app's database variables refer to, and hands
them to :func:`aperag_operator.databases.evaluate_databases`. What it returns:

* ``extra_children``: a KubeBlocks Cluster per managed database (none while KubeBlocks is missing),
  applied through the same server-side-apply / no-op path as every other child. Clusters are never
  pruned: a Cluster the spec no longer lists is left alone (it holds data).
* ``database_env``: the connection variables of the app containers (secrets only as ``secretKeyRef``).
* ``gates``: while the databases are not ready the app Deployments are held back (not created on first
  install, not rolled to a new template later); an expected wait is Progressing, a Cluster that is
  Abnormal/Failed, a missing external Secret or missing KubeBlocks is Degraded.
* ``extra_status``: ``status.databases`` and the ``DatabasesReady`` condition.

Secret values are never kept, compared or logged: only the names of the keys are read out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from aperag_operator import kube
from aperag_operator.builders.common import Instance, Obj, finalize, labels, owner_reference
from aperag_operator.builders.database_env import build_database_env, referenced_secret_keys
from aperag_operator.builders.kubeblocks_cluster import (
    CLUSTER_CRD_NAME,
    CLUSTER_KIND,
    KUBEBLOCKS_API_VERSION,
    build_database_clusters,
    managed_databases,
)
from aperag_operator.databases import DatabasesEvaluation, evaluate_databases
from aperag_operator.reconcile import Hooks, ObjKey
from aperag_operator.status import Problem

log = logging.getLogger("aperag_operator")

CLUSTER_TYPE = f"{KUBEBLOCKS_API_VERSION}/{CLUSTER_KIND}"


def cluster_key(namespace: str, name: str) -> ObjKey:
    return (CLUSTER_TYPE, namespace, name)


def secret_key_names(secret: Obj) -> set[str]:
    """The keys of a Secret (``data`` and ``stringData``); the values are dropped right here."""
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def gate_problems(evaluation: DatabasesEvaluation) -> list[Problem]:
    """The gate's verdict: nothing when ready, else one problem that holds back the app workloads."""
    if evaluation.ready:
        return []
    if evaluation.degraded:
        return [
            Problem(
                evaluation.degraded_reason or evaluation.reason,
                evaluation.degraded_message or evaluation.message,
                blocks_workloads=True,
                degraded=True,
            )
        ]
    return [Problem(evaluation.reason, evaluation.message, blocks_workloads=True, degraded=False)]


def database_status(evaluation: DatabasesEvaluation | None) -> Obj:
    """``status.databases`` and the ``DatabasesReady`` condition (merged by compute_status)."""
    if evaluation is None:
        return {}
    return {"databases": evaluation.status_databases, "conditions": [evaluation.condition]}


class DatabaseHooks:
    """Holds the client, the controller's cache and the last evaluation of each ApeRAG.

    Reconciles of one ApeRAG never overlap (the controller's queue guarantees it), so the evaluation
    written by ``gates`` is the one ``extra_children`` and ``extra_status`` read in the same reconcile.
    """

    def __init__(
        self,
        client: AsyncClient,
        cache_put: Callable[[Obj], None] | None = None,
        cache_remove: Callable[[ObjKey], None] | None = None,
        *,
        crd_ttl: float = 10.0,
    ) -> None:
        self.client = client
        self.cache_put = cache_put or (lambda _obj: None)
        self.cache_remove = cache_remove or (lambda _key: None)
        self.crd_ttl = crd_ttl
        self._kubeblocks: tuple[float, bool] | None = None
        self._evaluations: dict[tuple[str, str], DatabasesEvaluation] = {}
        self._installed: dict[tuple[str, str], bool] = {}

    def hooks(self) -> Hooks:
        return Hooks(
            database_env=self.database_env,
            extra_children=self.extra_children,
            gates=self.gates,
            extra_status=self.extra_status,
            secret_names=self.secret_names,
            forget=self.forget,
        )

    # --- the hooks -------------------------------------------------------------------------------------

    def database_env(self, inst: Instance) -> list[Obj]:
        return build_database_env(inst.name, inst.spec.databases)

    def secret_names(self, inst: Instance) -> list[str]:
        return sorted(referenced_secret_keys(inst.name, inst.spec.databases))

    def extra_children(self, inst: Instance) -> list[Obj]:
        if not self._installed.get((inst.namespace, inst.name), True):
            return []
        clusters = build_database_clusters(
            inst.name, inst.namespace, inst.spec.databases, owner_reference(inst), labels(inst)
        )
        return [finalize(cluster) for cluster in clusters]

    async def gates(self, inst: Instance, _observed: Callable[[ObjKey], Obj | None]) -> list[Problem]:
        evaluation = await self.evaluate(inst)
        return gate_problems(evaluation)

    def extra_status(self, inst: Instance, _observed: Callable[[ObjKey], Obj | None]) -> Obj:
        return database_status(self._evaluations.get((inst.namespace, inst.name)))

    # --- I/O -------------------------------------------------------------------------------------------

    async def evaluate(self, inst: Instance) -> DatabasesEvaluation:
        databases = inst.spec.databases
        managed = managed_databases(inst.name, databases)
        installed = await self.kubeblocks_installed() if managed else True
        clusters: dict[str, Mapping[str, Any] | None] = {}
        if installed:
            for db in managed:
                clusters[db.cluster_name] = await self._read_cluster(inst.namespace, db.cluster_name)
        secrets: dict[str, Collection[str]] = {}
        for secret_name in sorted(referenced_secret_keys(inst.name, databases)):
            keys = await self._secret_keys(inst.namespace, secret_name)
            if keys is not None:
                secrets[secret_name] = keys
        evaluation = evaluate_databases(inst.name, databases, clusters, secrets, installed)
        self._evaluations[(inst.namespace, inst.name)] = evaluation
        self._installed[(inst.namespace, inst.name)] = installed
        return evaluation

    def forget(self, namespace: str, name: str) -> None:
        self._evaluations.pop((namespace, name), None)
        self._installed.pop((namespace, name), None)

    async def kubeblocks_installed(self) -> bool:
        """Whether the KubeBlocks Cluster CRD exists (remembered for ``crd_ttl`` seconds)."""
        now = time.monotonic()
        if self._kubeblocks is not None and now - self._kubeblocks[0] < self.crd_ttl:
            return self._kubeblocks[1]
        try:
            await self.client.get(CustomResourceDefinition, CLUSTER_CRD_NAME)
            installed = True
        except ApiError as err:
            if err.status.code == 404:
                installed = False
            elif err.status.code == 403:
                # Not allowed to read CRDs: assume KubeBlocks is there; applying a Cluster will tell.
                installed = True
            else:
                raise
        if self._kubeblocks is None or self._kubeblocks[1] != installed:
            log.info("KubeBlocks Cluster CRD %s %s", CLUSTER_CRD_NAME, "found" if installed else "not installed")
        self._kubeblocks = (now, installed)
        return installed

    async def _read_cluster(self, namespace: str, name: str) -> Obj | None:
        cls = kube.resource_class(KUBEBLOCKS_API_VERSION, CLUSTER_KIND)
        try:
            result = await self.client.get(cls, name, namespace=namespace)
        except ApiError as err:
            if err.status.code == 404:
                self.cache_remove(cluster_key(namespace, name))
                return None
            raise
        cluster = kube.to_dict(result)
        self.cache_put(cluster)
        return cluster

    async def _secret_keys(self, namespace: str, name: str) -> set[str] | None:
        try:
            result = await self.client.get(kube.resource_class("v1", "Secret"), name, namespace=namespace)
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise
        return secret_key_names(kube.to_dict(result))
