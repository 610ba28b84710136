"""Upgrading from the operator that ran a separate frontend (upstream's frontend image, ``<name>-frontend``
Deployment and Service, ``spec.components.frontend``) to the one whose API serves the web console.

* The old frontend's children are owned and labelled like every other child: the new operator deletes
  them on its first reconcile, and touches nothing else.
* Objects stored under the old CRD carry the old CRD's defaults (``components.frontend``,
  ``image.frontendRepository``). While that CRD is still installed (Helm never upgrades ``crds/``) the new
  operator reconciles them anyway; once the new CRD is installed the API server prunes the fields on read
  and strict field validation refuses an apply that still sets them, naming the field.

Against the real control plane, with the operator process and the simulated KubeBlocks controller.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aperag_operator.spec.model import parse_spec

from tests.e2e.conftest import CRD_FILE, OperatorProcess, apply_yaml, kget, kubeblocks_simulator, start_operator
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle, wait_ready, writes
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

FRONTEND_IMAGE = "ghcr.io/apecloud/aperag-frontend"
FRONTEND_PORT = 3000
#: Server-set metadata dropped before an object read back is applied again as a new one.
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


@pytest.fixture(autouse=True)
def kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    """The default databases are managed KubeBlocks Clusters: run the simulated KubeBlocks controller."""
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == [], f"the KubeBlocks simulator failed: {errors}"


@asynccontextmanager
async def running_operator(cluster: Cluster, namespace: str, log: Path) -> AsyncIterator[OperatorProcess]:
    """An operator process watching ``namespace``, synced; its log is printed when the block fails."""
    op = start_operator(cluster, log, "--namespace", namespace)
    try:
        await wait_until(op.synced, timeout=60, what=f"operator ({log.name}) listed everything")
        yield op
    except BaseException:
        sys.stderr.write(f"\n--- operator log ({log}) ---\n{op.logs()[-20000:]}\n")
        raise
    finally:
        op.stop()


def _as_new(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """``obj`` as read back, renamed to ``name`` with component frontend, without what the server sets and
    the status. Labels, annotations and ownerReferences stay the api's (the spec-hash annotation's value does
    not matter: nothing compares it for an object that is not desired)."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out["metadata"]
    for field in SERVER_FIELDS:
        meta.pop(field, None)
    meta["name"] = name
    meta["labels"]["app.kubernetes.io/component"] = "frontend"
    meta.get("annotations", {}).pop("deployment.kubernetes.io/revision", None)
    return out


def old_frontend_children(api_deployment: dict[str, Any], api_service: dict[str, Any]) -> list[dict[str, Any]]:
    """The Deployment and Service ``<name>-frontend`` exactly as the old operator made them: its labels and
    ownerReference (the api's, with component frontend), upstream's frontend image on port 3000, nginx's
    writable directories, probes on /."""
    name = api_deployment["metadata"]["name"].removesuffix("-api") + "-frontend"
    dep = _as_new(api_deployment, name)
    spec = dep["spec"]
    spec["replicas"] = 1
    spec["selector"]["matchLabels"]["app.kubernetes.io/component"] = "frontend"
    template = spec["template"]
    template["metadata"]["labels"]["app.kubernetes.io/component"] = "frontend"
    template["metadata"].get("annotations", {}).pop("aperag.io/config-hash", None)
    pod = template["spec"]
    api_container = pod["containers"][0]
    version = api_deployment["metadata"]["labels"]["app.kubernetes.io/version"]
    dirs = ["/tmp", "/var/cache/nginx", "/var/run"]
    pod["volumes"] = [{"name": "tmp" if i == 0 else f"scratch-{i}", "emptyDir": {"sizeLimit": "1Gi"}}
                      for i in range(len(dirs))]  # fmt: skip
    pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "labelSelector"]["matchLabels"]["app.kubernetes.io/component"] = "frontend"  # fmt: skip
    probe = {"httpGet": {"path": "/", "port": "http"}, "timeoutSeconds": 5, "failureThreshold": 3}
    pod["containers"] = [{
        "name": "frontend",
        "image": f"{FRONTEND_IMAGE}:{version}",
        "imagePullPolicy": api_container["imagePullPolicy"],
        "env": [{"name": "APERAG_API_URL", "value": f"http://{api_service['metadata']['name']}:8000"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": api_container["securityContext"],
        "volumeMounts": [{"name": v["name"], "mountPath": d} for v, d in zip(pod["volumes"], dirs, strict=True)],
        "ports": [{"name": "http", "containerPort": FRONTEND_PORT, "protocol": "TCP"}],
        "livenessProbe": {**probe, "periodSeconds": 10},
        "readinessProbe": {**probe, "periodSeconds": 5},
    }]  # fmt: skip
    svc = _as_new(api_service, name)
    svc["spec"] = {
        "type": "ClusterIP",
        "selector": dep["spec"]["selector"]["matchLabels"],
        "ports": [{"name": "http", "port": FRONTEND_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return [dep, svc]


def apply_as_the_old_operator(cluster: Cluster, obj: dict[str, Any], *args: str) -> None:
    """Server-side apply under the operator's field manager, as the old operator applied its children."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-operator", *args,
                    "-f", "-", input=json.dumps(obj))  # fmt: skip


async def test_the_old_frontend_is_deleted_on_the_first_reconcile_after_the_upgrade(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    apply_yaml(cluster, manifest("rag", namespace))
    await wait_ready(cluster, namespace, "rag")
    await wait_idle(operator, namespace, "rag")
    api_dep = kget(cluster, namespace, "deployment", "rag-api")
    api_svc = kget(cluster, namespace, "service", "rag-api")
    assert api_dep is not None and api_svc is not None

    # The old operator stops; what it made is there: the frontend's Deployment and Service, owned and
    # labelled like the api's, and its status naming the frontend among the components.
    operator.stop()
    dep, svc = old_frontend_children(api_dep, api_svc)
    assert dep["metadata"]["ownerReferences"] == api_dep["metadata"]["ownerReferences"]
    for obj in (dep, svc):
        apply_as_the_old_operator(cluster, obj)
    old_status = copy.deepcopy(status(cluster, namespace, "rag"))
    old_status["components"]["frontend"] = {"desired": 1, "ready": 1, "updated": 1, "available": 1, "isReady": True}
    apply_as_the_old_operator(cluster, {
        "apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG",
        "metadata": {"name": "rag", "namespace": namespace}, "status": old_status,
    }, "--subresource=status")  # fmt: skip
    await wait_until(
        lambda: (kget(cluster, namespace, "deployment", "rag-frontend") or {}).get("status", {}).get("readyReplicas"),
        timeout=60,
        what="the old frontend's pod ready (a real leftover, not an empty Deployment)",
    )
    assert "frontend" in status(cluster, namespace, "rag")["components"]
    api_before = kget(cluster, namespace, "deployment", "rag-api")
    assert api_before is not None

    # The new operator starts: its first reconcile deletes the frontend's children, and nothing else.
    since = time.time()
    async with running_operator(cluster, namespace, tmp_path / "upgraded.log") as upgraded:
        await wait_until(
            lambda: (
                kget(cluster, namespace, "deployment", "rag-frontend") is None
                and kget(cluster, namespace, "service", "rag-frontend") is None
            ),
            timeout=30,
            what="the old frontend's Deployment and Service deleted",
        )
        await wait_until(
            lambda: "frontend" not in status(cluster, namespace, "rag").get("components", {}),
            timeout=30,
            what="the frontend gone from status.components",
        )
        await wait_idle(upgraded, namespace, "rag")
        assert cond(cluster, namespace, "rag", "Ready")["status"] == "True"
    done = writes(cluster, namespace, since)
    assert "delete deployments/rag-frontend" in done and "delete services/rag-frontend" in done, done
    # The api is untouched: not one write to its Deployment or Service, the same object, the same spec.
    assert not [w for w in done if re.search(r"/rag-api(/|$)", w)], done
    api_after = kget(cluster, namespace, "deployment", "rag-api")
    assert api_after is not None
    for field in ("uid", "generation", "labels", "annotations", "ownerReferences"):
        assert api_after["metadata"].get(field) == api_before["metadata"].get(field), field
    assert api_after["spec"] == api_before["spec"]
    assert (kget(cluster, namespace, "service", "rag-api") or {}).get("metadata", {}).get("uid") == (
        api_svc["metadata"]["uid"])  # fmt: skip


# --- the CRD ------------------------------------------------------------------------------------------


def old_crd() -> dict[str, Any]:
    """The CRD as the frontend's operator had it: the current one plus the retired fields, declared and
    defaulted as that CRD did (``components.frontend``: a workload enabled by default with one replica;
    ``image.frontendRepository``: upstream's frontend image)."""
    crd: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    components = spec["components"]["properties"]
    assert "frontend" not in components and "frontendRepository" not in spec["image"]["properties"]
    frontend = copy.deepcopy(components["flower"])
    frontend["description"] = "The web frontend."
    frontend["properties"]["enabled"] = {"type": "boolean", "default": True, "description": "Run the web frontend."}
    frontend["properties"]["replicas"] = {"type": "integer", "default": 1, "minimum": 0, "maximum": 1000,
                                          "description": "Number of frontend pods."}  # fmt: skip
    components["frontend"] = frontend
    repository = copy.deepcopy(spec["image"]["properties"]["repository"])
    repository.update(default=FRONTEND_IMAGE, description="Image repository of the web frontend.")
    spec["image"]["properties"]["frontendRepository"] = repository
    return crd


def install_crd(cluster: Cluster, crd: dict[str, Any]) -> None:
    """Replaces the session's ApeRAG CRD (the same field manager as the ``aperag_crd`` fixture, so what is
    left out is removed)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-f", "-",
                    input=json.dumps(crd))  # fmt: skip
    cluster.wait_established("aperags.aperag.io")


def spec_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = (kget(cluster, namespace, "aperag", name) or {})["spec"]
    return spec


def apply_strict(cluster: Cluster, obj: dict[str, Any], *args: str) -> Any:
    return cluster.kubectl("apply", "--server-side", "--validate=strict", "--field-manager=aperag-tests",
                           *args, "-f", "-", input=json.dumps(obj), check=False)  # fmt: skip


async def test_the_retired_fields_across_the_crd_upgrade(
    cluster: Cluster, aperag_crd: str, namespace: str, operator: OperatorProcess
) -> None:
    current = yaml.safe_load(CRD_FILE.read_text())
    install_crd(cluster, old_crd())
    try:
        # Stored under the old CRD: its defaults put the frontend's fields into the object.
        apply_yaml(cluster, manifest("old", namespace))
        stored = spec_of(cluster, namespace, "old")
        assert stored["components"]["frontend"] == {"enabled": True, "replicas": 1}
        assert stored["image"]["frontendRepository"] == FRONTEND_IMAGE
        # The operator is upgraded before the CRD: it reconciles the object (its model ignores exactly the
        # retired fields) and runs no frontend.
        assert parse_spec(stored).components.api.replicas == 2
        await wait_ready(cluster, namespace, "old")
        assert cond(cluster, namespace, "old", "Degraded")["status"] == "False"
        assert kget(cluster, namespace, "deployment", "old-frontend") is None
        assert "frontend" not in status(cluster, namespace, "old")["components"]

        # The new CRD: the API server prunes the retired fields from the stored object on every read.
        install_crd(cluster, current)

        def pruned() -> bool:
            spec = spec_of(cluster, namespace, "old")
            return "frontend" not in spec["components"] and "frontendRepository" not in spec["image"]

        await wait_until(pruned, timeout=30, what="the retired fields pruned from the stored object on read")
        # Strict field validation refuses a manifest that still sets them, naming each field.
        body = json.loads(manifest("old", namespace, {
            "image": {"frontendRepository": FRONTEND_IMAGE},
            "components": {"frontend": {"enabled": False}},
        }))  # fmt: skip

        def refused() -> Any:
            result = apply_strict(cluster, body, "--dry-run=server")
            return result if result.returncode != 0 else None

        result = await wait_until(refused, timeout=30, what="the new schema in force (the dry run refused)")
        for field in ("spec.components.frontend", "spec.image.frontendRepository"):
            assert f".{field}: field not declared in schema" in result.stderr, result.stderr
        result = apply_strict(cluster, body)
        assert result.returncode != 0 and ".spec.components.frontend: field not declared in schema" in result.stderr
        # A create (not an apply) is refused the same way by the strict decoder.
        created = cluster.kubectl("create", "--validate=strict", "-f", "-", check=False, input=json.dumps(
            {**body, "metadata": {"name": "created", "namespace": namespace}}))  # fmt: skip
        assert created.returncode != 0
        assert 'unknown field "spec.components.frontend"' in created.stderr, created.stderr
        assert kget(cluster, namespace, "aperag", "created") is None
        # Nothing was written by the refused applies; the ApeRAG still reconciles, Ready.
        assert "frontend" not in spec_of(cluster, namespace, "old")["components"]
        await wait_idle(operator, namespace, "old")
        assert cond(cluster, namespace, "old", "Ready")["status"] == "True"
    finally:
        install_crd(cluster, current)
