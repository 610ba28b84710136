"""`aperag serve` with no database configured, as real processes: embedded PostgreSQL + in-process
worker in one command; SIGTERM while indexing; SIGKILL and the next start; the CLI against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aperag.embedded_pg import free_port
from tests.app.conftest import wait_until

KEY = {"Authorization": "Bearer k"}
BEES = b"Honeybees communicate the location of flowers with a waggle dance inside the hive."


def _pg_log(home: Path) -> str:
    try:
        return (home / "pgdata.log").read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return ""


def _postmaster_alive(home: Path) -> bool:
    """True while the PostgreSQL whose pid is in HOME/pgdata/postmaster.pid runs."""
    try:
        pid = int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False


class Serve:
    """One `aperag serve` process on a data directory, started the way a user starts it."""

    def __init__(self, tmp: Path, home: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "EMBEDDED_PG_DATA_DIR": str(home),
            "APERAG_HOST": "127.0.0.1",
            "APERAG_PORT": str(self.port),
            "APERAG_API_KEYS": "k",
            **extra_env,
        }
        self.log = tmp / f"serve-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aperag.cli", "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.client = httpx.Client(base_url=self.base, headers=KEY, timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                return httpx.get(f"{self.base}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "embedded aperag serve to become ready", interval=0.3)

    def status(self, collection: str, doc_id: str) -> str:
        return str(self.client.get(f"/api/v1/collections/{collection}/documents/{doc_id}").json()["status"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env.items() if k not in ("APERAG_PORT",)}
        return subprocess.run(
            [sys.executable, "-m", "aperag.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )

    def terminate(self, timeout: float) -> float:
        """SIGTERM to the server only, as a container runtime or Ctrl+C delivers it; seconds to exit."""
        started = time.monotonic()
        self.proc.terminate()
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, PostgreSQL runs as another user, and every pytest session
    # (here or in a parallel run) resets /tmp/pytest-of-<user> to mode 0700, cutting it off.
    base = Path(tempfile.mkdtemp(prefix="aperag-serve-"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir(mode=0o755)
    try:
        yield home
        # Whatever a test did, no PostgreSQL is left behind on its data directory.
        if _postmaster_alive(home):
            pid = int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            pytest.fail("a PostgreSQL server was left running")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_one_command_upload_search_and_the_cli(tmp_path: Path, home: Path) -> None:
    serve = Serve(tmp_path, home)
    try:
        serve.wait_ready()
        # Where the data is and where the API listens, said at start.
        assert f"data directory {home}" in serve.output() and f"API on {serve.base}" in serve.output()
        client = serve.client
        assert client.post("/api/v1/collections", json={"name": "local"}).status_code == 201
        doc = client.post("/api/v1/collections/local/documents", files={"file": ("bees.txt", BEES)}).json()

        def indexed() -> bool:
            status = serve.status("local", doc["id"])
            assert status != "failed"
            return status == "ready"

        wait_until(indexed, 120, "in-process worker to index the upload", interval=0.3)
        for mode in ("vector", "fulltext", "hybrid"):
            hits = client.post(
                "/api/v1/collections/local/search", json={"query": "how do bees tell where flowers are", "mode": mode}
            ).json()["results"]
            assert hits and hits[0]["document_id"] == doc["id"], mode

        # The CLI finds the running embedded instance: no POSTGRES_HOST needed.
        notes = tmp_path / "notes"
        notes.mkdir()
        (notes / "okapi.md").write_text("The `okapi_johnstoni` is a giraffid with zebra-striped legs.")
        ingest = serve.cli("ingest", str(notes), "--collection", "local")
        assert ingest.returncode == 0, ingest.stderr
        assert json.loads(ingest.stdout)["documents"][0]["status"] == "ready"
        found = serve.cli("search", "okapi_johnstoni zebra legs", "--collection", "local", "--mode", "fulltext")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["results"][0]["filename"] == "okapi.md"
        current = serve.cli("migrate", "current")
        assert current.returncode == 0, current.stderr
        assert json.loads(current.stdout.strip().splitlines()[-1])["up_to_date"] is True
        # ...and the API serves what the CLI indexed.
        listed = {d["filename"]: d["status"] for d in client.get("/api/v1/collections/local/documents").json()}
        assert listed == {"bees.txt": "ready", "okapi.md": "ready"}

        # A second server on the same data directory is refused with one clear line.
        second = subprocess.run(
            [sys.executable, "-m", "aperag.cli", "serve"],
            env={**serve.env, "APERAG_PORT": str(free_port())}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"is in use by aperag serve pid {serve.proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert serve.proc.poll() is None
    finally:
        serve.close()
    assert not _postmaster_alive(home), serve.output()[-2000:]
    # With the server gone, the CLI says so in one line and exits 2 (a configuration error).
    gone = serve.cli("search", "bees", "--collection", "local")
    assert gone.returncode == 2
    assert gone.stderr.strip().splitlines()[-1].startswith("configuration error: POSTGRES_HOST is not set")
    assert "Traceback" not in gone.stderr
    no_server = serve.cli("migrate", "current")
    assert no_server.returncode == 2 and "Traceback" not in no_server.stderr


def _upload_long_document(serve: Serve, collection: str, sentences: int) -> str:
    """A document that keeps the in-process worker busy for a while (~10 sentences per chunk)."""
    serve.client.post("/api/v1/collections", json={"name": collection})
    body = " ".join(f"Sentence {i} describes the migration of monarch butterfly number {i}." for i in range(sentences))
    doc = serve.client.post(
        f"/api/v1/collections/{collection}/documents", files={"file": ("long.txt", body.encode())}
    ).json()
    wait_until(lambda: serve.status(collection, doc["id"]) == "indexing", 60, "indexing to start", interval=0.1)
    return str(doc["id"])


def test_sigterm_while_indexing_exits_within_the_grace_period(tmp_path: Path, home: Path) -> None:
    serve = Serve(tmp_path, home, SHUTDOWN_GRACE_SECONDS="3")
    try:
        serve.wait_ready()
        # Longer than the grace period on this machine: the batch is abandoned, not awaited.
        _upload_long_document(serve, "big", sentences=800)
        try:
            elapsed = serve.terminate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 60 s after SIGTERM:\n{serve.output()[-3000:]}\n{_pg_log(home)}")
        # 3 s grace for open requests, 3 s for the running batch, then PostgreSQL's fast shutdown.
        assert elapsed < 20, (elapsed, serve.output()[-3000:], _pg_log(home))
        assert serve.proc.returncode in (0, -signal.SIGTERM), serve.output()[-3000:]
        assert not _postmaster_alive(home), serve.output()[-3000:]
        assert "embedded PostgreSQL stopped in" in serve.output(), serve.output()[-3000:]
        assert "Traceback" not in serve.output(), serve.output()[-3000:]
    finally:
        serve.close()


def test_sigkill_leaves_postgres_that_the_next_start_recovers(tmp_path: Path, home: Path) -> None:
    first = Serve(tmp_path, home)
    try:
        first.wait_ready()
        doc_id = _upload_long_document(first, "big", sentences=300)
        small = first.client.post("/api/v1/collections/big/documents", files={"file": ("bees.txt", BEES)}).json()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        first.close()
    # The kill orphaned PostgreSQL: it still runs on the data directory.
    assert _postmaster_alive(home)
    second = Serve(tmp_path, home)
    try:
        second.wait_ready()
        assert "left running on" in second.output()
        # The documents the killed run was working on are indexed without anyone asking.
        for document_id in (doc_id, small["id"]):

            def done(document_id: str = document_id) -> bool:
                status = second.status("big", document_id)
                assert status != "failed", status
                return status == "ready"

            wait_until(done, 300, f"document {document_id} to be recovered and indexed", interval=0.5)
    finally:
        second.close()
    assert not _postmaster_alive(home), second.output()[-2000:]
