"""The documents volume is never deleted unless its policy says so, and the status says what happened."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aperag_operator.builders import pvc
from aperag_operator.contributors.base import Context
from aperag_operator.contributors.object_storage import ObjectStorageContributor
from aperag_operator.kinds import PERSISTENT_VOLUME_CLAIM

from .helpers import instance
from .observed import StaticObserved

S3 = {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "s3"}}}


def contribute(spec: dict[str, Any], claim: dict[str, Any] | None) -> Any:
    observed = StaticObserved()
    if claim is not None:
        observed.add(PERSISTENT_VOLUME_CLAIM, claim)
    context = Context(instance=instance(spec), annotations={}, status={}, paused=False, observed=observed,
                      now=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    return ObjectStorageContributor().contribute(context, {})


def test_local_storage_wants_its_claim() -> None:
    result = contribute({}, None)
    assert [c["kind"] for c in result.children] == ["PersistentVolumeClaim"]
    assert result.status["objectStorage"] == {"type": "local", "claim": "demo-objects", "deletionPolicy": "Retain"}


def test_moving_to_s3_keeps_the_claim_by_default_and_says_so() -> None:
    old_claim = pvc.build(instance({"objectStorage": {"local": {"deletionPolicy": "Delete"}}}))  # owned
    result = contribute({"objectStorage": S3}, old_claim)
    assert result.deletions == ()
    # applied again without owner reference, so deleting the ApeRAG later does not take it either
    assert "ownerReferences" not in result.children[0]["metadata"]
    storage = result.status["objectStorage"]
    assert storage["type"] == "s3" and storage["retainedClaim"] == "demo-objects" and "kept" in storage["message"]


def test_delete_policy_deletes_the_unused_claim() -> None:
    spec = {"objectStorage": {**S3, "local": {"deletionPolicy": "Delete"}}}
    owned = pvc.build(instance(spec))
    result = contribute(spec, owned)
    assert result.deletions == (("v1/PersistentVolumeClaim", "team-a", "demo-objects"),)
    assert result.children == ()


def test_nothing_to_say_without_a_claim() -> None:
    assert contribute({"objectStorage": S3}, None).status["objectStorage"] == {"type": "s3"}
