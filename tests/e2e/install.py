"""Installing the operator as users do (the Helm chart, manifests/install.yaml) and running it as its
Deployment says: the Deployment's own arguments, with a token of the ServiceAccount the install created.

The cluster's nodes are kwok's, so the operator's pod "runs" without a container; the tests run the
operator process themselves (from source) with exactly the pod's arguments and credentials. Only the
liveness URL is moved to a free port on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from charts import render
from tests.e2e.conftest import OperatorProcess, kget, start_operator
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until


def helm(cluster: Cluster, *args: str, check: bool = True) -> str:
    """The control plane's helm against the test cluster (admin credentials); its stdout."""
    result = render.helm(*args, "--kubeconfig", str(cluster.kubeconfig), check=False, env=cluster.env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig holding a fresh token of the ServiceAccount namespace/name (as its pod would get)."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": name}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


async def rolled_out(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """The Deployment once its current template runs (one updated, available replica and no other pod)."""

    def done() -> dict[str, Any] | None:
        dep = kget(cluster, namespace, "deployment", name)
        if dep is None:
            return None
        st = dep.get("status") or {}
        if st.get("observedGeneration") != dep["metadata"]["generation"]:
            return None
        if (st.get("updatedReplicas"), st.get("availableReplicas"), st.get("replicas")) != (1, 1, 1):
            return None
        return dep

    result: dict[str, Any] = await wait_until(done, timeout=timeout, what=f"deployment {namespace}/{name} rolled out")
    return result


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def start_as_deployment(
    cluster: Cluster, deployment: dict[str, Any], log_path: Path, kubeconfig: Path
) -> OperatorProcess:
    """``python -m aperag_operator`` with the Deployment's arguments and the given credentials.

    start_operator adds ``--liveness`` (a free port on 127.0.0.1), ``--resync-interval 2`` and
    ``--log-level debug`` after them (the tests count reconciles in the debug log; later flags win)."""
    args = operator_container(deployment)["args"]
    assert args[0] == "run", args
    scope = tuple(a for a in args[1:] if not a.startswith("--liveness"))
    return start_operator(cluster, log_path, *scope, kubeconfig=kubeconfig)


async def wait_probes_pass(operator: OperatorProcess, deployment: dict[str, Any], timeout: float = 60) -> None:
    """Waits until the paths of the Deployment's liveness and readiness probes answer 200."""
    container = operator_container(deployment)
    paths = [container[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")]

    def passing() -> bool:
        if operator.proc.poll() is not None:
            raise AssertionError(f"operator exited with {operator.proc.returncode}:\n{operator.logs()[-5000:]}")
        return all(operator.probe(path)[0] == 200 for path in paths)

    await wait_until(passing, timeout=timeout, what=f"the operator's {' and '.join(paths)} answering 200")


def problem_lines(logs: str) -> list[str]:
    """The operator's warning and error log lines (its logs are JSON, one object a line)."""
    problems = []
    for line in logs.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(line)  # not JSON: a traceback or a crash, worth seeing
            continue
        if record.get("severity") in ("warning", "error", "critical"):
            problems.append(record.get("message", line))
    return problems


def denied_lines(logs: str) -> list[str]:
    """Warnings and errors about a refused request. A cluster-wide operator may also meet the namespaces
    of earlier tests while they are deleted: a write there is refused (403) for that reason, not for a
    missing rule, so those lines do not count."""
    return [
        line for line in problem_lines(logs)
        if ("403" in line or "forbidden" in line.lower()) and "because it is being terminated" not in line
    ]  # fmt: skip


def dump_log_on_failure(operator: OperatorProcess) -> None:
    sys.stderr.write(f"\n--- operator log ({operator.log_path}) ---\n{operator.logs()[-20000:]}\n")
