"""PodDisruptionBudgets ``<name>-api`` and ``<name>-worker``: voluntary evictions take one pod at a time."""

from __future__ import annotations

from aperag_operator.builders.common import Instance, Obj, child_name, finalize, metadata, selector_labels

PDB_COMPONENTS = ("api", "worker")


def wanted(inst: Instance) -> bool:
    return inst.spec.pod_disruption_budget.enabled


def name(inst: Instance, component: str) -> str:
    return child_name(inst, component)


def build(inst: Instance, component: str) -> Obj:
    return finalize(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(inst, name(inst, component), component),
            "spec": {
                "maxUnavailable": inst.spec.pod_disruption_budget.max_unavailable,
                "selector": {"matchLabels": selector_labels(inst, component)},
            },
        }
    )
