"""needs_apply: apply only when the observed object differs from the desired one."""

from __future__ import annotations

import copy
from decimal import Decimal

from aperag_operator.builders import deployment, service
from aperag_operator.diff import is_subset, needs_apply, parse_quantity

from .helpers import instance


def observed_from(desired: dict) -> dict:  # type: ignore[type-arg]
    """What the API server returns: the object plus defaults and server fields."""
    obs = copy.deepcopy(desired)
    obs["metadata"].update({"uid": "x", "resourceVersion": "42", "generation": 1, "managedFields": []})
    obs["status"] = {"replicas": 2}
    return obs


def test_quantities() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1Gi") == parse_quantity("1024Mi")
    assert parse_quantity(2) == Decimal(2)
    assert parse_quantity("lots") is None


def test_identical_and_server_defaults_need_no_apply() -> None:
    desired = deployment.build(instance(), "api")
    obs = observed_from(desired)
    container = obs["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["ports"][0]["hostPort"] = None
    obs["spec"]["progressDeadlineSeconds"] = 600
    assert not needs_apply(desired, obs)


def test_canonicalised_quantities_need_no_apply() -> None:
    desired = deployment.build(
        instance({"components": {"api": {"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}}}}),
        "api",
    )
    obs = observed_from(desired)
    obs["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {
        "cpu": "500m",
        "memory": "1Gi",
    }
    assert not needs_apply(desired, obs)


def test_drift_is_detected() -> None:
    desired = deployment.build(instance(), "api")
    obs = observed_from(desired)
    obs["spec"]["replicas"] = 5
    assert needs_apply(desired, obs)
    obs = observed_from(desired)
    del obs["metadata"]["labels"]["app.kubernetes.io/part-of"]
    assert needs_apply(desired, obs)
    assert needs_apply(desired, None)


def test_foreign_list_entries_are_matched_by_name() -> None:
    desired = deployment.build(instance(), "api")
    obs = observed_from(desired)
    obs["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    assert not needs_apply(desired, obs)


def test_changed_desired_state_is_detected_by_hash() -> None:
    old = service.build(instance(), "api")
    obs = observed_from(old)
    new = service.build(instance({"version": "0.6.0"}), "api")
    assert needs_apply(new, obs)


def test_empty_desired_matches_missing() -> None:
    assert is_subset({"a": {}, "b": []}, {})
    assert not is_subset({"a": 1}, {})
