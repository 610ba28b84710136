"""One ApeRAG on the real node, as the real-node tests drive it: its manifest (external PostgreSQL and
Redis on 127.0.0.1, the API only, every pod labelled for the placement webhook), and what the tests read
back: status, Jobs and their pods, the API pods and their real endpoints, SQL on its own database."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, inspect, text

from aperag.embedded_pg import EmbeddedPostgres
from tests.e2e.conftest import OperatorProcess, apply_yaml, kget
from tests.harness.cluster import Cluster
from tests.harness.realnode import PLACE_LABEL, pod_port
from tests.harness.wait import wait_until
from tests.realnode import images

Obj = dict[str, Any]
API_KEY = "real-node-test-key"
MIGRATION_COMPONENT = "app.kubernetes.io/component=migration"
API_SELECTOR = "app.kubernetes.io/component=api"


def http(port: int, method: str, path: str, body: Obj | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a request to an app process on 127.0.0.1; (0, None) when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {API_KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError:
        return 0, None


def ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def terminated(pod: Obj) -> Obj | None:
    """The migration container's terminated state (exit code, termination message), once it ended."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        state = status.get("state", {}).get("terminated")
        if state is not None:
            result: Obj = state
            return result
    return None


@dataclass
class RealApeRAG:
    cluster: Cluster
    namespace: str
    postgres: EmbeddedPostgres
    redis_port: int
    operator: OperatorProcess
    name: str = "rag"
    database: str = field(default_factory=lambda: f"rn_{uuid.uuid4().hex[:10]}")
    progress_deadline_seconds: int = 180
    run_migrations: bool = True

    def __post_init__(self) -> None:
        self.postgres.create_database(self.database)
        secrets = [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-credentials", "namespace": self.namespace},
             "stringData": {"username": self.postgres.user, "password": ""}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-keys", "namespace": self.namespace},
             "stringData": {"apiKeys": API_KEY}},
        ]  # fmt: skip
        for secret in secrets:
            apply_yaml(self.cluster, json.dumps(secret))

    # --- the resource ---------------------------------------------------------------------------

    def manifest(self, version: str) -> Obj:
        place = {PLACE_LABEL: "true"}
        return {
            "apiVersion": "aperag.io/v1alpha1",
            "kind": "ApeRAG",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "version": version,
                "image": {"repository": images.REPOSITORY, "pullPolicy": "Never"},
                "components": {
                    "api": {"replicas": 1, "podLabels": place},
                    "worker": {"replicas": 0, "podLabels": place},
                    "beat": {"enabled": False},
                },
                "app": {"apiKeysSecret": {"name": "api-keys", "key": "apiKeys"}},
                "databases": {
                    "postgresql": {"external": {
                        "host": "127.0.0.1", "port": self.postgres.port, "database": self.database,
                        "credentialsSecretRef": {"name": "pg-credentials"},
                    }},
                    "redis": {"external": {"host": "127.0.0.1", "port": self.redis_port}},
                    "vectorStore": {"type": "pgvector"},
                    "fullTextStore": {"type": "postgresql"},
                },
                "upgrade": {
                    "runMigrations": self.run_migrations,
                    "migrationTimeoutSeconds": 300,
                    "progressDeadlineSeconds": self.progress_deadline_seconds,
                    "migrationJob": {"podLabels": place},
                },
            },
        }  # fmt: skip

    def apply(self, version: str) -> None:
        apply_yaml(self.cluster, json.dumps(self.manifest(version)))

    def status(self) -> Obj:
        obj = kget(self.cluster, self.namespace, "aperag", self.name) or {}
        result: Obj = obj.get("status") or {}
        return result

    def condition(self, kind: str) -> Obj:
        return next((c for c in self.status().get("conditions", []) if c["type"] == kind), {})

    async def wait_ready_at(self, version: str, timeout: float = 300) -> Obj:
        """Until the ApeRAG is Ready on ``version`` with its upgrade Complete; returns the status."""

        def done() -> Obj | None:
            status = self.status()
            upgrade = status.get("upgrade") or {}
            if (status.get("version") == version and upgrade.get("phase") == "Complete"
                    and self.condition("Ready").get("status") == "True"):  # fmt: skip
                return status
            return None

        result: Obj = await wait_until(done, timeout=timeout, interval=0.5, what=f"{self.name} Ready on {version}")
        return result

    async def wait_phase(self, phase: str, timeout: float = 300) -> Obj:
        def reached() -> Obj | None:
            upgrade = self.status().get("upgrade") or {}
            return upgrade if upgrade.get("phase") == phase else None

        result: Obj = await wait_until(reached, timeout=timeout, interval=0.5, what=f"status.upgrade.phase {phase}")
        return result

    # --- what runs ------------------------------------------------------------------------------

    def items(self, kind: str, selector: str) -> list[Obj]:
        found = kget(self.cluster, self.namespace, kind, "-l", selector) or {"items": []}
        result: list[Obj] = found["items"]
        return result

    def jobs(self) -> list[Obj]:
        """The migration Jobs, oldest first."""
        jobs = self.items("jobs", MIGRATION_COMPONENT)
        return sorted(jobs, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"]))

    def job_pods(self, job: str) -> list[Obj]:
        return self.items("pods", f"batch.kubernetes.io/job-name={job}")

    async def finished_job(self, action: str, version: str, timeout: float = 240) -> tuple[Obj, Obj]:
        """The migration Job of ``action`` with ``version``'s image, once finished, and its last pod."""
        image = images.ref(version)

        def finished() -> tuple[Obj, Obj] | None:
            for job in self.jobs():
                template = job["spec"]["template"]
                if (template["metadata"]["labels"].get("aperag.io/migration-action") != action
                        or template["spec"]["containers"][0]["image"] != image):  # fmt: skip
                    continue
                conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
                if conditions.get("Complete") == "True" or conditions.get("Failed") == "True":
                    pods = self.job_pods(job["metadata"]["name"])
                    pods.sort(key=lambda p: p["metadata"]["creationTimestamp"])
                    if pods and terminated(pods[-1]) is not None:
                        return job, pods[-1]
            return None

        result: tuple[Obj, Obj] = await wait_until(finished, timeout=timeout, interval=0.5,
                                                   what=f"the {action} Job with {image} finished")  # fmt: skip
        return result

    def api_pods(self) -> list[Obj]:
        return [p for p in self.items("pods", API_SELECTOR) if p["metadata"].get("deletionTimestamp") is None]

    def deployment(self, component: str = "api") -> Obj | None:
        return kget(self.cluster, self.namespace, "deployment", f"{self.name}-{component}")

    def serving_pod(self, version: str) -> Obj | None:
        """The API pod running ``version``'s image, Ready (real probe), when there is exactly one."""
        image = images.ref(version)
        pods = [p for p in self.api_pods() if p["spec"]["containers"][0]["image"] == image and ready(p)]
        return pods[0] if len(pods) == 1 else None

    def logs(self, *what: str) -> str:
        return self.cluster.kubectl("logs", "-n", self.namespace, *what).stdout

    def start_pod(self, name: str, version: str, command: list[str] | None = None) -> None:
        """A pod of its own made from the API Deployment's pod template with ``version``'s image (and
        ``command``, which makes it a run-once pod): what the operator would run, minus the labels that
        would let its ReplicaSet adopt it."""
        deployment = self.deployment()
        assert deployment is not None
        template = json.loads(json.dumps(deployment["spec"]["template"]))
        spec = template["spec"]
        spec["containers"][0]["image"] = images.ref(version)
        if command is not None:
            spec["containers"][0]["command"] = command
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec["containers"][0].pop(probe, None)
            spec["restartPolicy"] = "Never"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.namespace, "labels": {PLACE_LABEL: "true"}},
               "spec": spec}  # fmt: skip
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(pod))

    def pod(self, name: str) -> Obj:
        pod = kget(self.cluster, self.namespace, "pod", name)
        assert pod is not None, f"pod {name} not found"
        return pod

    def own_events(self) -> list[str]:
        """The reasons of the Events on the ApeRAG, oldest first."""
        found = kget(self.cluster, self.namespace, "events", "--field-selector",
                     f"involvedObject.kind=ApeRAG,involvedObject.name={self.name}") or {"items": []}  # fmt: skip
        events = sorted(found["items"], key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                                       int(e["metadata"].get("resourceVersion", "0"))))  # fmt: skip
        return [e["reason"] for e in events]

    def events(self, pod: str, reason: str) -> list[Obj]:
        found = kget(self.cluster, self.namespace, "events", "--field-selector",
                     f"involvedObject.name={pod},reason={reason}") or {"items": []}  # fmt: skip
        result: list[Obj] = found["items"]
        return result

    # --- the database ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.postgres.url(self.database)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(query))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def revision(self) -> list[str]:
        return sorted(r[0] for r in self.sql("SELECT version_num FROM alembic_version"))

    def tables(self) -> set[str]:
        engine = create_engine(self.url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    def columns(self, table: str) -> set[str]:
        engine = create_engine(self.url)
        try:
            return {c["name"] for c in inspect(engine).get_columns(table)}
        finally:
            engine.dispose()

    # --- data through the real API --------------------------------------------------------------

    def create_collection(self, pod: Obj, name: str) -> Obj:
        code, body = http(pod_port(pod), "POST", "/api/v1/collections", {"name": name, "description": "kept"})
        assert code == 201, (code, body)
        result: Obj = body
        return result

    def collection_names(self, pod: Obj) -> list[str]:
        code, body = http(pod_port(pod), "GET", "/api/v1/collections")
        assert code == 200, (code, body)
        return sorted(c["name"] for c in body)


def stamp(value: str) -> float:
    """An RFC 3339 timestamp of the API server as a Unix time."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
