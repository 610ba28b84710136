"""The operator image: ``aperag-operator run`` in a container (the image's own non-root user, read-only
root with a tmpfs at /tmp, no capabilities, no privilege escalation, as the restricted Pod Security
Standard asks), with the operator's kubeconfig mounted and the host's network, drives an ApeRAG on
managed databases to Ready against the local API server and the simulated KubeBlocks controller."""

from __future__ import annotations

import shutil
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from images.build import BuiltImage, project_version
from images.containers import podman
from tests.e2e.conftest import apply_yaml, free_port, kget, kubeblocks_simulator
from tests.e2e.test_operator_core import manifest, wait_ready
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until
from tests.images.pod_runner import SESSION_LABEL

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

KUBECONFIG_IN_CONTAINER = "/etc/aperag-operator/kubeconfig"


def test_operator_image_user_and_version(built_images: dict[str, BuiltImage]) -> None:
    operator = built_images["operator"]
    # runAsNonRoot without runAsUser needs a numeric, non-zero user in the image.
    user = podman("image", "inspect", "--format", "{{.Config.User}}", operator.image_id).stdout.strip()
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, user
    version = podman("run", "--rm", "--pull", "never", "--network", "host", operator.image_id, "--version")
    assert version.stdout.strip() == project_version()


async def test_operator_image_drives_an_aperag_to_ready(
    built_images: dict[str, BuiltImage],
    cluster: Cluster,
    namespace: str,
    aperag_crd: str,
    upstream_crds: list[str],
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(cluster.operator_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # readable by the container's user, as a mounted ServiceAccount token is
    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    name = f"aperag-operator-image-test-{uuid.uuid4().hex[:6]}"
    podman(
        "run", "--detach", "--name", name, "--label", SESSION_LABEL, "--pull", "never", "--network", "host",
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro", "--env", f"KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
        built_images["operator"].image_id,
        "run", "--namespace", namespace, "--liveness", liveness, "--resync-interval", "2",
        timeout=120,
    )  # fmt: skip

    def logs() -> str:
        result = podman("logs", name, check=False)
        return str(result.stdout) + str(result.stderr)

    def live() -> bool:
        state = podman("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
        assert state.stdout.strip() == "true", f"operator container exited:\n{logs()[-5000:]}"
        try:
            with urllib.request.urlopen(liveness, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        await wait_until(live, timeout=90, what="the operator container's liveness endpoint")
        apply_yaml(cluster, manifest("rag", namespace))
        with kubeblocks_simulator(cluster, namespace) as errors:
            await wait_ready(cluster, namespace, "rag", 120)
        assert errors == []
        deployments = kget(cluster, namespace, "deployments") or {"items": []}
        images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments["items"]}
        assert built_images["app"].ref.replace(project_version(), "0.5.0") in images
    except BaseException:
        sys.stderr.write(f"\n--- operator container log ---\n{logs()[-20000:]}\n")
        raise
    finally:
        podman("rm", "--force", "--time", "10", name, check=False, timeout=60)
