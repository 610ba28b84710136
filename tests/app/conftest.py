"""Fixtures for the app suite: a real embedded PostgreSQL (pgvector) and a real redis-server, started
once per session on free loopback ports and stopped at the end; the embedding model loaded once."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aperag.config import Settings, load_settings
from aperag.embedded_pg import EmbeddedPostgres, remove_server, temporary_server
from bench.common import redis_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wait_until(predicate: Callable[[], bool], timeout: float, message: str, interval: float = 0.1) -> None:
    """Poll a condition until it holds or the deadline passes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for: {message}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.app)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    server, base = temporary_server()
    try:
        yield server
    finally:
        remove_server(server, base)


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server); see tests/app/SETUP.md")
    with redis_server() as port:
        yield port


@pytest.fixture(scope="session")
def app_env_factory(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, str]]:
    """A fresh database per caller, migrated to head, and the environment pointing at it."""

    def make(migrate: bool = True, **extra: str) -> dict[str, str]:
        from aperag import migrate as migrations

        name = "t_" + uuid.uuid4().hex[:10]
        postgres.create_database(name)
        env = {
            **postgres.env(name),
            "OBJECT_STORE_TYPE": "local",
            "OBJECT_STORE_LOCAL_ROOT_DIR": str(tmp_path_factory.mktemp("objects")),
            "CHUNK_SIZE": "120",
            "CHUNK_OVERLAP_SIZE": "16",
            **extra,
        }
        if migrate:
            settings = load_settings(env)
            migrations.upgrade(settings.database_url)
            from aperag.context import AppContext

            AppContext(settings=settings).ensure_store_schemas()
        return env

    return make


@pytest.fixture(scope="session")
def embedder_warm() -> None:
    """Load the model once per session; every AppContext then shares the cached instance."""
    from aperag.embedding import get_embedder

    get_embedder(load_settings({}))


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def worker_process() -> Iterator[Callable[[dict[str, str]], object]]:
    """Start `aperag worker` processes with the given environment; all are stopped at the end."""
    import signal
    import subprocess
    import sys
    import tempfile

    started: list[tuple[subprocess.Popen[bytes], str]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = tempfile.NamedTemporaryFile(prefix="aperag-worker-", suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "aperag.cli", "worker", "--concurrency", "1", "--loglevel", "INFO"],
            env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "HEALTH_PORT": "0"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started.append((proc, log.name))
        wait_until(lambda: b"ready." in Path(log.name).read_bytes() or proc.poll() is not None, 120, "worker ready")
        assert proc.poll() is None, Path(log.name).read_text()
        return proc

    yield start
    for proc, log_name in started:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        Path(log_name).unlink(missing_ok=True)
