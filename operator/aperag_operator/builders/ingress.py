"""Ingress ``<name>``: one rule, ``/`` (Prefix) to the API Service, which serves everything the instance
offers on one origin: the API (``/api``), the OpenAI-compatible API (``/v1``), the MCP server (``/mcp``)
and the web console (``/console/``; ``/`` redirects there). There is no separate frontend: see
docs/design.md, "The web console"."""

from __future__ import annotations

from aperag_operator.builders import service
from aperag_operator.builders.common import (
    API_PORT,
    Instance,
    Obj,
    child_name,
    finalize,
    metadata,
)


def wanted(inst: Instance) -> bool:
    return inst.spec.ingress.enabled


def build(inst: Instance) -> Obj:
    spec = inst.spec.ingress
    backend = {"service": {"name": service.name(inst, "api"), "port": {"number": API_PORT}}}
    paths = [{"path": "/", "pathType": "Prefix", "backend": backend}]
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
