"""The controller's cache and work queue, with a fake API client (no cluster)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aperag_operator.controller import Cache, Controller, owner_of


class FakeClient:
    """Records writes; applies return the object with a growing resourceVersion."""

    def __init__(self, parent: dict[str, Any] | None = None) -> None:
        self.writes: list[tuple[str, str]] = []
        self.rv = 100
        self.parent = parent or {}

    async def patch(self, res: Any, name: str, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.rv += 1
        self.writes.append((res.__name__, name))
        if res.__name__ == "Status":  # the API server returns the whole resource
            out = {**copy.deepcopy(self.parent), "status": copy.deepcopy(obj["status"])}
        else:
            out = copy.deepcopy(obj)
        out["metadata"] = {**out.get("metadata", {}), "resourceVersion": str(self.rv)}
        return out

    async def create(self, obj: Any) -> Any:
        self.writes.append(("Event", obj["reason"]))
        return obj

    async def get(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no Secret is referenced")

    async def delete(self, res: Any, name: str, **_: Any) -> None:
        self.writes.append(("delete " + res.__name__, name))


def aperag(rv: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "aperag.io/v1alpha1",
        "kind": "ApeRAG",
        "metadata": {"name": "rag", "namespace": "ns", "uid": "u1", "generation": 1, "resourceVersion": rv},
        "spec": {"version": "0.5.0"},
    }


def test_cache_keeps_the_newest_version() -> None:
    cache = Cache()
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5", "ownerReferences": [{"uid": "u1"}]},
    }
    cache.put(obj)
    older = copy.deepcopy(obj)
    older["metadata"]["resourceVersion"] = "4"
    older["data"] = {"stale": "1"}
    cache.put(older)
    assert "data" not in cache.get(("v1/ConfigMap", "ns", "a"))  # type: ignore[operator]
    assert [o["metadata"]["name"] for o in cache.owned("u1", ["v1/ConfigMap"])] == ["a"]
    cache.remove(("v1/ConfigMap", "ns", "a"))
    assert cache.owned("u1", ["v1/ConfigMap"]) == []


def test_owner_of() -> None:
    child = {
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [{"apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "name": "rag", "uid": "u1"}],
        }
    }
    assert owner_of(child) == ("ns", "rag")
    assert owner_of({"metadata": {}}) is None


async def test_second_reconcile_writes_nothing() -> None:
    client = FakeClient(aperag())
    ctl = Controller(client, workers=1, child_delay=0)  # type: ignore[arg-type]
    ctl.parents[("ns", "rag")] = aperag()
    await ctl.reconcile(("ns", "rag"))
    applied = [w for w in client.writes if w[0] not in ("Event", "Status")]
    assert len(applied) == 11
    assert ("Event", "Created") in client.writes
    before = len(client.writes)
    # the status we wrote comes back with the resource, as the watch would deliver it
    await ctl.reconcile(("ns", "rag"))
    assert client.writes[before:] == []


async def test_paused_resource_gets_no_child_writes() -> None:
    client = FakeClient()
    ctl = Controller(client, workers=1, child_delay=0)  # type: ignore[arg-type]
    body = aperag()
    body["metadata"]["annotations"] = {"aperag.io/paused": "true"}
    ctl.parents[("ns", "rag")] = body
    await ctl.reconcile(("ns", "rag"))
    assert {w[0] for w in client.writes} <= {"Status", "Event"}


async def test_queue_coalesces_and_reruns_dirty_keys() -> None:
    ctl = Controller(FakeClient(), workers=1, child_delay=0)  # type: ignore[arg-type]
    seen: list[tuple[str, str]] = []
    gate = asyncio.Event()
    started = asyncio.Event()
    finished = asyncio.Event()

    async def fake_reconcile(pk: tuple[str, str]) -> None:
        seen.append(pk)
        started.set()
        if len(seen) == 1:
            await gate.wait()
        else:
            finished.set()

    ctl.reconcile = fake_reconcile  # type: ignore[method-assign]
    ctl.start()
    try:
        ctl.enqueue(("ns", "a"))
        ctl.enqueue(("ns", "a"))  # already queued: ignored
        await asyncio.wait_for(started.wait(), 5)
        ctl.enqueue(("ns", "a"))  # running: marked dirty
        ctl.enqueue(("ns", "a"))
        gate.set()
        await asyncio.wait_for(finished.wait(), 5)
        assert seen == [("ns", "a"), ("ns", "a")]
    finally:
        await ctl.stop()
