"""What a scale-down does to a worker in the middle of a task, with real Celery workers, a real Redis
broker and a real PostgreSQL: SIGTERM (the kubelet's first signal) is Celery's warm shutdown, so the
running task finishes before the process exits and is not run twice; SIGKILL (a grace period run out, an
OOM kill) loses nothing either: the task was acknowledged late, so after the broker's visibility timeout
another worker runs it again.

The embedding service is a fake OpenAI-compatible endpoint that holds every request until the test
opens its gate: that is how a task is kept "in the middle" for as long as the test needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.ingest.dispatch import CeleryDispatcher
from tests.app.conftest import settings_from, wait_until
from tests.app.test_worker_e2e import free_port

DIMENSION = 384
VISIBILITY_TIMEOUT = 5


class HeldEmbeddings:
    """An OpenAI-compatible /embeddings endpoint whose answers wait for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.requests: list[list[str]] = []
        self.answered = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(list(body["input"]))
                owner.gate.wait(timeout=120)
                data = [{"index": i, "embedding": vector(text)} for i, text in enumerate(body["input"])]
                payload = json.dumps({"data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                owner.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the answer to a killed worker finds its socket closed

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def vector(text: str) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    return [((seed[i % len(seed)] + i) % 17) / 17.0 + 0.01 for i in range(DIMENSION)]


@pytest.fixture
def embeddings() -> Iterator[HeldEmbeddings]:
    service = HeldEmbeddings()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def env(app_env_factory: Callable[..., dict[str, str]], redis_port: int, embeddings: HeldEmbeddings) -> dict[str, str]:
    return app_env_factory(
        REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port), REDIS_DB="5",
        EMBEDDING_BACKEND="openai", EMBEDDING_API_BASE=embeddings.url, EMBEDDING_MODEL="held",
        BROKER_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_TIMEOUT),
        # Only the broker redelivers here: the beat's stuck-document recovery is far away.
        STUCK_AFTER_SECONDS="3600",
    )  # fmt: skip


class Worker:
    """``aperag worker`` as a process of its own (its own session, like a container's processes)."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"aperag-worker-{name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aperag.cli", "worker", "--concurrency", "1", "--loglevel", "INFO"],
                env={**os.environ, **env, "HEALTH_PORT": str(free_port()), "HF_HUB_OFFLINE": "1"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: b"ready." in self.log.read_bytes() or self.proc.poll() is not None, 120, f"{name} ready")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Callable[[str], Worker]]:
    started: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(env, name)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def upload(client: TestClient, name: str, text: str) -> str:
    if client.get("/api/v1/collections/kb").status_code == 404:
        assert client.post("/api/v1/collections", json={"name": "kb"}).status_code == 201
    files = {"file": (name, io.BytesIO(text.encode()), "text/plain")}
    resp = client.post("/api/v1/collections/kb/documents", files=files)
    assert resp.status_code == 201, resp.text
    document_id: str = resp.json()["id"]
    return document_id


def document_status(client: TestClient, document_id: str) -> str:
    docs = client.get("/api/v1/collections/kb/documents").json()
    return str(next(d["status"] for d in docs if d["id"] == document_id))


def broker(env: dict[str, str]) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=int(env["REDIS_PORT"]), db=int(env["REDIS_DB"]))


TEXT = "Glaciers are slow rivers of ice. They carve valleys, leave moraines and feed rivers in summer."


def test_sigterm_lets_the_running_task_finish_and_it_runs_once(
    env: dict[str, str], embeddings: HeldEmbeddings, workers: Callable[[str], Worker]
) -> None:
    settings = settings_from(env)
    with TestClient(create_app(AppContext(settings=settings, dispatcher=CeleryDispatcher(settings.redis_url)))) as api:
        worker = workers("warm")
        document = upload(api, "glaciers.txt", TEXT)
        wait_until(lambda: len(embeddings.requests) == 1, 60, "the task in the middle of its embedding call")

        worker.proc.send_signal(signal.SIGTERM)  # to the main process, as the kubelet does to PID 1
        wait_until(lambda: "Warm shutdown" in worker.text(), 30, "Celery's warm shutdown")
        assert worker.proc.poll() is None, "the worker left before its running task finished"
        assert broker(env).llen("celery") == 0  # it takes nothing new meanwhile

        embeddings.gate.set()
        wait_until(lambda: worker.proc.poll() is not None, 60, "the worker exits once the task is done")
        assert worker.proc.returncode == 0, worker.text()
        assert document_status(api, document) == "ready"
        assert len(embeddings.requests) == 1  # run once: acknowledged when it finished, not delivered again
        assert broker(env).hlen("unacked") == 0


def test_a_killed_workers_task_is_run_again_by_another_worker(
    env: dict[str, str], embeddings: HeldEmbeddings, workers: Callable[[str], Worker]
) -> None:
    settings = settings_from(env)
    with TestClient(create_app(AppContext(settings=settings, dispatcher=CeleryDispatcher(settings.redis_url)))) as api:
        first = workers("first")
        document = upload(api, "glaciers.txt", TEXT)
        wait_until(lambda: len(embeddings.requests) == 1, 60, "the task in the middle of its embedding call")
        assert document_status(api, document) == "indexing"

        os.killpg(first.proc.pid, signal.SIGKILL)  # kill -9: no warm shutdown, no acknowledgement
        first.proc.wait(timeout=10)
        assert broker(env).hlen("unacked") == 1  # taken, never acknowledged (acks late)
        embeddings.gate.set()

        second = workers("second")
        wait_until(lambda: document_status(api, document) == "ready", VISIBILITY_TIMEOUT + 60,
                   "the task delivered again and run by the second worker")  # fmt: skip
        assert len(embeddings.requests) == 2 and embeddings.requests[1] == embeddings.requests[0]
        assert "aperag.index_document" in second.text() and "succeeded" in second.text()
        # A ready document queues its follow-up (aperag.build_graph), which the second worker takes too.
        wait_until(lambda: broker(env).hlen("unacked") == 0 and broker(env).llen("celery") == 0, 60,
                   "every task acknowledged, the follow-up included")  # fmt: skip
