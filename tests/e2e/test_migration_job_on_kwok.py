"""The migration Job the builder generates, on the real API server with kwok playing its pod: it is
accepted as generated (pod failure policy, security context, termination-message settings), kwok ends
its pod with the report the test chose, and the operator's parser reads the outcome back from the Job and
its pod."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aperag_operator.builders import migration_job
from aperag_operator.builders.common import Instance, Release
from aperag_operator.builders.database_env import build_database_env
from aperag_operator.spec.model import parse_spec
from aperag_operator.upgrade import JobObservation, observe_job

from e2e.controlplane.localcluster import FAIL_LABEL, TERMINATION_MESSAGE_ANNOTATION
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = pytest.mark.cluster

RELEASE = Release("0.5.0", "registry.test/aperag:0.5.0")


def _report(ok: bool) -> str:
    if ok:
        body = {"ok": True, "action": "upgrade", "before": ["0001"], "current": ["0002"], "changed": True}
    else:
        body = {"ok": False, "action": "upgrade", "before": ["0001"], "current": ["0001"], "changed": False,
                "reason": "MigrationFailed", "message": "relation x does not exist"}  # fmt: skip
    return json.dumps(body)


def _owner(cluster: Cluster, namespace: str, name: str) -> str:
    """An ApeRAG to own the Job (a Job whose owner does not exist is garbage-collected at once), and the
    ServiceAccount the operator would have created for it (the Job's pods run as it)."""
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace)
    manifest = {
        "apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": name}, "spec": {"version": "0.5.0"}
    }  # fmt: skip
    cluster.kubectl("apply", "--server-side", "--field-manager=aperag-tests", "-n", namespace, "-f", "-",
                    input=json.dumps(manifest))  # fmt: skip
    obj = json.loads(cluster.kubectl("get", "aperag", name, "-n", namespace, "-o", "json").stdout)
    return str(obj["metadata"]["uid"])


def _job(cluster: Cluster, namespace: str, ok: bool) -> dict[str, Any]:
    name = "ok" if ok else "bad"
    labels = {} if ok else {FAIL_LABEL: "true"}
    annotations = {TERMINATION_MESSAGE_ANNOTATION: _report(ok)}
    spec = parse_spec(
        {"version": RELEASE.version, "upgrade": {"migrationJob": {"podLabels": labels, "podAnnotations": annotations}}}
    )
    inst = Instance(name, namespace, _owner(cluster, namespace, name), spec)
    request = migration_job.request(name, "upgrade", RELEASE, "head", 1)
    return migration_job.build(inst, request, build_database_env(name, spec.databases))


def _pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    selector = f"batch.kubernetes.io/job-name={job}"
    pods: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    )["items"]
    return pods


async def _finished(cluster: Cluster, namespace: str, job: dict[str, Any]) -> JobObservation:
    name = job["metadata"]["name"]

    def observed() -> JobObservation | None:
        live = json.loads(cluster.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout)
        result = observe_job(live, _pods(cluster, namespace, name))
        return result if result.state != "Running" else None

    result: JobObservation = await wait_until(observed, timeout=90, what=f"Job {name} finished")
    return result


@pytest.mark.parametrize("ok", [True, False], ids=["succeeds", "fails"])
async def test_generated_job_runs_on_kwok_and_reports(
    cluster: Cluster, aperag_crd: str, namespace: str, ok: bool
) -> None:
    job = _job(cluster, namespace, ok)
    created = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job), check=False)
    assert created.returncode == 0, created.stderr
    result = await _finished(cluster, namespace, job)
    assert result.report is not None
    if ok:
        assert result.state == "Succeeded"
        assert (result.report.ok, result.report.current, result.report.changed) == (True, ("0002",), True)
    else:
        # Exit code 1 fails the Job at once (pod failure policy): no second pod retries a migration that
        # failed for good.
        assert (result.state, result.reason) == ("Failed", "PodFailurePolicy")
        assert (result.report.reason, result.report.changed) == ("MigrationFailed", False)
        assert len(_pods(cluster, namespace, job["metadata"]["name"])) == 1
