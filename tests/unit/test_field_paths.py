"""An apply the API server refuses is reported with the spec field the user wrote."""

from __future__ import annotations

from aperag_operator.builders import deployment, pvc
from aperag_operator.field_paths import describe, spec_field

from .helpers import instance


def test_deployment_fields_map_to_the_component_spec() -> None:
    api = deployment.build(instance(), "api")
    container = "spec.template.spec.containers[0]"
    assert spec_field(api, f"{container}.resources.requests") == "spec.components.api.resources.requests"
    assert spec_field(api, "spec.template.spec.nodeSelector") == "spec.components.api.nodeSelector"
    assert (
        spec_field(api, "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution")
        == "spec.components.api.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    )
    assert spec_field(api, "spec.template.metadata.labels") == "spec.components.api.podLabels"
    assert spec_field(api, f"{container}.volumeMounts[1].mountPath") == "spec.objectStorage.local.mountPath"
    assert spec_field(api, "spec.selector") is None  # the operator's own field


def test_the_message_names_both_fields() -> None:
    worker = deployment.build(instance(), "worker")
    text = describe(worker, (("spec.template.spec.containers[0].resources.requests[cpu]", "must be positive"),), "x")
    assert text.startswith("spec.components.worker.resources.requests[cpu] (in Deployment demo-worker")
    assert text.endswith(": must be positive")
    claim = pvc.build(instance())
    assert "spec.objectStorage.local.size" in describe(claim, (("spec.resources.requests.storage", "shrink"),), "x")
    assert describe(claim, (), "Forbidden") == "PersistentVolumeClaim demo-objects: Forbidden"
