"""The test webhook that places labelled pods on the real node (tests/harness/realnode.py), on the pods the
operator's builders generate; the pause image archive the real node imports; and what `up --real-node`
says on a machine that cannot run it (before starting anything)."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aperag_operator.builders import deployment, migration_job
from aperag_operator.builders.common import Instance, target_release
from aperag_operator.builders.database_env import build_database_env
from aperag_operator.spec.model import parse_spec

from e2e.controlplane import localcluster, realnode
from e2e.controlplane.realnode import NODE_LABEL, TAINT, pause_image_archive
from tests.harness.realnode import (
    PLACE_LABEL,
    PORTS_ANNOTATION,
    PlacementRefused,
    PortAllocator,
    place,
    pod_port,
    review_response,
)

SPEC = {
    "version": "1.0.0",
    "components": {"api": {"podLabels": {PLACE_LABEL: "true"}}, "worker": {"podLabels": {PLACE_LABEL: "true"}}},
    "databases": {
        "postgresql": {
            "external": {"host": "127.0.0.1", "database": "aperag", "credentialsSecretRef": {"name": "pg"}}
        },
        "redis": {"external": {"host": "127.0.0.1", "port": 6379}},
    },
}


def _inst() -> Instance:
    return Instance("rag", "ns", "uid-1", parse_spec(SPEC))


def _pod(component: str) -> dict[str, Any]:
    inst = _inst()
    built = deployment.build(inst, component, build_database_env("rag", inst.spec.databases))
    template = built["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": dict(template["metadata"]), "spec": template["spec"]}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_api_pod_gets_the_real_node_host_networking_and_a_port_of_its_own() -> None:
    original = _pod("api")
    ports = PortAllocator()
    placed, given = place(original, ports)
    spec = placed["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    assert spec["nodeSelector"][NODE_LABEL] == "true"
    assert {**TAINT, "operator": "Equal"} in spec["tolerations"]
    (container,) = spec["containers"]
    port = container["ports"][0]
    assert port["containerPort"] == port["hostPort"] == given["api/http"] != 8000
    env = _env(container)
    assert env["APERAG_PORT"] == str(port["containerPort"]) and env["APERAG_HOST"] == "127.0.0.1"
    # The probes name the port, so they follow it; they ask 127.0.0.1.
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http", "host": "127.0.0.1"}
    # The documents volume (a PVC kwok would bind to a hostPath) becomes an emptyDir.
    objects = next(v for v in spec["volumes"] if v["name"] == "objects")
    assert objects == {"name": "objects", "emptyDir": {}}
    # The original is untouched, and a second pod gets another port.
    assert original["spec"]["containers"][0]["ports"][0]["containerPort"] == 8000
    _, again = place(original, ports)
    assert again["api/http"] != given["api/http"]


def test_the_worker_health_port_moves_through_health_port() -> None:
    placed, given = place(_pod("worker"), PortAllocator())
    (container,) = placed["spec"]["containers"]
    assert _env(container)["HEALTH_PORT"] == str(given["worker/http"])


def test_a_migration_pod_keeps_its_command_and_only_gains_placement() -> None:
    spec = {**SPEC, "upgrade": {"migrationJob": {"podLabels": {PLACE_LABEL: "true"}}}}
    inst = Instance("rag", "ns", "uid-1", parse_spec(spec))
    request = migration_job.request("rag", "upgrade", target_release(inst.spec), "head", 1)
    job = migration_job.build(inst, request, build_database_env("rag", inst.spec.databases))
    template = job["spec"]["template"]
    placed, given = place({"metadata": template["metadata"], "spec": template["spec"]}, PortAllocator())
    (container,) = placed["spec"]["containers"]
    assert given == {} and container["command"] == ["aperag", "migrate", "upgrade", "head"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert placed["spec"]["hostNetwork"] is True and placed["spec"]["restartPolicy"] == "Never"


def test_a_port_the_webhook_cannot_move_is_refused() -> None:
    pod = _pod("api")
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = 9999
    with pytest.raises(PlacementRefused, match="port 9999"):
        place(pod, PortAllocator())
    review = {"request": {"uid": "u1", "object": pod}}
    response = review_response(review, PortAllocator())["response"]
    assert response["allowed"] is False and "9999" in response["status"]["message"]


def test_the_admission_response_is_a_json_patch_recording_the_ports() -> None:
    pod = _pod("api")
    response = review_response({"request": {"uid": "u2", "object": pod}}, PortAllocator())["response"]
    assert response["uid"] == "u2" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    spec = next(op["value"] for op in patch if op["path"] == "/spec")
    annotations = next(op["value"] for op in patch if op["path"] == "/metadata/annotations")
    placed = {"metadata": {"annotations": annotations}, "spec": spec}
    assert pod_port(placed) == spec["containers"][0]["ports"][0]["containerPort"]
    assert PORTS_ANNOTATION in annotations and spec["hostNetwork"] is True


def test_the_pause_image_archive_is_a_valid_oci_layout(tmp_path: Path) -> None:
    binary = tmp_path / "pause-abc123" / "pause"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF pretend")
    archive, name = pause_image_archive(binary)
    assert name == "localhost/aperag-pause:abc123"
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == name
    for blob_name, blob in files.items():
        if blob_name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == blob_name.rsplit("/", 1)[1]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert pause_image_archive(binary) == (archive, name)  # written once


def test_a_machine_that_cannot_run_the_node_is_told_why_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(realnode, "RUNC", str(tmp_path / "no-runc"))
    problems = realnode.preflight()
    assert any("not running as root" in p for p in problems)
    assert any("no-runc missing" in p for p in problems)

    def no_build(**_: object) -> Path:
        raise AssertionError("nothing may be built or started")

    monkeypatch.setattr(localcluster, "build_binaries", no_build)
    with pytest.raises(realnode.RealNodeUnavailable, match="not running as root"):
        localcluster.up(tmp_path / "state", real_node=True)
    assert not (tmp_path / "state" / "cluster.json").exists()
