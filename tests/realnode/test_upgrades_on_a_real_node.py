"""The upgrade machine with real processes: the operator (a subprocess) drives an ApeRAG whose migration
Jobs and API pods run for real on the real kubelet node (containerd, runc), from the app image in four
versions (tests/realnode/images.py), against a real PostgreSQL with pgvector and a real redis-server.

Nothing is played here: a Job succeeds or fails because ``aperag migrate`` did, its report is the
termination message the container wrote, a pod is Ready because the kubelet's probe of its real
``/health/ready`` passed, and the schema is read back with SQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aperag.embedded_pg import EmbeddedPostgres
from tests.e2e.conftest import OperatorProcess
from tests.harness.cluster import Cluster
from tests.harness.realnode import PLACE_LABEL, PlacementWebhook, pod_port
from tests.harness.wait import wait_until
from tests.realnode import images
from tests.realnode.images import V1, V2, V3, V4
from tests.realnode.scenario import RealApeRAG, http, ready, stamp, terminated

#: The app's own head revision: what 1.0.0 (the app image as built) migrates to.
HEAD1 = images.HEADS[V1]

#: How long each scenario took (docs/benchmarks.md), printed at the end of the module.
DURATIONS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def print_durations() -> Iterator[None]:
    yield
    print(f"\n[realnode] scenario durations (s): {json.dumps(DURATIONS)}")


@pytest.fixture
def rag(
    real_cluster: Cluster,
    real_namespace: str,
    real_operator: OperatorProcess,
    postgres: EmbeddedPostgres,
    redis_port: int,
    app_images: images.TestImages,
    placement: PlacementWebhook,
    request: pytest.FixtureRequest,
) -> Iterator[RealApeRAG]:
    started = time.monotonic()
    yield RealApeRAG(real_cluster, real_namespace, postgres, redis_port, real_operator)
    DURATIONS[request.node.name] = round(time.monotonic() - started, 1)


def report_of(pod: dict[str, Any]) -> dict[str, Any]:
    state = terminated(pod)
    assert state is not None
    report: dict[str, Any] = json.loads(state["message"])
    return report


def history(rag: RealApeRAG) -> list[tuple[str, str | None, str, str, str | None]]:
    """status.history as (version, revision, operation, outcome, reason)."""
    return [(h["version"], h.get("revision"), h["operation"], h["outcome"], h.get("reason"))
            for h in rag.status().get("history", [])]  # fmt: skip


async def install(rag: RealApeRAG, version: str) -> dict[str, Any]:
    """Installs ``version`` and returns its API pod once Ready."""
    rag.apply(version)
    await rag.wait_ready_at(version)
    pod = rag.serving_pod(version)
    assert pod is not None, rag.api_pods()
    return pod


async def test_fresh_install_migrates_for_real_before_the_api_serves(rag: RealApeRAG) -> None:
    rag.apply(V1)
    job, job_pod = await rag.finished_job("upgrade", V1)
    # The app image's own `aperag migrate upgrade head`, on the real node, against the real database.
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["aperag", "migrate", "upgrade", "head"]
    assert job_pod["spec"]["nodeName"] == "real-node-0" and job_pod["spec"]["hostNetwork"] is True
    state = terminated(job_pod)
    assert state is not None and state["exitCode"] == 0, state
    report = report_of(job_pod)
    assert (report["ok"], report["before"], report["current"], report["changed"]) == (True, [], [HEAD1], True)
    assert rag.revision() == [HEAD1]
    assert {"collections", "documents", "vector_chunks", "fulltext_chunks"} <= rag.tables()

    status = await rag.wait_ready_at(V1)
    assert status["upgrade"]["target"]["revision"] == HEAD1
    assert history(rag) == [(V1, HEAD1, "Install", "Succeeded", None)]
    (pod,) = rag.api_pods()
    assert ready(pod) and pod["spec"]["nodeName"] == "real-node-0"
    # The API Deployment was created only after the migration had finished, and its pod became Ready
    # (the kubelet's probe of the real /health/ready) after that.
    deployment = rag.deployment()
    assert deployment is not None
    completed = stamp(job["status"]["completionTime"])
    assert stamp(deployment["metadata"]["creationTimestamp"]) >= completed
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert stamp(ready_at) >= completed
    code, body = http(pod_port(pod), "GET", "/health/ready")
    assert code == 200 and body["ready"] is True and body["checks"]["schema"] == "ok", body
    # The operator's pods are what it generates: only the webhook (test label) made them host-network pods.
    template = deployment["spec"]["template"]
    assert "hostNetwork" not in template["spec"] and template["metadata"]["labels"][PLACE_LABEL] == "true"
    assert template["spec"]["containers"][0]["ports"][0]["containerPort"] == 8000

    # `kubectl logs` of the Job: the migration's own output, Alembic's steps and the report last.
    logs = rag.logs(f"job/{job['metadata']['name']}")
    assert "Running upgrade  -> 0001" in logs and f"-> {HEAD1}" in logs, logs
    assert json.loads(logs.strip().splitlines()[-1]) == report


async def test_upgrade_migrates_with_the_new_image_and_rolls_the_real_pods(rag: RealApeRAG) -> None:
    old_pod = await install(rag, V1)
    rag.create_collection(old_pod, "before-upgrade")

    rag.apply(V2)
    _, job_pod = await rag.finished_job("upgrade", V2)
    report = report_of(job_pod)
    assert (report["ok"], report["before"], report["current"]) == (True, [HEAD1], ["t_next"])
    # The schema moved ahead while the old pod kept serving: the old code is ready on a newer schema.
    refreshed = next(p for p in rag.api_pods() if p["metadata"]["uid"] == old_pod["metadata"]["uid"])
    assert ready(refreshed)

    status = await rag.wait_ready_at(V2)
    assert history(rag) == [(V1, HEAD1, "Install", "Succeeded", None), (V2, "t_next", "Upgrade", "Succeeded", None)]
    assert status["upgrade"]["running"] == {"version": V2, "image": images.ref(V2), "revision": "t_next"}
    new_pod = rag.serving_pod(V2)
    assert new_pod is not None and new_pod["metadata"]["uid"] != old_pod["metadata"]["uid"]
    deployment = rag.deployment()
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images.ref(V2)
    await wait_until(lambda: [p["metadata"]["uid"] for p in rag.api_pods()] == [new_pod["metadata"]["uid"]],
                     timeout=60, what="the old API pod gone")  # fmt: skip
    assert rag.revision() == ["t_next"]
    assert "tier" in rag.columns("collections") and "release_notes" in rag.tables()
    # The data written through the old pod is served by the new one, with the new column's default.
    assert rag.collection_names(new_pod) == ["before-upgrade"]
    assert rag.sql("SELECT name, tier FROM collections") == [("before-upgrade", "free")]


async def test_a_migration_failing_part_way_is_downgraded_with_its_own_image(rag: RealApeRAG) -> None:
    pod = await install(rag, V2)
    rag.create_collection(pod, "written-before")

    rag.apply(V3)
    failed_job, failed_pod = await rag.finished_job("upgrade", V3)
    # The Job failed for real: `aperag migrate upgrade head` exited 1 after its autocommit block had
    # committed t_audit, and said so in its termination message.
    state = terminated(failed_pod)
    assert state is not None and state["exitCode"] == 1, state
    report = report_of(failed_pod)
    assert (report["ok"], report["reason"], report["changed"]) == (False, "MigrationFailed", True)
    assert (report["before"], report["current"]) == (["t_next"], ["t_audit"])
    conditions = {c["type"]: c.get("reason") for c in failed_job["status"]["conditions"]}
    assert conditions.get("Failed") == "PodFailurePolicy", conditions  # exit code 1: not retried

    # The operator ran the downgrade with the failed version's image (only it knows t_audit), to the
    # revision recorded for the running version.
    down_job, down_pod = await rag.finished_job("downgrade", V3)
    assert down_job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "aperag", "migrate", "downgrade", "t_next"
    ]  # fmt: skip
    down_report = report_of(down_pod)
    assert (down_report["ok"], down_report["before"], down_report["current"]) == (True, ["t_audit"], ["t_next"])
    upgrade = await rag.wait_phase("Failed")
    assert upgrade["reason"] == "MigrationFailed" and "rolled back" in upgrade["message"], upgrade
    assert history(rag) == [(V2, "t_next", "Install", "Succeeded", None),
                            (V3, None, "Upgrade", "Failed", "MigrationFailed")]  # fmt: skip
    assert upgrade["running"] == {"version": V2, "image": images.ref(V2), "revision": "t_next"}
    assert rag.condition("Degraded").get("reason") == "MigrationFailed"

    # The schema is back at the recorded revision, with the data written before.
    assert rag.revision() == ["t_next"]
    assert "audit_log" not in rag.tables() and "audited" not in rag.columns("documents")
    assert rag.sql("SELECT name FROM collections") == [("written-before",)]
    # The running version was never touched: the same pod serves, on the same image.
    serving = rag.serving_pod(V2)
    assert serving is not None and serving["metadata"]["uid"] == pod["metadata"]["uid"]
    assert rag.collection_names(serving) == ["written-before"]
    deployment = rag.deployment()
    assert deployment is not None and deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images.ref(V2)
    # `kubectl logs`: why the migration failed, and what the downgrade did.
    assert "table_that_does_not_exist" in rag.logs(f"job/{failed_job['metadata']['name']}")
    assert "Running downgrade t_audit -> t_next" in rag.logs(f"job/{down_job['metadata']['name']}")


async def test_an_api_that_never_starts_fails_the_health_gate_and_is_rolled_back(rag: RealApeRAG) -> None:
    pod = await install(rag, V2)
    rag.create_collection(pod, "written-before")

    rag.progress_deadline_seconds = 30  # the smallest the CRD allows: the gate fails 30 s after the rollout
    rag.apply(V4)
    _, job_pod = await rag.finished_job("upgrade", V4)
    assert report_of(job_pod)["current"] == ["t_flags"]

    # The new API pod really exits at start (the kubelet restarts it), so the health gate fails.
    def crashed() -> str | None:
        for candidate in rag.api_pods():
            if candidate["spec"]["containers"][0]["image"] != images.ref(V4):
                continue
            for status in candidate.get("status", {}).get("containerStatuses", []):
                last = status.get("lastState", {}).get("terminated") or status.get("state", {}).get("terminated")
                if last is not None and last.get("exitCode") == 1:
                    return str(candidate["metadata"]["name"])
        return None

    crashing = await wait_until(crashed, timeout=120, what="the 1.3.0 API pod exiting 1")

    def said_why() -> bool:
        # The exit is the current container's until the kubelet restarts it, the previous one's after.
        for previous in ([], ["--previous"]):
            result = rag.cluster.kubectl("logs", "-n", rag.namespace, crashing, *previous, check=False)
            if result.returncode == 0 and images.NEVER_STARTS_MESSAGE in result.stdout:
                return True
        return False

    await wait_until(said_why, timeout=60, what="the 1.3.0 API's own message in its logs")
    # Meanwhile the old pod keeps serving (maxUnavailable 0).
    assert rag.serving_pod(V2) is not None

    # The Deployment goes back to 1.1.0, then the 1.3.0 image downgrades the schema to t_next.
    down_job, down_pod = await rag.finished_job("downgrade", V4)
    assert down_job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "t_next"
    assert report_of(down_pod)["current"] == ["t_next"]
    upgrade = await rag.wait_phase("Failed")
    assert upgrade["reason"] == "RolloutFailed" and "rolled back" in upgrade["message"], upgrade
    deployment = rag.deployment()
    assert deployment is not None and deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images.ref(V2)
    # The old pods serve again, and only they.
    await wait_until(
        lambda: [p["spec"]["containers"][0]["image"] for p in rag.api_pods()] == [images.ref(V2)],
        timeout=90,
        what="only 1.1.0 API pods left",
    )
    serving = rag.serving_pod(V2)
    assert serving is not None
    code, body = http(pod_port(serving), "GET", "/health/ready")
    assert code == 200 and body["checks"]["schema"] == "ok", body
    assert rag.collection_names(serving) == ["written-before"]
    assert rag.revision() == ["t_next"] and "feature_flags" not in rag.tables()
    assert rag.status().get("version") == V2
    assert history(rag) == [(V2, "t_next", "Install", "Succeeded", None),
                            (V4, "t_flags", "Upgrade", "Failed", "RolloutFailed")]  # fmt: skip
    # In that order: the health gate failed, the old pods served again, then the schema went down.
    reasons = rag.own_events()
    order = [
        reasons.index(r)
        for r in ("MigrationSucceeded", "RolloutFailed", "RollingBack", "DowngradeStarted", "DowngradeSucceeded")
    ]
    assert order == sorted(order), reasons
    assert upgrade["running"] == {"version": V2, "image": images.ref(V2), "revision": "t_next"}


async def test_readiness_contract_with_real_probes(rag: RealApeRAG) -> None:
    """A new pod against an old schema stays not ready; an old pod against a newer schema stays ready;
    what decides it is the kubelet probing the app's real /health/ready."""
    old = await install(rag, V1)
    assert rag.revision() == [HEAD1]

    # 1.1.0's code on 1.0.0's schema: behind, so the probe fails again and again (503), never Ready.
    rag.start_pod("new-code", V2)

    def failed_three_times() -> bool:
        events = [e for e in rag.events("new-code", "Unhealthy") if "Readiness probe failed" in e["message"]]
        return sum(e.get("count", 1) for e in events) >= 3 and "statuscode: 503" in events[0]["message"]

    await wait_until(failed_three_times, timeout=120, what="three failed readiness probes of the 1.1.0 pod")
    new_pod = rag.pod("new-code")
    assert not ready(new_pod)
    code, body = http(pod_port(new_pod), "GET", "/health/ready")
    assert code == 503 and body["checks"]["schema"].startswith(f"error: database schema at {HEAD1}"), body
    assert "t_next" in body["checks"]["schema"]

    # The schema moves ahead: 1.1.0's own `aperag migrate upgrade head`, run once in a pod of its own.
    migrated_from = time.time()
    rag.start_pod("migrate-by-hand", V2, ["aperag", "migrate", "upgrade", "head"])
    await wait_until(lambda: rag.pod("migrate-by-hand")["status"].get("phase") == "Succeeded", timeout=120,
                     what="the hand-run migration")  # fmt: skip
    assert rag.revision() == ["t_next"]

    # Now the new pod turns Ready by itself, and the old one (1.0.0, the operator's) stays Ready on a
    # schema ahead of its code: sampled past the app's 5 s cache of the schema check.
    await wait_until(lambda: ready(rag.pod("new-code")), timeout=60, what="the 1.1.0 pod Ready")
    samples: list[tuple[float, int]] = []

    def ready_for_six_seconds() -> bool:
        code, body = http(pod_port(old), "GET", "/health/ready")
        if code != 200:
            raise RuntimeError(f"the 1.0.0 pod became not ready on the newer schema: {code} {body}")
        samples.append((time.monotonic(), code))
        return samples[-1][0] - samples[0][0] >= 6

    await wait_until(ready_for_six_seconds, timeout=30, interval=0.5, what="6 s of the 1.0.0 pod ready")
    assert ready(rag.pod(old["metadata"]["name"]))
    failures = [e for e in rag.events(old["metadata"]["name"], "Unhealthy")
                if "Readiness" in e["message"] and stamp(e["lastTimestamp"]) >= migrated_from - 1]  # fmt: skip
    assert failures == []
