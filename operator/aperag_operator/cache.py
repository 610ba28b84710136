"""The latest known state of every watched object, and which watches have listed their kind yet.

Fed by the informers (initial list, watch events, re-lists after a gap) and by the responses of the
operator's own writes. An older resourceVersion never replaces a newer one: resourceVersions are etcd
revisions here, compared as integers (docs/design.md). A re-list is authoritative: an object missing
from it that is not newer than the list is gone, even if its DELETED event was never seen.

Secrets are kept without their values (only the key names): see :func:`strip_secret`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from aperag_operator.builders.common import Obj
from aperag_operator.kinds import APERAG, ObjKey, key
from aperag_operator.spec.model import API_GROUP

ParentKey = tuple[str, str]  # (namespace, name) of an ApeRAG
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: Scope of a watch: a namespace, or ALL for the whole cluster.
ALL = "*"


class KindState(Enum):
    """What an informer knows about its kind in its scope."""

    PENDING = "Pending"  # not listed yet: nothing may be concluded from its absence in the cache
    LISTED = "Listed"  # listed at least once; the cache holds what is there
    NOT_INSTALLED = "NotInstalled"  # the API server does not serve the kind (no CRD)
    FORBIDDEN = "Forbidden"  # RBAC does not allow listing it

    @property
    def synced(self) -> bool:
        return self is not KindState.PENDING


def resource_version(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


def owner_of(obj: Obj) -> ParentKey | None:
    """The ApeRAG that controls ``obj`` by owner reference."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == APERAG.kind and str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return (meta.get("namespace", ""), ref["name"])
    return None


def labeled_instance(obj: Obj) -> ParentKey | None:
    """The ApeRAG an object belongs to by its labels (objects kept without owner reference, such as a
    retained KubeBlocks Cluster or documents volume)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == "aperag-operator" and labels.get(INSTANCE_LABEL):
        return (meta.get("namespace", ""), str(labels[INSTANCE_LABEL]))
    return None


def parent_of(obj: Obj) -> ParentKey | None:
    return owner_of(obj) or labeled_instance(obj)


def is_ours(obj: Obj) -> bool:
    """Whether the cache keeps ``obj``: a child by owner reference, whatever its labels say, or an
    object the operator labelled as its own."""
    return parent_of(obj) is not None


def strip_secret(obj: Obj) -> Obj:
    """A Secret reduced to what the operator may know: its metadata and the *names* of its keys."""
    meta = obj.get("metadata") or {}
    names = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Secret"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels") if k in meta},
        "data": dict.fromkeys(sorted(names), ""),
    }


@dataclass(frozen=True)
class Change:
    """An object that appeared, changed or went away, as the cache saw it."""

    deleted: bool
    obj: Obj
    previous: Obj | None = None


class Cache:
    def __init__(self) -> None:
        self._objects: dict[ObjKey, Obj] = {}
        self._by_owner: dict[str, set[ObjKey]] = {}
        self._by_type: dict[str, set[ObjKey]] = {}
        self._states: dict[tuple[str, str], KindState] = {}

    # --- objects ------------------------------------------------------------------------------------

    def put(self, obj: Obj) -> Change | None:
        """Stores ``obj`` unless an object with a newer resourceVersion is known; returns the change, or
        None when nothing changed (the same or an older version)."""
        k = key(obj)
        old = self._objects.get(k)
        if old is not None:
            old_rv, new_rv = resource_version(old), resource_version(obj)
            if new_rv and old_rv >= new_rv:
                return None
        self._unindex(k)
        self._objects[k] = obj
        self._by_type.setdefault(k[0], set()).add(k)
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("uid"):
                self._by_owner.setdefault(ref["uid"], set()).add(k)
        return Change(False, obj, old)

    def remove(self, k: ObjKey) -> Change | None:
        old = self._objects.get(k)
        if old is None:
            return None
        self._unindex(k)
        del self._objects[k]
        self._by_type.get(k[0], set()).discard(k)
        return Change(True, old, old)

    def replace(self, type_path: str, scope: str, items: Iterable[Obj], list_rv: int) -> list[Change]:
        """A re-list of ``type_path`` in ``scope`` (a namespace or ALL): stores every listed object and
        drops the cached ones the list no longer holds, unless they are newer than the list."""
        changes: list[Change] = []
        listed: set[ObjKey] = set()
        for obj in items:
            listed.add(key(obj))
            change = self.put(obj)
            if change is not None:
                changes.append(change)
        for k in list(self._by_type.get(type_path, set())):
            if k in listed or (scope != ALL and k[1] != scope):
                continue
            if resource_version(self._objects[k]) <= list_rv:
                change = self.remove(k)
                if change is not None:
                    changes.append(change)
        return changes

    def _unindex(self, k: ObjKey) -> None:
        old = self._objects.get(k)
        for ref in ((old or {}).get("metadata") or {}).get("ownerReferences") or []:
            self._by_owner.get(ref.get("uid", ""), set()).discard(k)

    def get(self, k: ObjKey) -> Obj | None:
        return self._objects.get(k)

    def objects(self, type_path: str, namespace: str | None = None) -> list[Obj]:
        """Every cached object of a kind (in one namespace), in key order."""
        keys = sorted(k for k in self._by_type.get(type_path, set()) if namespace is None or k[1] == namespace)
        return [self._objects[k] for k in keys]

    def owned(self, uid: str, type_paths: Iterable[str]) -> list[Obj]:
        """Objects of the given kinds with an owner reference to ``uid``, in key order."""
        wanted = set(type_paths)
        return [self._objects[k] for k in sorted(self._by_owner.get(uid, set())) if k[0] in wanted]

    # --- what has been listed ----------------------------------------------------------------------

    def set_state(self, type_path: str, scope: str, state: KindState) -> None:
        self._states[(type_path, scope)] = state

    def drop_state(self, type_path: str, scope: str) -> None:
        self._states.pop((type_path, scope), None)

    def state(self, type_path: str, namespace: str) -> KindState:
        """The state of a kind as seen from ``namespace``: its namespace's watch, else a cluster-wide one."""
        state = self._states.get((type_path, namespace))
        if state is None:
            state = self._states.get((type_path, ALL), KindState.PENDING)
        return state

    def synced(self, type_paths: Iterable[str], namespace: str) -> bool:
        """The barrier: nothing about ``namespace`` may be decided before every kind has been listed."""
        return all(self.state(t, namespace).synced for t in type_paths)
