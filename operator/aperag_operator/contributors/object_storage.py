"""Where uploaded documents live, as a contributor: the shared volume (type local) and its retention.

The ``<name>-objects`` claim holds users' documents, so the operator never deletes it on its own
initiative: with deletionPolicy Retain (the default) a claim the spec no longer uses (objectStorage
moved to S3) is kept and reported in ``status.objectStorage``; with Delete it is deleted. Either way
the status says what happened to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aperag_operator.builders import pvc
from aperag_operator.builders.common import Instance
from aperag_operator.cache import owner_of
from aperag_operator.contributors.base import Context, Contribution
from aperag_operator.kinds import PERSISTENT_VOLUME_CLAIM, Kind, key

NAME = "objectStorage"


class ObjectStorageContributor:
    name = NAME
    requires: tuple[str, ...] = ()
    watched_kinds: tuple[Kind, ...] = (PERSISTENT_VOLUME_CLAIM,)
    owned_kinds: tuple[Kind, ...] = ()  # deleted only by the rule below, never by generic pruning

    def secret_names(self, instance: Instance) -> frozenset[str]:
        return frozenset()

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        inst = context.instance
        storage = inst.spec.object_storage
        claim_name = pvc.name(inst)
        existing = context.observed.get(PERSISTENT_VOLUME_CLAIM, claim_name)
        policy = storage.local.deletion_policy
        status: dict[str, Any] = {"type": storage.type}
        if pvc.wanted(inst):
            status.update({"claim": claim_name, "deletionPolicy": policy})
            return Contribution(children=(pvc.build(inst),), status={"objectStorage": status})
        if existing is None:
            return Contribution(status={"objectStorage": status})
        owned = owner_of(existing) == (inst.namespace, inst.name)
        if policy == "Delete" and owned:
            status["message"] = f"PersistentVolumeClaim {claim_name} is no longer used and is being deleted"
            return Contribution(status={"objectStorage": status}, deletions=(key(existing),))
        status.update(
            {
                "retainedClaim": claim_name,
                "message": f"PersistentVolumeClaim {claim_name} is no longer used and was kept (deletionPolicy "
                "Retain): it holds the documents uploaded while objectStorage was local; delete it when "
                "they are no longer needed",
            }
        )
        # Still applied, without owner reference: a claim an earlier policy or operator version left
        # owned would otherwise go with the resource.
        return Contribution(children=(pvc.build(inst),), status={"objectStorage": status})
