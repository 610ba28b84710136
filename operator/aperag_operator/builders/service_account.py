"""ServiceAccount ``<name>``: the identity of every pod; it needs no API access, so no token is mounted."""

from __future__ import annotations

from aperag_operator.builders.common import Instance, Obj, child_name, finalize, metadata


def build(inst: Instance) -> Obj:
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(inst, child_name(inst), "service-account"),
            "automountServiceAccountToken": False,
        }
    )
