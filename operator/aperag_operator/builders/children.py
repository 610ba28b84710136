"""The core desired children of one ApeRAG (contributors add theirs), in apply order."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from aperag_operator.builders import (
    configmap,
    deployment,
    ingress,
    network_policy,
    pdb,
    service,
    service_account,
)
from aperag_operator.builders.common import Instance, Obj


def desired_children(
    inst: Instance, env: Sequence[Obj] = (), autoscaled: Collection[str] = frozenset()
) -> list[Obj]:
    """Every core child the spec asks for; ``env`` is what contributors add to the app containers (the
    database connection settings); ``autoscaled`` the components whose replicas an autoscaler owns."""
    out: list[Obj] = [service_account.build(inst), configmap.build(inst)]
    components = deployment.enabled_components(inst)
    out += [service.build(inst, c) for c in components if c in service.PORTS]
    cfg_hash = deployment.config_hash(inst)
    out += [deployment.build(inst, c, env, cfg_hash, autoscaled=c in autoscaled) for c in components]
    if pdb.wanted(inst):
        out += [pdb.build(inst, c) for c in pdb.PDB_COMPONENTS]
    if ingress.wanted(inst):
        out.append(ingress.build(inst))
    if network_policy.wanted(inst):
        out += network_policy.build(inst)
    return out
