"""PersistentVolumeClaim ``<name>-objects``: the ReadWriteMany volume shared by api and workers when
``spec.objectStorage.type`` is ``local``. It replaces upstream's hostPath plus required pod affinity."""

from __future__ import annotations

from aperag_operator.builders.common import Instance, Obj, child_name, finalize, metadata


def name(inst: Instance) -> str:
    return child_name(inst, "objects")


def wanted(inst: Instance) -> bool:
    return inst.spec.object_storage.type == "local"


def build(inst: Instance) -> Obj:
    local = inst.spec.object_storage.local
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata(inst, name(inst), "objects"),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": local.storage_class_name,
                "resources": {"requests": {"storage": str(local.size)}},
            },
        }
    )
