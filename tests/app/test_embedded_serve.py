"""`aperag serve` with no database configured: embedded PostgreSQL + in-process worker, one command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aperag.embedded_pg import free_port
from tests.app.conftest import wait_until


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "EMBEDDED_PG_DATA_DIR": str(home),
        "APERAG_HOST": "127.0.0.1",
        "APERAG_PORT": str(port),
        "APERAG_API_KEYS": "k",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aperag.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 120, "embedded aperag serve to become ready", interval=0.3)
        yield base
    finally:
        # SIGTERM to the server only, as a container runtime or Ctrl+C delivers it.
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # The embedded PostgreSQL is stopped with the server, not left behind.
    assert not (home / "pgdata" / "postmaster.pid").exists(), log.read_text()[-2000:]


def test_one_command_upload_and_search(embedded_server: str) -> None:
    headers = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=embedded_server, headers=headers, timeout=30) as client:
        assert client.post("/api/v1/collections", json={"name": "local"}).status_code == 201
        text = b"Honeybees communicate the location of flowers with a waggle dance inside the hive."
        doc = client.post("/api/v1/collections/local/documents", files={"file": ("bees.txt", text)}).json()

        def indexed() -> bool:
            status = client.get(f"/api/v1/collections/local/documents/{doc['id']}").json()["status"]
            assert status != "failed"
            return bool(status == "ready")

        wait_until(indexed, 120, "in-process worker to index the upload", interval=0.3)
        for mode in ("vector", "fulltext", "hybrid"):
            hits = client.post(
                "/api/v1/collections/local/search",
                json={"query": "how do bees tell where flowers are", "mode": mode},
            ).json()["results"]
            assert hits and hits[0]["document_id"] == doc["id"], mode
