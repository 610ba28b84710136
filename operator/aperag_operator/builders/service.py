"""Services ``<name>-api`` and ``<name>-flower`` (ClusterIP)."""

from __future__ import annotations

from aperag_operator.builders.common import (
    API_PORT,
    FLOWER_PORT,
    Instance,
    Obj,
    child_name,
    finalize,
    metadata,
    selector_labels,
)

PORTS = {"api": API_PORT, "flower": FLOWER_PORT}


def name(inst: Instance, component: str) -> str:
    return child_name(inst, component)


def build(inst: Instance, component: str) -> Obj:
    port = PORTS[component]
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(inst, name(inst, component), component),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(inst, component),
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )
