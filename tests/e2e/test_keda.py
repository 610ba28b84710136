"""The real KEDA (its operator and metrics API server, built from the Go module proxy: e2e/controlplane/
keda.py) scales the workers on the app's real Celery queue in a real Redis (with a password, read by
KEDA from the same Secret the app uses): from zero on the first task, up with the queue, held (and
reported) while Redis is away, back down when the queue is empty, and never below what the running
tasks need; the operator writes none of it and rolls it
up into the status. The workers are kwok pods, so nothing consumes the queue: the test fills and empties
it (with the app's own dispatcher, so the messages are exactly what an upload sends).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import keda as keda_runner
from tests.e2e.conftest import OperatorProcess, apply_yaml, kget
from tests.e2e.test_operator_core import cond, manifest, status, writes
from tests.harness.cluster import Cluster
from tests.harness.wait import poll_until, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator, pytest.mark.slow]

PASSWORD = "queue-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Redis:
    """A real redis-server on 127.0.0.1 with a password, which a test can stop and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make system-packages)")
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="aperag-keda-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        poll_until(lambda: self.client().ping(), timeout=20, what="redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=2)

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"


@pytest.fixture
def queue() -> Iterator[Redis]:
    server = Redis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def keda(cluster: Cluster, upstream_crds: list[str]) -> Iterator[None]:
    """KEDA running against the session's cluster for this module's tests (built once, cached)."""
    state = Path(cluster.info.state_dir)
    keda_runner.up(state)
    try:
        yield
    finally:
        keda_runner.down(state)


def secret(name: str, namespace: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                       "stringData": data})  # fmt: skip


def spec(redis_port: int, autoscaling: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "components": {"worker": {"replicas": 2}},
        "databases": {
            "postgresql": {"external": {"host": "pg.example.internal", "credentialsSecretRef": {"name": "pg"}}},
            # The app's Redis: KEDA reads the queue here, with the password from the same Secret.
            "redis": {"external": {"host": "127.0.0.1", "port": redis_port,
                                   "credentialsSecretRef": {"name": "redis", "usernameKey": ""}}},
        },
        "objectStorage": {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "s3"}}},
    }  # fmt: skip
    if autoscaling is not None:
        body["autoscaling"] = {"worker": autoscaling}
    return body


WORKER = {
    "enabled": True, "minReplicas": 0, "maxReplicas": 5, "listLength": 2, "pollingInterval": 1, "cooldownPeriod": 3,
    "fallbackReplicas": 3, "scaleDown": {"stabilizationWindowSeconds": 0},
}  # fmt: skip


def replicas(cluster: Cluster, namespace: str) -> int | None:
    dep = kget(cluster, namespace, "deployment", "rag-worker") or {}
    value = (dep.get("spec") or {}).get("replicas")
    return int(value) if value is not None else None


def so_condition(cluster: Cluster, namespace: str, ctype: str) -> dict[str, Any]:
    worker = status(cluster, namespace, "rag").get("autoscaling", {}).get("worker", {})
    return next((c for c in worker.get("conditions", []) if c["type"] == ctype), {})


async def at(cluster: Cluster, namespace: str, count: int, what: str, timeout: float = 90) -> float:
    """Waits until the workers are ``count`` and ready; returns when they were seen so."""

    def there() -> bool:
        worker = status(cluster, namespace, "rag").get("components", {}).get("worker", {})
        return replicas(cluster, namespace) == count and worker.get("desired") == count and bool(worker.get("isReady"))

    await wait_until(there, timeout=timeout, interval=0.5, what=f"{count} workers ({what})")
    return time.monotonic()


async def test_the_workers_follow_the_queue_with_the_real_keda(
    cluster: Cluster, namespace: str, operator: OperatorProcess, keda: None, queue: Redis
) -> None:
    from aperag.ingest.dispatch import CeleryDispatcher

    for name, data in {"pg": {"username": "u", "password": "p"}, "redis": {"password": PASSWORD},
                       "s3": {"accessKeyId": "a", "secretAccessKey": "b"}}.items():  # fmt: skip
        apply_yaml(cluster, secret(name, namespace, data))
    apply_yaml(cluster, manifest("rag", namespace, spec(queue.port, WORKER)))

    def autoscaling_ready() -> bool:
        return cond(cluster, namespace, "rag", "AutoscalingReady").get("status") == "True"

    await wait_until(autoscaling_ready, timeout=120, what="AutoscalingReady (KEDA's ScaledObject Ready)")
    await at(cluster, namespace, 0, "an empty queue, minReplicas 0")
    assert cond(cluster, namespace, "rag", "Ready")["status"] == "True"  # no workers, and nothing is wrong

    # A burst of uploads: the first task wakes a worker (KEDA), the HPA KEDA made brings the rest.
    since = time.time()
    dispatcher = CeleryDispatcher(queue.url)
    for index in range(8):
        dispatcher.enqueue(f"document-{index}")
    assert queue.client().llen("celery") == 8  # the queue the workers consume, in database 0
    await at(cluster, namespace, 4, "8 queued tasks / listLength 2")
    # The status copies KEDA's and its HPA's reports, which may reach the operator after the workers moved.
    def reported_active() -> bool:
        worker = status(cluster, namespace, "rag")["autoscaling"]["worker"]
        return so_condition(cluster, namespace, "Active").get("status") == "True" and worker.get("desiredReplicas") == 4

    await wait_until(reported_active, timeout=60, what="status.autoscaling.worker: Active, 4 desired")
    worker = status(cluster, namespace, "rag")["autoscaling"]["worker"]
    assert worker["horizontalPodAutoscaler"] == "keda-hpa-rag-worker"
    assert "Redis list celery (database 0) at 127.0.0.1" in worker["metric"]

    # Redis goes away. KEDA v2.20's fallback does not engage here (its redis scaler connects when it is
    # built, so the scaler cannot even be rebuilt): the workers stay where they are, not scaled to zero
    # after the cooldown, and the status says why they do not move.
    queue.stop()

    def blind() -> dict[str, Any]:
        found = cond(cluster, namespace, "rag", "AutoscalingReady")
        return found if found.get("status") == "False" else {}

    reported = await wait_until(blind, timeout=120, interval=0.5, what="AutoscalingReady False while Redis is away")
    assert reported["reason"] == "FailedGetExternalMetric", reported
    assert "connection to redis failed" in reported["message"] and "keda-hpa-rag-worker" in reported["message"]
    held: list[int | None] = []

    def past_the_cooldown() -> bool:
        held.append(replicas(cluster, namespace))
        hpa = kget(cluster, namespace, "hpa", "keda-hpa-rag-worker") or {}
        failing = next(c for c in hpa["status"]["conditions"] if c["type"] == "ScalingActive")
        since_failing = time.time() - datetime.fromisoformat(failing["lastTransitionTime"]).timestamp()
        return failing["status"] == "False" and since_failing > 3 * WORKER["cooldownPeriod"]

    await wait_until(past_the_cooldown, timeout=60, interval=0.5, what="three cooldown periods without Redis")
    assert set(held) == {4}, held

    # Redis back, with an empty queue: down to zero (the HPA to 1, KEDA to 0 after the cooldown).
    queue.start()
    await at(cluster, namespace, 0, "an empty queue again", timeout=120)
    await wait_until(autoscaling_ready, timeout=30, what="AutoscalingReady again")

    # Tasks that run keep their workers: a worker takes 4 tasks (unacknowledged until done: acks late)
    # and the queue is empty, yet the workers stay at 4 running / concurrency 2, past the cooldown.
    for index in range(4):
        dispatcher.enqueue(f"long-document-{index}")
    await at(cluster, namespace, 2, "4 queued tasks")
    from kombu import Connection

    with Connection(queue.url) as connection:
        taken = connection.SimpleQueue("celery")
        messages = [taken.get(timeout=5) for _ in range(4)]
        assert queue.client().llen("celery") == 0 and queue.client().hlen("unacked") == 4
        running_since = time.monotonic()
        held.clear()

        def past_cooldowns_while_running() -> bool:
            held.append(replicas(cluster, namespace))
            return time.monotonic() - running_since > 3 * WORKER["cooldownPeriod"] + 15  # and one HPA sync

        await wait_until(past_cooldowns_while_running, timeout=60, interval=0.5, what="cooldowns with tasks running")
        assert set(held) == {2}, held
        for message in messages:
            message.ack()
        taken.close()
    await at(cluster, namespace, 0, "the tasks done", timeout=120)

    # The operator wrote none of it: the autoscalers did, through the scale subresource.
    operator_writes = [w for w in writes(cluster, namespace, since) if "deployments/" in w]
    assert operator_writes == []
    scalers = {e["user"]["username"] for e in cluster.audit_events(namespace=namespace, since=since)
               if e["objectRef"].get("resource") == "deployments" and e["objectRef"].get("subresource") == "scale"}
    assert scalers == {"keda", "system:kube-controller-manager"}, scalers  # KEDA 0<->1, its HPA 1<->N  # fmt: skip

    # Autoscaling off: the spec's 2 workers, KEDA's objects gone (KEDA removes its finalizer).
    apply_yaml(cluster, manifest("rag", namespace, spec(queue.port, None)))
    await at(cluster, namespace, 2, "spec.components.worker.replicas again")
    await wait_until(lambda: kget(cluster, namespace, "scaledobjects.keda.sh", "rag-worker") is None, timeout=60,
                     what="the ScaledObject deleted")  # fmt: skip
    await wait_until(lambda: kget(cluster, namespace, "hpa", "keda-hpa-rag-worker") is None, timeout=60,
                     what="KEDA's HPA deleted with it")  # fmt: skip
    assert operator.proc.poll() is None

