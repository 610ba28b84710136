"""Plan: apply only what differs, hold back workloads behind gates, prune what is no longer desired."""

from __future__ import annotations

import copy
from typing import Any

from aperag_operator.builders.children import desired_children, key
from aperag_operator.reconcile import Hooks, all_desired, is_paused, missing_secrets, plan, secret_references

from .helpers import instance


def as_observed(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for obj in objs:
        o = copy.deepcopy(obj)
        o["metadata"]["resourceVersion"] = "1"
        out[key(o)] = o
    return out


def test_first_reconcile_applies_everything() -> None:
    desired = desired_children(instance())
    result = plan(desired, lambda k: None, [], workloads_blocked=False)
    assert len(result.apply) == len(desired) and not result.delete


def test_no_op_reconcile_applies_nothing() -> None:
    desired = desired_children(instance())
    observed = as_observed(desired)
    result = plan(desired, observed.get, list(observed.values()), workloads_blocked=False)
    assert result.apply == [] and result.delete == []


def test_gate_holds_back_workloads_without_deleting() -> None:
    desired = desired_children(instance())
    result = plan(desired, lambda k: None, [], workloads_blocked=True)
    assert result.apply and all(o["kind"] != "Deployment" for o in result.apply)
    assert len(result.held_back) == 4
    observed = as_observed(desired)
    result = plan(desired, observed.get, list(observed.values()), workloads_blocked=True)
    assert result.delete == []


def test_disabled_children_are_pruned() -> None:
    before = desired_children(instance({"ingress": {"enabled": True, "host": "a.example.com"}}))
    after = desired_children(instance())
    observed = as_observed(before)
    result = plan(after, observed.get, list(observed.values()), workloads_blocked=False)
    assert result.delete == [("networking.k8s.io/v1/Ingress", "team-a", "demo")]


def test_extra_children_seam() -> None:
    extra = {"apiVersion": "apps.kubeblocks.io/v1", "kind": "Cluster", "metadata": {"name": "demo-pg"}}
    hooks = Hooks(
        extra_children=lambda inst: [extra], database_env=lambda inst: [{"name": "X", "value": "1"}]
    )
    objs = all_desired(instance(), hooks)
    assert objs[0] is extra
    api = next(o for o in objs if o["kind"] == "Deployment")
    assert {"name": "X", "value": "1"} in api["spec"]["template"]["spec"]["containers"][0]["env"]


async def test_missing_secrets() -> None:
    spec = instance(
        {
            "app": {
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}],
                "envFrom": [{"secretRef": {"name": "opt", "optional": True}}],
            }
        }
    ).spec
    assert [r.name for r in secret_references(spec)] == ["llm"]

    async def none(ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def no_key(ns: str, name: str) -> dict[str, Any] | None:
        return {"data": {"other": "eA=="}}

    async def ok(ns: str, name: str) -> dict[str, Any] | None:
        return {"data": {"apiKey": "eA=="}}

    problems = await missing_secrets("ns", spec, none)
    assert problems[0].reason == "SecretNotFound" and "llm" in problems[0].message
    assert (await missing_secrets("ns", spec, no_key))[0].reason == "SecretKeyNotFound"
    assert await missing_secrets("ns", spec, ok) == []


def test_paused_annotation() -> None:
    assert is_paused({"metadata": {"annotations": {"aperag.io/paused": "true"}}})
    assert not is_paused({"metadata": {"annotations": {"aperag.io/paused": "false"}}})
    assert not is_paused({"metadata": {}})
