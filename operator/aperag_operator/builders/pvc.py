"""PersistentVolumeClaim ``<name>-objects``: the ReadWriteMany volume shared by api and workers when
``spec.objectStorage.type`` is ``local``. It replaces upstream's hostPath plus required pod affinity.

It holds the uploaded documents, so by default (deletionPolicy Retain) it carries no owner reference:
deleting the ApeRAG, or moving objectStorage to S3, keeps it (the object-storage contributor says so
in the status). With Delete it is owned, and goes with the resource.
"""

from __future__ import annotations

from aperag_operator.builders.common import Instance, Obj, child_name, finalize, labels, owner_reference

COMPONENT = "objects"


def name(inst: Instance) -> str:
    return child_name(inst, COMPONENT)


def wanted(inst: Instance) -> bool:
    return inst.spec.object_storage.type == "local"


def build(inst: Instance) -> Obj:
    local = inst.spec.object_storage.local
    metadata: Obj = {"name": name(inst), "namespace": inst.namespace, "labels": labels(inst, COMPONENT)}
    if local.deletion_policy == "Delete":
        metadata["ownerReferences"] = [owner_reference(inst)]
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": local.storage_class_name,
                "resources": {"requests": {"storage": str(local.size)}},
            },
        }
    )
