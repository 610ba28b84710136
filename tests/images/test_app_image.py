"""The app image, run with podman exactly as the operator's pods run it (command, user, read-only root
with an emptyDir at /tmp, capabilities, environment: all read from the operator's builders for an
ApeRAG on external databases), against a real PostgreSQL with pgvector and a real Redis on the host:
migrate, serve until ready, upload, index with the worker, search, beat, and migrate current."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aperag.embedded_pg import EmbeddedPostgres
from images.build import BuiltImage
from tests.e2e.conftest import free_port
from tests.harness.wait import poll_until
from tests.images.pod_runner import Containers, Objects, Pods, instance_with_databases

API_KEY = "images-test-" + uuid.uuid4().hex[:8]
#: The command of the migration (docs/app.md); the operator has no migration Job yet, so the test
#: runs it in the api pod's container (same image, user, security and environment).
MIGRATE_UPGRADE = ["aperag", "migrate", "upgrade", "head"]
MIGRATE_CURRENT = ["aperag", "migrate", "current"]
DOCUMENT = (
    "The lighthouse keeper of Skerryvore logs the fog horn every night.\n"
    "Kittiwakes nest on the western cliffs from May until August.\n"
)


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Containers]:
    started = Containers("aperag-image-test")
    try:
        yield started
    finally:
        for name, logs in started.all_logs():
            sys.stderr.write(f"\n--- podman logs {name} ---\n{logs[-6000:]}\n")
        started.remove_all()


def last_json(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_app_image_runs_as_the_operator_runs_it(
    built_images: dict[str, BuiltImage],
    postgres: EmbeddedPostgres,
    redis_port: int,
    containers: Containers,
    tmp_path: Path,
) -> None:
    database = "images_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    api_port, health_port = free_port(), free_port()
    inst = instance_with_databases(
        postgres.port, database, redis_port,
        # Host networking (no pod network here): every process on 127.0.0.1 and its own port.
        config={"APERAG_HOST": "127.0.0.1", "APERAG_PORT": str(api_port), "HEALTH_PORT": str(health_port)},
    )  # fmt: skip
    objects_dir = tmp_path / "objects"  # the ReadWriteMany volume: group fsGroup, setgid, as a kubelet sets it
    objects_dir.mkdir()
    os.chown(objects_dir, 0, 1000)
    objects_dir.chmod(0o2775)
    secrets = {"pg-credentials": {"username": postgres.user, "password": ""}, "api-keys": {"apiKeys": API_KEY}}
    pods = Pods(inst, Objects(secrets=secrets), objects_dir)
    app_image = built_images["app"]

    # The CRD's default repository and the version name exactly the image Dockerfile.app builds.
    for component in ("api", "worker", "beat"):
        assert pods.container(component)["image"] == app_image.ref
    api_run = pods.run("api")
    assert api_run.env["HOME"] == "/tmp" and "--read-only" in api_run.options and "--user" in api_run.options

    # The operator's own migration Job, run as the kubelet would: its command, its pod settings, and the
    # termination-message file the operator reads the schema revision from.
    job = pods.migration_job()
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == MIGRATE_UPGRADE
    termination_log = tmp_path / "termination-log"
    migrated = containers.run(pods.run_job(job, termination_log), suffix="migrate", image=app_image.image_id)
    assert migrated.returncode == 0, migrated.stderr[-4000:]
    report = json.loads(termination_log.read_text())
    assert report["ok"] is True and report["up_to_date"] is True and report["current"]
    assert last_json(migrated.stdout)["up_to_date"] is True

    api = containers.start(api_run, suffix="api", image=app_image.image_id)
    base = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def ready(url: str, name: str) -> bool:
        assert containers.running(name), f"{name} exited:\n{containers.logs(name)[-4000:]}"
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    probe = pods.container("api")["readinessProbe"]["httpGet"]["path"]
    poll_until(lambda: ready(base + probe, api), timeout=180, what="api /health/ready")
    assert httpx.get(f"{base}/api/v1/collections", timeout=10).status_code == 401
    # The console comes with the image: its pages, its vendored htmx, a sign-in with the key.
    with httpx.Client(base_url=base, timeout=10) as browser:
        sign_in_page = browser.get("/", follow_redirects=True)
        assert sign_in_page.status_code == 200 and 'id="api_key"' in sign_in_page.text
        assert browser.get("/console/static/vendor/htmx.min.js").status_code == 200
        token = re.search(r'name="csrf_token" value="([^"]+)"', sign_in_page.text)
        assert token is not None
        signed_in = browser.post("/console/sign-in", data={"api_key": API_KEY, "csrf_token": token.group(1)})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console/"
        assert "New collection" in browser.get("/console/").text

    created = httpx.post(f"{base}/api/v1/collections", json={"name": "seabirds"}, headers=auth, timeout=10)
    assert created.status_code == 201, created.text
    upload = httpx.post(
        f"{base}/api/v1/collections/seabirds/documents",
        files={"file": ("skerryvore.txt", DOCUMENT.encode(), "text/plain")},
        headers=auth,
        timeout=30,
    )
    assert upload.status_code == 201, upload.text
    document = upload.json()
    # No worker yet: the document waits in Redis, so whatever indexes it below is the worker's image.
    assert document["status"] == "pending"
    assert redis.Redis(port=redis_port).llen("celery") >= 1
    assert any(objects_dir.rglob("*")), "the api wrote no object into the shared volume"

    worker = containers.start(pods.run("worker"), suffix="worker", image=app_image.image_id)
    worker_probe = pods.container("worker")["readinessProbe"]["httpGet"]["path"]
    poll_until(lambda: ready(f"http://127.0.0.1:{health_port}{worker_probe}", worker), timeout=120,
               what="worker /health/ready")  # fmt: skip

    def indexed() -> dict[str, Any] | None:
        assert containers.running(worker), f"worker exited:\n{containers.logs(worker)[-4000:]}"
        doc: dict[str, Any] = httpx.get(
            f"{base}/api/v1/collections/seabirds/documents/{document['id']}", headers=auth, timeout=10
        ).json()
        assert doc["status"] != "failed", doc
        return doc if doc["status"] == "ready" else None

    done = poll_until(indexed, timeout=180, what="the worker to index the document")
    assert done["chunk_count"] >= 1

    for mode in ("vector", "fulltext", "hybrid"):
        found = httpx.post(
            f"{base}/api/v1/collections/seabirds/search",
            json={"query": "where do kittiwakes nest", "mode": mode, "top_k": 3},
            headers=auth,
            timeout=30,
        )
        assert found.status_code == 200, found.text
        hits = found.json()["results"]
        assert hits and hits[0]["document_id"] == document["id"], (mode, hits)
        assert "Kittiwakes" in hits[0]["text"]

    # Beat (one scheduler per ApeRAG) writes its schedule under /tmp: it must run on the read-only root.
    # It takes the worker's health port (both are HEALTH_PORT; one network here, one per pod in a cluster).
    containers.remove(worker)
    beat = containers.start(pods.run("beat"), suffix="beat", image=app_image.image_id)
    beat_probe = pods.container("beat")["readinessProbe"]["httpGet"]["path"]
    poll_until(lambda: ready(f"http://127.0.0.1:{health_port}{beat_probe}", beat), timeout=120,
               what="beat /health/ready")  # fmt: skip

    current = containers.run(pods.run("api", MIGRATE_CURRENT), suffix="current", image=app_image.image_id)
    assert current.returncode == 0, current.stderr[-4000:]
    state = last_json(current.stdout)
    assert state["up_to_date"] is True and state["current"] == state["heads"] and state["heads"]
