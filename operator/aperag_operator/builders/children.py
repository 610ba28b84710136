"""The complete desired set of children of one ApeRAG, in apply order."""

from __future__ import annotations

from collections.abc import Sequence

from aperag_operator.builders import (
    configmap,
    deployment,
    ingress,
    network_policy,
    pdb,
    pvc,
    service,
    service_account,
)
from aperag_operator.builders.common import Instance, Obj

#: Kinds of children this module may produce (apiVersion, kind): the operator watches these and deletes
#: those it owns that are no longer desired.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)

#: Kinds held back while a gate is closed (missing Secret, databases not ready): the app workloads.
WORKLOAD_KINDS = frozenset({"Deployment"})


def desired_children(inst: Instance, database_env: Sequence[Obj] | None = None) -> list[Obj]:
    """Every child the spec asks for. ``database_env`` defaults to ``inst.database_env``."""
    db_env = inst.database_env if database_env is None else tuple(database_env)
    out: list[Obj] = [service_account.build(inst), configmap.build(inst)]
    if pvc.wanted(inst):
        out.append(pvc.build(inst))
    components = deployment.enabled_components(inst)
    out += [service.build(inst, c) for c in components if c in service.PORTS]
    cfg_hash = deployment.config_hash(inst)
    out += [deployment.build(inst, c, db_env, cfg_hash) for c in components]
    if pdb.wanted(inst):
        out += [pdb.build(inst, c) for c in pdb.PDB_COMPONENTS]
    if ingress.wanted(inst):
        out.append(ingress.build(inst))
    if network_policy.wanted(inst):
        out += network_policy.build(inst)
    return out


def key(obj: Obj) -> tuple[str, str, str]:
    """(apiVersion/kind, namespace, name) of an object."""
    meta = obj["metadata"]
    return (f"{obj['apiVersion']}/{obj['kind']}", meta.get("namespace", ""), meta["name"])
