"""Ingress ``<name>``: ``/api``, ``/v1`` (the OpenAI-compatible API) and ``/mcp`` (the MCP server) to the
API Service, ``/`` to the frontend (or the API without one)."""

from __future__ import annotations

from aperag_operator.builders import service
from aperag_operator.builders.common import (
    API_PORT,
    FRONTEND_PORT,
    Instance,
    Obj,
    child_name,
    finalize,
    metadata,
)


def wanted(inst: Instance) -> bool:
    return inst.spec.ingress.enabled


def _backend(inst: Instance, component: str, port: int) -> Obj:
    return {"service": {"name": service.name(inst, component), "port": {"number": port}}}


def build(inst: Instance) -> Obj:
    spec = inst.spec.ingress
    # Every path the API serves under its own prefix; OpenAI clients and MCP clients call /v1 and /mcp.
    paths = [
        {"path": path, "pathType": "Prefix", "backend": _backend(inst, "api", API_PORT)}
        for path in ("/api", "/v1", "/mcp")
    ]
    if inst.spec.components.frontend.enabled:
        paths.append(
            {"path": "/", "pathType": "Prefix", "backend": _backend(inst, "frontend", FRONTEND_PORT)}
        )
    else:
        paths.append({"path": "/", "pathType": "Prefix", "backend": _backend(inst, "api", API_PORT)})
    meta = metadata(inst, child_name(inst), "ingress")
    if spec.annotations:
        meta["annotations"] = dict(spec.annotations)
    body: Obj = {
        "ingressClassName": spec.class_name,
        "rules": [{"host": spec.host, "http": {"paths": paths}}],
    }
    if spec.tls_secret_name:
        body["tls"] = [{"hosts": [spec.host], "secretName": spec.tls_secret_name}]
    return finalize({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": body})
