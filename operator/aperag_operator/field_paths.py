"""Which field of the ApeRAG spec a child's field comes from, so that an apply the API server refuses
is reported with the field the user wrote (``spec.components.api.resources.requests.cpu``), not the
child's (``spec.template.spec.containers[0].resources.requests``).

Pure: a table of child-field prefixes per kind. Most bad values are refused at admission by the CRD;
this covers what only the API server's own validation of the child can catch.
"""

from __future__ import annotations

import re

from aperag_operator.builders.common import COMPONENTS, Obj

_CONTAINER = r"spec\.template\.spec\.containers\[0\]"
_POD = r"spec\.template\.spec"

# (kind, regex on the child's field path, spec path; {c} is the component, \1.. the regex's groups)
_RULES: tuple[tuple[str, str, str], ...] = (
    ("Deployment", rf"^{_CONTAINER}\.resources(.*)$", r"spec.components.{c}.resources\1"),
    ("Deployment", rf"^{_CONTAINER}\.image$", r"spec.components.{c}.image (or spec.image and spec.version)"),
    ("Deployment", rf"^{_CONTAINER}\.volumeMounts.*$", r"spec.objectStorage.local.mountPath"),
    ("Deployment", rf"^{_CONTAINER}\.env(.*)$", r"spec.app.env\1"),
    ("Deployment", rf"^{_CONTAINER}\.envFrom(.*)$", r"spec.app.envFrom\1"),
    ("Deployment", rf"^{_POD}\.nodeSelector(.*)$", r"spec.components.{c}.nodeSelector\1"),
    ("Deployment", rf"^{_POD}\.affinity(.*)$", r"spec.components.{c}.affinity\1"),
    ("Deployment", rf"^{_POD}\.tolerations(.*)$", r"spec.components.{c}.tolerations\1"),
    ("Deployment", rf"^{_POD}\.imagePullSecrets(.*)$", r"spec.image.pullSecrets\1"),
    ("Deployment", r"^spec\.template\.metadata\.labels(.*)$", r"spec.components.{c}.podLabels\1"),
    ("Deployment", r"^spec\.template\.metadata\.annotations(.*)$", r"spec.components.{c}.podAnnotations\1"),
    ("Deployment", r"^spec\.replicas$", r"spec.components.{c}.replicas"),
    ("PersistentVolumeClaim", r"^spec\.resources.*$", r"spec.objectStorage.local.size"),
    ("PersistentVolumeClaim", r"^spec\.storageClassName$", r"spec.objectStorage.local.storageClassName"),
    ("PersistentVolumeClaim", r"^spec(\..*)?$", r"spec.objectStorage.local"),
    ("ConfigMap", r"^data(.*)$", r"spec.app.config\1"),
    ("Ingress", r"^metadata\.annotations(.*)$", r"spec.ingress.annotations\1"),
    ("Ingress", r"^spec\.ingressClassName$", r"spec.ingress.className"),
    ("Ingress", r"^spec\.tls.*$", r"spec.ingress.tlsSecretName"),
    ("Ingress", r"^spec\.rules.*host$", r"spec.ingress.host"),
    ("NetworkPolicy", r"^spec\.ingress.*namespaceSelector.*$", r"spec.networkPolicy.ingressNamespaceLabels"),
    ("PodDisruptionBudget", r"^spec\.maxUnavailable$", r"spec.podDisruptionBudget.maxUnavailable"),
)


def component_of(obj: Obj) -> str | None:
    label = ((obj.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component")
    return str(label) if label in COMPONENTS else None


def spec_field(obj: Obj, child_field: str) -> str | None:
    """The spec field behind ``child_field`` of the child ``obj``, or None when it is the operator's own."""
    component = component_of(obj) or "<component>"
    for kind, pattern, template in _RULES:
        if obj.get("kind") != kind:
            continue
        match = re.match(pattern, child_field)
        if match:
            return match.expand(template).replace("{c}", component)
    return None


def describe(obj: Obj, causes: tuple[tuple[str, str], ...], message: str) -> str:
    """One line for an apply the API server refused: the spec fields the user wrote, and why."""
    child = f"{obj['kind']} {obj['metadata']['name']}"
    parts = []
    for child_field, why in causes:
        field = spec_field(obj, child_field)
        where = f"{field} (in {child} {child_field})" if field else f"{child} {child_field}"
        parts.append(f"{where}: {why}")
    return "; ".join(parts) if parts else f"{child}: {message}"
