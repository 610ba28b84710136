"""lightkube resource classes for every kind the operator touches, as *generic* resources.

Generic resources keep objects as plain dicts end to end (the builders' output is applied as-is and
responses come back as dicts for the cache), and avoid parsing every response into typed models.
"""

from __future__ import annotations

from typing import Any

from lightkube.core import resource as res
from lightkube.generic_resource import (
    GenericNamespacedResource,
    GenericNamespacedStatus,
    create_api_info,
)

from aperag_operator.spec.model import API_GROUP, API_VERSION, KIND, PLURAL

PLURALS: dict[str, str] = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "Event": "events",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Ingress": "ingresses",
    "NetworkPolicy": "networkpolicies",
    "Cluster": "clusters",
    KIND: PLURAL,
}

_CACHE: dict[str, type[GenericNamespacedResource]] = {}


def resource_class(api_version: str, kind: str, plural: str | None = None) -> type[GenericNamespacedResource]:
    """A namespaced generic resource class for ``apiVersion``/``kind`` (not put in lightkube's registry)."""
    cache_key = f"{api_version}/{kind}"
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    group, _, version = api_version.rpartition("/")
    info = create_api_info(group, version, kind, plural or PLURALS[kind])

    class Status(GenericNamespacedStatus):
        _api_info = res.ApiInfo(
            resource=info.resource,
            parent=info.resource,
            plural=info.plural,
            verbs=["get", "patch", "put"],
            action="status",
        )

    class Resource(GenericNamespacedResource):
        _api_info = info

    Resource.Status = Status
    Resource.__name__ = Resource.__qualname__ = kind
    _CACHE[cache_key] = Resource
    return Resource


def aperag_class() -> type[GenericNamespacedResource]:
    return resource_class(f"{API_GROUP}/{API_VERSION}", KIND, PLURAL)


def to_dict(obj: Any) -> dict[str, Any]:
    """A response object as a plain dict."""
    if isinstance(obj, dict):
        out: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        return out
    converted: dict[str, Any] = obj.to_dict()
    return converted
