"""The chart's operator pod, run from the built operator image with podman as a kubelet would run it.

The chart is installed with helm; its Deployment's pod template is turned into a podman run by
pod_runner (arguments, user and group, read-only root with the emptyDir as tmpfs, dropped capabilities,
no privilege escalation, memory limit), and the container gets what the kubelet adds to every pod: the
ServiceAccount's token, the cluster's CA and the namespace in /var/run/secrets/kubernetes.io/serviceaccount,
and KUBERNETES_SERVICE_HOST/PORT. So the operator logs in with its in-cluster credentials, the chart's
ServiceAccount, and drives an ApeRAG to Ready; the Deployment's probes answer on its port.

Differences from a pod, both forced by the machine: the host's network (no pod network here), so the
health server's address in --liveness is 127.0.0.1 instead of 0.0.0.0 and the port is a free one
(the chart's healthPort value); and the token is made by ``kubectl create token`` rather than projected.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from charts import render
from images.build import BuiltImage
from tests.e2e.conftest import apply_yaml, free_port, kget, kubeblocks_simulator
from tests.e2e.install import denied_lines, helm, operator_container, rolled_out, service_account_user
from tests.e2e.test_operator_core import manifest, wait_ready
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until
from tests.images.pod_runner import Containers, Objects, container_run

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


async def test_the_chart_pod_runs_the_built_image_with_its_service_account(
    built_images: dict[str, BuiltImage],
    cluster: Cluster,
    namespace: str,
    aperag_crd: str,
    upstream_crds: list[str],
    tmp_path: Path,
) -> None:
    apps = f"chart-pod-apps-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", apps)
    release = f"aperag-operator-{uuid.uuid4().hex[:6]}"
    port = free_port()
    containers = Containers("chart-pod")
    try:
        helm(cluster, "install", release, str(render.CHART), "-n", namespace, "--set", f"healthPort={port}",
             "--wait", "--timeout", "120s")  # fmt: skip
        deployment = await rolled_out(cluster, namespace, release)
        pod_spec = deployment["spec"]["template"]["spec"]
        container = operator_container(deployment)
        # The chart's default image is the one `make images` builds.
        assert container["image"] == built_images["operator"].ref

        # What the kubelet gives every pod of the ServiceAccount.
        account = pod_spec["serviceAccountName"]
        secrets = tmp_path / "serviceaccount"
        secrets.mkdir()
        token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
        (secrets / "token").write_text(token)
        shutil.copyfile(Path(cluster.info.state_dir) / "pki" / "ca.crt", secrets / "ca.crt")
        (secrets / "namespace").write_text(namespace)
        for path in (secrets, *secrets.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the container's user, as projected
        api = urllib.parse.urlsplit(cluster.info.apiserver_url)

        # The Deployment as the API server holds it (defaults included: the termination message file too).
        run = container_run(pod_spec, container, Objects(), termination_log=tmp_path / "termination-log")
        liveness = f"--liveness=http://0.0.0.0:{port}/healthz"
        assert liveness in run.args
        run.args = [f"--liveness=http://127.0.0.1:{port}/healthz" if a == liveness else a for a in run.args]
        run.options += [
            "--volume", f"{secrets}:{SERVICE_ACCOUNT_DIR}:ro",
            "--env", f"KUBERNETES_SERVICE_HOST={api.hostname}", "--env", f"KUBERNETES_SERVICE_PORT={api.port}",
        ]  # fmt: skip
        name = containers.start(run, suffix="operator", image=built_images["operator"].image_id)

        paths = [container[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")]
        probes = [f"http://127.0.0.1:{port}{path}" for path in paths]

        def probes_pass() -> bool:
            assert containers.running(name), f"the operator container exited:\n{containers.logs(name)[-5000:]}"
            return all(status_of(url) == 200 for url in probes)

        await wait_until(probes_pass, timeout=90, what="the container's liveness and readiness probes")
        with kubeblocks_simulator(cluster, apps) as errors:
            apply_yaml(cluster, manifest("rag", apps, {"networkPolicy": {"enabled": True}}))
            await wait_ready(cluster, apps, "rag", 120)
        assert errors == []
        assert kget(cluster, apps, "deployment", "rag-api") is not None
        assert not denied_lines(containers.logs(name))
        # Its writes were made with the ServiceAccount's in-cluster credentials.
        assert cluster.audit_events(username=service_account_user(namespace, account), namespace=apps)
    except BaseException:
        for container_name, logs in containers.all_logs():
            sys.stderr.write(f"\n--- {container_name} ---\n{logs[-20000:]}\n")
        raise
    finally:
        containers.remove_all()
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
        cluster.kubectl("delete", "namespace", apps, "--wait=false", "--ignore-not-found")
