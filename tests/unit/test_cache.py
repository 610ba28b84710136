"""The cache: newest version wins, a re-list is the whole truth, Secrets keep no values."""

from __future__ import annotations

from typing import Any

from aperag_operator.cache import ALL, Cache, KindState, is_ours, owner_of, parent_of, strip_secret


def obj(name: str, rv: int, namespace: str = "ns", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
            "resourceVersion": str(rv), **meta}}  # fmt: skip


OWNER = [{"apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "name": "rag", "uid": "u1", "controller": True}]


def test_newer_version_wins_and_nothing_changes_on_the_same_one() -> None:
    cache = Cache()
    assert cache.put(obj("a", 5)) is not None
    assert cache.put(obj("a", 4)) is None  # a watch event older than our own write
    assert cache.put(obj("a", 5)) is None  # the event of our own write: no change, no reconcile
    change = cache.put(obj("a", 6))
    assert change is not None and change.previous is not None and change.previous["metadata"]["resourceVersion"] == "5"


def test_a_relist_drops_what_it_no_longer_holds_unless_newer() -> None:
    cache = Cache()
    for name, rv in (("gone", 3), ("kept", 4), ("newer", 20)):
        cache.put(obj(name, rv))
    cache.put(obj("elsewhere", 2, namespace="other"))
    changes = cache.replace("v1/ConfigMap", "ns", [obj("kept", 4), obj("new", 9)], list_rv=10)
    assert sorted((c.deleted, c.obj["metadata"]["name"]) for c in changes) == [(False, "new"), (True, "gone")]
    assert cache.get(("v1/ConfigMap", "ns", "newer")) is not None  # created after the list was taken
    assert cache.get(("v1/ConfigMap", "other", "elsewhere")) is not None  # another scope
    cache.replace("v1/ConfigMap", ALL, [], list_rv=100)
    assert cache.objects("v1/ConfigMap") == []


def test_owner_index_follows_updates() -> None:
    cache = Cache()
    cache.put(obj("a", 1, ownerReferences=OWNER))
    assert [o["metadata"]["name"] for o in cache.owned("u1", ["v1/ConfigMap"])] == ["a"]
    cache.put(obj("a", 2))  # the owner reference was removed
    assert cache.owned("u1", ["v1/ConfigMap"]) == []


def test_children_are_ours_by_owner_reference_whatever_their_labels() -> None:
    owned = obj("a", 1, ownerReferences=OWNER)
    assert owner_of(owned) == ("ns", "rag") and is_ours(owned)
    retained = obj(
        "b", 1, labels={"app.kubernetes.io/managed-by": "aperag-operator", "app.kubernetes.io/instance": "rag"}
    )
    assert owner_of(retained) is None and parent_of(retained) == ("ns", "rag")
    assert not is_ours(obj("c", 1, labels={"app.kubernetes.io/instance": "rag"}))


def test_secrets_are_kept_without_values() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "3", "annotations": {"x": "y"}},
              "data": {"password": "c2VjcmV0"}, "stringData": {"username": "admin"}}  # fmt: skip
    stripped = strip_secret(secret)
    assert stripped["data"] == {"password": "", "username": ""}
    assert "c2VjcmV0" not in repr(stripped) and "admin" not in repr(stripped)


def test_the_barrier_waits_for_every_kind() -> None:
    cache = Cache()
    cache.set_state("v1/ConfigMap", ALL, KindState.LISTED)
    assert not cache.synced(["v1/ConfigMap", "v1/Secret"], "ns")
    cache.set_state("v1/Secret", "ns", KindState.LISTED)
    assert cache.synced(["v1/ConfigMap", "v1/Secret"], "ns")
    assert not cache.synced(["v1/Secret"], "other-ns")
    cache.set_state("apps.kubeblocks.io/v1/Cluster", ALL, KindState.NOT_INSTALLED)
    assert cache.synced(["apps.kubeblocks.io/v1/Cluster"], "ns")  # nothing to wait for
