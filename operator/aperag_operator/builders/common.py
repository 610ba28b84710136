"""Names, labels, owner references and security settings shared by every builder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aperag_operator.spec.model import API_GROUP, API_VERSION, KIND, ApeRAGSpec

Obj = dict[str, Any]

FIELD_MANAGER = "aperag-operator"
#: Applies only a Deployment's current ``spec.replicas`` before the operator stops applying the field
#: (autoscaling turned on): a field its only applier drops is removed by the API server (the Deployment
#: would fall to 1 replica), so this second manager keeps it until the autoscaler writes it.
REPLICAS_HANDOVER_MANAGER = "aperag-operator-handover"
MANAGED_BY = "aperag-operator"
PART_OF = "aperag"
APP_NAME = "aperag"

#: Annotation on every child: a hash of the desired object as last applied. When the desired object
#: changes (including fields being removed from it) the hash differs and the child is re-applied.
SPEC_HASH_ANNOTATION = "aperag.io/spec-hash"
#: Pod template annotation: hash of the ConfigMap's data, so a config change rolls the pods.
CONFIG_HASH_ANNOTATION = "aperag.io/config-hash"
PAUSED_ANNOTATION = "aperag.io/paused"

COMPONENTS = ("api", "worker", "beat", "flower")

API_PORT = 8000
FLOWER_PORT = 5555
# The health server of the worker and beat processes (the app's HEALTH_PORT default).
HEALTH_PORT = 8001
APP_UID = 1000


@dataclass(frozen=True, order=True)
class Release:
    """A release of the app: the version (the pods' app.kubernetes.io/version label) and the app image
    (``repository:tag``) the api, worker, beat and flower containers run."""

    version: str
    image: str


def target_release(spec: ApeRAGSpec) -> Release:
    """The release the spec asks for."""
    return Release(spec.version, f"{spec.image.repository}:{spec.image.tag or spec.version}")


@dataclass(frozen=True)
class Instance:
    """What the builders know about one ApeRAG resource."""

    name: str
    namespace: str
    uid: str
    spec: ApeRAGSpec
    generation: int = 1
    #: The release the Deployments run when it is not the spec's target (an upgrade or a rollback is
    #: under way): their images and version labels come from it. Everything else (Services, ConfigMap,
    #: the rest of the pod spec) follows the spec. None: the spec's target.
    release: Release | None = None

    @property
    def image_tag(self) -> str:
        return self.spec.image.tag or self.spec.version

    @property
    def workload_release(self) -> Release:
        """The release the Deployments run: ``release`` when set, else the spec's target."""
        return self.release or target_release(self.spec)


def child_name(inst: Instance, suffix: str | None = None) -> str:
    return inst.name if not suffix else f"{inst.name}-{suffix}"


def selector_labels(inst: Instance, component: str | None = None) -> dict[str, str]:
    """The immutable subset used in selectors (no version: selectors must not change on upgrade)."""
    labels = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": inst.name}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def labels(inst: Instance, component: str | None = None, version: str | None = None) -> dict[str, str]:
    """The standard app.kubernetes.io labels of a child. Never copied from the resource's own labels.
    ``version`` defaults to the spec's (Deployments and migration Jobs pass their release's)."""
    return {
        **selector_labels(inst, component),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/version": version or inst.spec.version,
    }


def owner_reference(inst: Instance) -> Obj:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": inst.name,
        "uid": inst.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(inst: Instance, name: str, component: str | None = None, version: str | None = None) -> Obj:
    return {
        "name": name,
        "namespace": inst.namespace,
        "labels": labels(inst, component, version),
        "ownerReferences": [owner_reference(inst)],
    }


def content_hash(value: Any) -> str:
    """A short, stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prune(value: Any) -> Any:
    """Drop ``None`` values and empty dicts/lists (the API server drops them too, so keeping them would
    make an applied object look different from what was read back)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = prune(item)
            if item is None or (isinstance(item, (dict, list)) and not item and key != "emptyDir"):
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [prune(item) for item in value if item is not None]
    return value


def finalize(obj: Obj) -> Obj:
    """Prune the object and stamp the spec-hash annotation (computed over everything else)."""
    obj = prune(obj)
    meta = obj["metadata"]
    meta.setdefault("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    meta["annotations"][SPEC_HASH_ANNOTATION] = content_hash(obj)
    return obj


POD_SECURITY_CONTEXT: Obj = {
    "runAsNonRoot": True,
    "runAsUser": APP_UID,
    "runAsGroup": APP_UID,
    "fsGroup": APP_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY_CONTEXT: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
