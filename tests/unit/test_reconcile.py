"""The pure reconcile: plan (apply what differs, hold back workloads behind gates, prune what is no
longer desired) and decide (spec, Secrets, contributors, in one decision). Whether an observed child
"matches" is only meaningful against the API server's own answers: that is proven end to end
(tests/e2e/test_operator_core.py::test_noop_resync_makes_no_writes and the restart test)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aperag_operator.builders.children import desired_children
from aperag_operator.cache import KindState
from aperag_operator.contributors.base import Context, Contribution, ordered
from aperag_operator.contributors.databases import DatabasesContributor
from aperag_operator.contributors.object_storage import ObjectStorageContributor
from aperag_operator.kinds import KUBEBLOCKS_CLUSTER, Kind, key
from aperag_operator.reconcile import decide, is_paused, missing_secrets, plan, secret_references

from .helpers import instance
from .observed import StaticObserved

NOW = datetime(2026, 1, 1, tzinfo=UTC)


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


def test_a_changed_spec_hash_is_applied_again() -> None:
    before = as_observed(desired_children(instance()))
    after = desired_children(instance({"components": {"api": {"replicas": 5}}}))
    result = plan(after, before.get, list(before.values()), workloads_blocked=False)
    assert [o["metadata"]["name"] for o in result.apply] == ["demo-api"]


def test_gate_holds_back_workloads_without_deleting() -> None:
    desired = desired_children(instance())
    result = plan(desired, lambda k: None, [], workloads_blocked=True)
    assert result.apply and all(o["kind"] != "Deployment" for o in result.apply)
    assert len(result.held_back) == 3  # api, worker, beat
    observed = as_observed(desired)
    result = plan(desired, observed.get, list(observed.values()), workloads_blocked=True)
    assert result.delete == []


def test_disabled_children_are_pruned() -> None:
    before = desired_children(instance({"ingress": {"enabled": True, "host": "a.example.com"}}))
    after = desired_children(instance())
    observed = as_observed(before)
    result = plan(after, observed.get, list(observed.values()), workloads_blocked=False)
    assert result.delete == [("networking.k8s.io/v1/Ingress", "team-a", "demo")]


def test_requested_deletions_only_of_what_exists_and_is_not_desired() -> None:
    desired = desired_children(instance())
    observed = as_observed(desired)
    gone = ("v1/PersistentVolumeClaim", "team-a", "demo-objects")
    assert plan(desired, observed.get, [], workloads_blocked=False, deletions=[gone]).delete == []
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "demo-objects", "namespace": "team-a"},
    }
    observed[gone] = claim
    assert plan(desired, observed.get, [], workloads_blocked=False, deletions=[gone]).delete == [gone]


def test_missing_secrets() -> None:
    spec = instance(
        {
            "app": {
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}],
                "envFrom": [{"secretRef": {"name": "opt", "optional": True}}],
            }
        }
    ).spec
    assert [r.name for r in secret_references(spec)] == ["llm"]
    problems = missing_secrets(spec, lambda name: None)
    assert problems[0].reason == "SecretNotFound" and "llm" in problems[0].message
    assert "spec.app.env[0]" in problems[0].message
    assert missing_secrets(spec, lambda name: frozenset({"other"}))[0].reason == "SecretKeyNotFound"
    assert missing_secrets(spec, lambda name: frozenset({"apiKey"})) == []


def test_paused_annotation() -> None:
    assert is_paused({"metadata": {"annotations": {"aperag.io/paused": "true"}}})
    assert not is_paused({"metadata": {"annotations": {"aperag.io/paused": "false"}}})
    assert not is_paused({"metadata": {}})


def body(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "aperag.io/v1alpha1",
        "kind": "ApeRAG",
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1", "generation": 2},
        "spec": {"version": "0.5.0", **(spec or {})},
    }


def test_decide_gathers_contributions_and_holds_workloads_behind_their_gates() -> None:
    observed = StaticObserved()  # no Cluster yet: the databases are a wait
    decision = decide(
        body(), observed, ordered([DatabasesContributor(), ObjectStorageContributor()]), lambda k: None,
        lambda inst: [], NOW,
    )  # fmt: skip
    kinds = [o["kind"] for o in decision.plan.apply]
    assert kinds.count("Cluster") == 2 and "PersistentVolumeClaim" in kinds and "Deployment" not in kinds
    assert [p.reason for p in decision.problems] == ["ClustersNotReady"]
    assert decision.plan.held_back and set(decision.contributions) == {"databases", "objectStorage"}
    api = next(o for o in decision.plan.desired if o["kind"] == "Deployment" and o["metadata"]["name"] == "demo-api")
    env = {v["name"] for v in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "POSTGRES_HOST" in env  # the contributed env reaches the app containers


def test_decide_reports_an_invalid_spec() -> None:
    decision = decide(body({"components": {"api": {"replicas": "two"}}}), StaticObserved(), [], lambda k: None,
                      lambda inst: [], NOW)  # fmt: skip
    assert decision.instance is None and decision.problems[0].reason == "InvalidSpec"
    assert "spec.components.api.replicas" in decision.problems[0].message


def _retired_frontend(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployment and Service ``demo-frontend`` as an operator before the console made them: named,
    labelled and owned like the api's (their ownerReference is the same ApeRAG's)."""
    out = []
    for kind in ("Deployment", "Service"):
        obj = copy.deepcopy(next(o for o in children if o["kind"] == kind and o["metadata"]["name"] == "demo-api"))
        obj["metadata"]["name"] = "demo-frontend"
        obj["metadata"]["labels"]["app.kubernetes.io/component"] = "frontend"
        obj["metadata"]["resourceVersion"] = "1"
        out.append(obj)
    return out


def test_an_object_written_under_the_old_crd_is_reconciled_and_its_frontend_pruned() -> None:
    """Objects stored under the CRD that had the frontend carry its defaults (components.frontend,
    image.frontendRepository) until the new CRD is installed (Helm never upgrades crds/). The spec model
    forbids unknown fields, but these retired ones are ignored, and the frontend's children pruned."""
    old = body({
        "image": {"repository": "registry.local/aperag", "frontendRepository": "ghcr.io/apecloud/aperag-frontend"},
        "components": {"api": {"replicas": 3}, "frontend": {"enabled": True, "replicas": 1}},
    })  # fmt: skip
    before = copy.deepcopy(old)
    leftovers = _retired_frontend(desired_children(instance()))
    decision = decide(old, StaticObserved(), [], lambda k: None, lambda inst: leftovers, NOW)
    assert not decision.problems and decision.instance is not None
    assert decision.instance.spec.components.api.replicas == 3
    assert decision.instance.spec.image.repository == "registry.local/aperag"
    assert old == before  # the body (the informer's cached object) is not modified
    assert {k for k in decision.plan.delete if k[2] == "demo-frontend"} == {
        ("apps/v1/Deployment", "team-a", "demo-frontend"),
        ("v1/Service", "team-a", "demo-frontend"),
    }
    assert not any(o["metadata"]["name"] == "demo-frontend" for o in decision.plan.desired)


def test_only_the_retired_fields_are_ignored() -> None:
    """Anything else the model does not know is still an invalid spec (a typo is not silently dropped)."""
    decision = decide(body({"components": {"frontnd": {"enabled": False}}}), StaticObserved(), [],
                      lambda k: None, lambda inst: [], NOW)  # fmt: skip
    assert decision.instance is None and decision.problems[0].reason == "InvalidSpec"
    assert "spec.components.frontnd" in decision.problems[0].message


class Recorder:
    """A contributor that records what it was shown."""

    def __init__(self, name: str, requires: tuple[str, ...] = (), requeue_after: float | None = None) -> None:
        self.name = name
        self.requires = requires
        self.watched_kinds: tuple[Kind, ...] = ()
        self.owned_kinds: tuple[Kind, ...] = ()
        self.requeue = requeue_after
        self.seen: list[str] = []

    def secret_names(self, _instance: Any) -> frozenset[str]:
        return frozenset()

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        self.seen = sorted(upstream)
        return Contribution(requeue_after=self.requeue)


def test_contributors_see_only_what_they_require_and_run_after_it() -> None:
    a, b, c = Recorder("a", requeue_after=30), Recorder("b", ("a",), requeue_after=5), Recorder("c")
    order = ordered([b, c, a])
    assert [x.name for x in order].index("a") < [x.name for x in order].index("b")
    decision = decide(body(), StaticObserved(states={KUBEBLOCKS_CLUSTER.type_path: KindState.LISTED}), order,
                      lambda k: None, lambda inst: [], NOW)  # fmt: skip
    assert b.seen == ["a"] and a.seen == [] and c.seen == []
    assert decision.requeue_after == 5


def test_contributor_cycles_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        ordered([Recorder("a", ("b",)), Recorder("b", ("a",))])
    with pytest.raises(ValueError, match="unknown"):
        ordered([Recorder("a", ("zzz",))])
