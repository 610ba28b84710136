"""Every command the operator puts in a pod that runs the app image exists in that image: the test reads
the containers of every child the builders make (Deployments today, Jobs and CronJobs when they exist)
for an ApeRAG with every component on, and runs each command with ``--help`` in the image, with the
pod's user, read-only root and tmpfs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aperag_operator.builders.common import APP_UID

from images.build import BuiltImage
from images.containers import podman
from tests.images.pod_runner import Containers, Objects, Pods, container_run, instance_with_databases

ALL_COMPONENTS_ON = {"components": {"beat": {"enabled": True}, "flower": {"enabled": True}}}


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs of a workload of any kind (Deployment, StatefulSet, Job, CronJob...)."""
    spec = obj.get("spec", {})
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template", {}).get("spec")
    if template is not None:
        yield template


def test_every_command_of_the_app_pods_exists_in_the_image(
    built_images: dict[str, BuiltImage], tmp_path: Path
) -> None:
    inst = instance_with_databases(5432, "aperag", 6379, **ALL_COMPONENTS_ON)
    secrets = {"pg-credentials": {"username": "u", "password": "p"}, "api-keys": {"apiKeys": "k"}}
    pods = Pods(inst, Objects(secrets=secrets), tmp_path)
    app = built_images["app"]
    checked: dict[str, list[str]] = {}
    containers = Containers("aperag-command-test")
    for child in pods.children:
        for pod_spec in pod_specs(child):
            for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
                # Every pod the operator runs is the app image (the API serves the console; no frontend).
                assert container["image"] == app.ref, f"{child['kind']}/{container['name']}: {container['image']}"
                run = container_run(pod_spec, container, pods.objects, pods.claims)
                run.args = [*run.args, "--help"]
                result = containers.run(run, suffix=container["name"], image=app.image_id, timeout=120)
                command = [*container.get("command", []), *container.get("args", [])]
                assert result.returncode == 0, f"{command} --help failed in the image:\n{result.stderr[-3000:]}"
                assert "usage" in result.stdout.lower(), result.stdout
                checked[f"{child['kind']}/{container['name']}"] = command
    # The app components the operator runs: none may be missed by the walk above.
    assert {"Deployment/api", "Deployment/worker", "Deployment/beat", "Deployment/flower"} <= set(checked), checked


def test_the_images_carry_no_build_tools_and_run_as_uid_1000(built_images: dict[str, BuiltImage]) -> None:
    for kind, built in built_images.items():
        config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", built.image_id).stdout)
        assert config["User"] == f"{APP_UID}:{APP_UID}", kind
        env = dict(item.split("=", 1) for item in config["Env"])
        if kind == "app":
            assert env["HF_HUB_OFFLINE"] == "1"
        # No pip in the venv, no compilers, no pip cache, nothing left of the build under /tmp.
        found = podman(
            "run", "--rm", "--pull", "never", "--network", "host", "--entrypoint", "sh", built.image_id, "-c",
            "command -v pip pip3 gcc cc c++ make; find / -xdev -path '*/.cache/pip' 2>/dev/null; ls -A /tmp",
            check=False,
        )  # fmt: skip
        assert found.stdout.strip() == "", f"{kind}: {found.stdout}"
