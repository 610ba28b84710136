"""The local control plane behaves like a real cluster in the ways the operator relies on."""

from __future__ import annotations

import json
import uuid

import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.batch_v1 import JobSpec
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    PodSpec,
    PodTemplateSpec,
    SeccompProfile,
    SecurityContext,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod

from e2e.controlplane.localcluster import FAIL_LABEL, NEVER_READY_LABEL, TERMINATION_MESSAGE_ANNOTATION
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = pytest.mark.cluster

IMAGE = "registry.example/aperag/test:1"


def _container(name: str = "main") -> Container:
    return Container(name=name, image=IMAGE)


def _pod_ready(pod: Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


async def test_version_reports_the_built_kubernetes_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == cluster.info.kubernetes_version
    assert version["gitVersion"] != "v0.0.0"
    assert f"v{version['major']}.{version['minor']}" == cluster.info.kubernetes_version.rsplit(".", 1)[0]


async def test_deployment_reaches_three_available_replicas_on_kwok_nodes(kube: AsyncClient, namespace: str) -> None:
    labels = {"app": "smoke"}
    await kube.create(Deployment(
        metadata=ObjectMeta(name="smoke", namespace=namespace),
        spec=DeploymentSpec(
            replicas=3,
            selector=LabelSelector(matchLabels=labels),
            template=PodTemplateSpec(metadata=ObjectMeta(labels=labels), spec=PodSpec(containers=[_container()])),
        ),
    ))

    async def three_available() -> bool:
        deployment = await kube.get(Deployment, "smoke", namespace=namespace)
        return (deployment.status.availableReplicas or 0) == 3 if deployment.status else False

    await wait_until(three_available, timeout=60, what="3 available replicas")
    pods = [p async for p in kube.list(Pod, namespace=namespace, labels=labels)]
    assert len(pods) == 3
    for pod in pods:
        assert pod.status.phase == "Running"
        assert _pod_ready(pod)
        assert pod.spec.nodeName.startswith("kwok-node-")


def _job(
    name: str,
    namespace: str,
    *,
    pod_labels: dict[str, str] | None = None,
    pod_annotations: dict[str, str] | None = None,
    backoff_limit: int = 0,
) -> Job:
    return Job(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=JobSpec(
            backoffLimit=backoff_limit,
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=pod_labels or {}, annotations=pod_annotations or {}),
                spec=PodSpec(restartPolicy="Never", containers=[_container()]),
            ),
        ),
    )


def _job_condition(job: Job, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in (job.status.conditions or [])) if job.status else False


async def test_job_succeeds(kube: AsyncClient, namespace: str) -> None:
    await kube.create(_job("ok", namespace))

    async def complete() -> bool:
        return _job_condition(await kube.get(Job, "ok", namespace=namespace), "Complete")

    await wait_until(complete, timeout=60, what="Job ok Complete")


async def test_job_with_failure_marker_fails_after_its_backoff_limit(kube: AsyncClient, namespace: str) -> None:
    await kube.create(_job("doomed", namespace, pod_labels={FAIL_LABEL: "true"}, backoff_limit=1))

    async def failed() -> Job | None:
        job = await kube.get(Job, "doomed", namespace=namespace)
        return job if _job_condition(job, "Failed") else None

    job = await wait_until(failed, timeout=90, what="Job doomed Failed")
    assert job.status.failed == 2  # the first try and one retry (backoffLimit 1)
    reason = next(c.reason for c in job.status.conditions if c.type == "Failed")
    assert reason == "BackoffLimitExceeded"
    pods = [p async for p in kube.list(Pod, namespace=namespace, labels={"job-name": "doomed"})]
    assert pods and all(p.status.phase == "Failed" for p in pods)
    exit_codes = {s.state.terminated.exitCode for p in pods for s in p.status.containerStatuses}
    assert exit_codes == {1}


REPORT = '{"ok": true, "action": "upgrade", "current": ["0002"], "message": "it\'s \\"quoted\\""}'


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
async def test_termination_message_annotation_plays_the_job_report(
    kube: AsyncClient, namespace: str, fails: bool
) -> None:
    """kwok runs no container: the annotation is the message the container would have written."""
    labels = {FAIL_LABEL: "true"} if fails else {}
    annotations = {TERMINATION_MESSAGE_ANNOTATION: REPORT}
    await kube.create(_job("report", namespace, pod_labels=labels, pod_annotations=annotations))

    async def finished() -> Job | None:
        job = await kube.get(Job, "report", namespace=namespace)
        return job if _job_condition(job, "Failed" if fails else "Complete") else None

    await wait_until(finished, timeout=60, what="Job report finished")
    (pod,) = [p async for p in kube.list(Pod, namespace=namespace, labels={"job-name": "report"})]
    (status,) = pod.status.containerStatuses
    assert status.state.terminated.message == REPORT
    assert status.state.terminated.exitCode == (1 if fails else 0)
    assert pod.status.phase == ("Failed" if fails else "Succeeded")


async def test_never_ready_marker_keeps_a_pod_running_but_not_ready(kube: AsyncClient, namespace: str) -> None:
    def pod(name: str, labels: dict[str, str]) -> Pod:
        return Pod(metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
                   spec=PodSpec(containers=[_container()]))

    await kube.create(pod("stuck", {NEVER_READY_LABEL: "true"}))
    await kube.create(pod("reference", {}))

    async def running(name: str) -> Pod | None:
        p = await kube.get(Pod, name, namespace=namespace)
        return p if p.status and p.status.phase == "Running" else None

    await wait_until(lambda: running("stuck"), timeout=60, what="pod stuck Running")

    async def reference_ready() -> bool:
        return _pod_ready(await kube.get(Pod, "reference", namespace=namespace))

    # The unmarked twin, created after it, turning Ready shows kwok has long processed the marked one.
    await wait_until(reference_ready, timeout=60, what="pod reference Ready")
    stuck = await kube.get(Pod, "stuck", namespace=namespace)
    assert stuck.status.phase == "Running"
    assert not _pod_ready(stuck)


async def test_deleting_an_owner_garbage_collects_its_dependents(kube: AsyncClient, namespace: str) -> None:
    owner = await kube.create(ConfigMap(metadata=ObjectMeta(name="owner", namespace=namespace)))
    ref = OwnerReference(apiVersion="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    await kube.create(ConfigMap(metadata=ObjectMeta(name="dependent", namespace=namespace, ownerReferences=[ref])))
    await kube.delete(ConfigMap, "owner", namespace=namespace)

    async def dependent_gone() -> bool:
        try:
            await kube.get(ConfigMap, "dependent", namespace=namespace)
        except ApiError as err:
            return err.status.code == 404
        return False

    await wait_until(dependent_gone, timeout=60, what="dependent ConfigMap garbage-collected")


async def test_deleting_a_namespace_with_workloads_finishes(kube: AsyncClient) -> None:
    name = f"smoke-ns-{uuid.uuid4().hex[:6]}"
    await kube.create(Namespace(metadata=ObjectMeta(name=name)))
    labels = {"app": "doomed"}
    await kube.create(Deployment(
        metadata=ObjectMeta(name="doomed", namespace=name),
        spec=DeploymentSpec(
            replicas=2, selector=LabelSelector(matchLabels=labels),
            template=PodTemplateSpec(metadata=ObjectMeta(labels=labels), spec=PodSpec(containers=[_container()])),
        ),
    ))

    async def two_pods_running() -> bool:
        pods = [p async for p in kube.list(Pod, namespace=name, labels=labels)]
        return len([p for p in pods if p.status and p.status.phase == "Running"]) == 2

    await wait_until(two_pods_running, timeout=60, what="2 pods Running")
    await kube.delete(Namespace, name)

    async def namespace_gone() -> bool:
        try:
            await kube.get(Namespace, name)
        except ApiError as err:
            return err.status.code == 404
        return False

    await wait_until(namespace_gone, timeout=90, what=f"namespace {name} deleted (not stuck Terminating)")


async def test_restricted_pod_security_rejects_privileged_and_admits_compliant(
    kube: AsyncClient, namespace: str
) -> None:
    ns = await kube.get(Namespace, namespace)
    ns.metadata.labels = {**(ns.metadata.labels or {}), "pod-security.kubernetes.io/enforce": "restricted"}
    await kube.replace(ns)

    privileged = Pod(
        metadata=ObjectMeta(name="privileged", namespace=namespace),
        spec=PodSpec(
            containers=[Container(name="main", image=IMAGE, securityContext=SecurityContext(privileged=True))]
        ),
    )
    with pytest.raises(ApiError) as rejected:
        await kube.create(privileged)
    assert rejected.value.status.code == 403
    assert 'violates PodSecurity "restricted:' in rejected.value.status.message
    assert "privileged" in rejected.value.status.message

    compliant = Pod(
        metadata=ObjectMeta(name="compliant", namespace=namespace),
        spec=PodSpec(containers=[Container(
            name="main", image=IMAGE,
            securityContext=SecurityContext(
                runAsNonRoot=True, runAsUser=1000, allowPrivilegeEscalation=False,
                capabilities=Capabilities(drop=["ALL"]), readOnlyRootFilesystem=True,
                seccompProfile=SeccompProfile(type="RuntimeDefault"),
            ),
        )]),
    )
    created = await kube.create(compliant)
    assert created.metadata.uid


KUBEBLOCKS_CLUSTER = {
    "apiVersion": "apps.kubeblocks.io/v1",
    "kind": "Cluster",
    "metadata": {"name": "pg"},
    "spec": {
        "terminationPolicy": "Delete",
        "clusterDef": "postgresql",
        "topology": "replication",
        "componentSpecs": [{"name": "postgresql", "serviceVersion": "16.4.0", "replicas": 2}],
    },
}


async def test_upstream_crds_install_and_validate_objects(
    cluster: Cluster, upstream_crds: list[str], namespace: str
) -> None:
    assert "clusters.apps.kubeblocks.io" in upstream_crds
    assert "scaledobjects.keda.sh" in upstream_crds
    accepted = cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(KUBEBLOCKS_CLUSTER)
    )
    assert json.loads(accepted.stdout)["spec"]["componentSpecs"][0]["replicas"] == 2

    wrong = json.loads(json.dumps(KUBEBLOCKS_CLUSTER))
    wrong["metadata"]["name"] = "pg-wrong"
    wrong["spec"]["componentSpecs"][0]["replicas"] = "two"
    # A create goes through the schema's validation and gets its message ...
    rejected = cluster.kubectl("create", "-n", namespace, "-f", "-", check=False, input=json.dumps(wrong))
    assert rejected.returncode != 0
    assert "spec.componentSpecs[0].replicas" in rejected.stderr
    assert "must be of type integer" in rejected.stderr
    # ... and server-side apply is refused earlier, by the schema-typed merge, naming the field too.
    applied = cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", check=False, input=json.dumps(wrong)
    )
    assert applied.returncode != 0
    assert ".spec.componentSpecs[0].replicas: expected numeric" in applied.stderr
    assert cluster.kubectl("get", "clusters.apps.kubeblocks.io", "-n", namespace, "-o", "name").stdout.split() == [
        "cluster.apps.kubeblocks.io/pg"
    ]
