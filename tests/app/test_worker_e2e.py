"""End to end with a real Celery worker process and a real Redis broker: upload through the API,
the worker indexes, search finds the right document in every mode."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.ingest.dispatch import CeleryDispatcher
from tests.app.conftest import settings_from, wait_until
from tests.app.corpus import DOCS, QUERIES


@pytest.fixture
def worker_env(app_env_factory: Callable[..., dict[str, str]], redis_port: int) -> dict[str, str]:
    return app_env_factory(
        REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port), REDIS_DB="3",
        APERAG_HOST="127.0.0.1", HEALTH_PORT=str(free_port()),
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_worker_serves_health_endpoints_for_its_probes(
    worker_env: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    base = f"http://127.0.0.1:{worker_env['HEALTH_PORT']}"
    assert get_json(f"{base}/health/live") == (200, {"status": "ok"})
    assert get_json(f"{base}/health/ready") == (
        200, {"ready": True, "checks": {"redis": "ok", "database": "ok", "schema": "ok"}}
    )  # fmt: skip


@pytest.fixture
def worker(worker_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="aperag-worker-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "aperag.cli", "worker", "--concurrency", "1", "--loglevel", "INFO"],
        env={**os.environ, **worker_env, "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: b"ready." in Path(log.name).read_bytes() or proc.poll() is not None,
            120,
            "celery worker ready",
        )
        assert proc.poll() is None, Path(log.name).read_text()
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        Path(log.name).unlink(missing_ok=True)


def test_upload_indexed_by_worker_then_search(
    worker_env: dict[str, str], worker: subprocess.Popen[bytes], embedder_warm: None
) -> None:
    settings = settings_from(worker_env)
    ctx = AppContext(settings=settings, dispatcher=CeleryDispatcher(settings.redis_url))
    with TestClient(create_app(ctx)) as client:
        ready = client.get("/health/ready").json()
        assert ready["checks"]["redis"] == "ok", ready
        assert client.post("/api/v1/collections", json={"name": "kb"}).status_code == 201
        ids: dict[str, str] = {}
        for name, body in DOCS.items():
            resp = client.post(
                "/api/v1/collections/kb/documents",
                files={"file": (name, io.BytesIO(body.encode()), "text/plain")},
            )
            assert resp.status_code == 201, resp.text
            ids[name] = resp.json()["id"]

        def all_ready() -> bool:
            docs = client.get("/api/v1/collections/kb/documents").json()
            assert not any(d["status"] == "failed" for d in docs), docs
            return all(d["status"] == "ready" for d in docs)

        wait_until(all_ready, 180, "worker to index every document", interval=0.3)
        assert worker.poll() is None
        for mode in ("vector", "fulltext", "hybrid"):
            for query, expected in QUERIES:
                results = client.post(
                    "/api/v1/collections/kb/search", json={"query": query, "mode": mode, "top_k": 3}
                ).json()["results"]
                assert results and results[0]["document_id"] == ids[expected], (mode, query, results[:1])
        # Each ready document queued its graph build; the worker drains those too.
        dispatcher = ctx.dispatcher
        assert dispatcher is not None
        wait_until(lambda: dispatcher.queue_depth() == 0, 120, "the worker to drain the queue", interval=0.3)
