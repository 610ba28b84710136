"""Fixtures for the app suite: the embedding model loaded once, and `aperag` processes (workers). The real
PostgreSQL, Redis and per-test databases (`postgres`, `redis_port`, `app_env_factory`) are in tests/conftest.py,
shared with the real-node and browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from aperag.config import Settings, load_settings
from tests.harness.marks import mark_tests_under

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
    mark_tests_under(Path(__file__).parent, items, pytest.mark.app)


@pytest.fixture(scope="session")
def embedder_warm() -> None:
    """Load the model once per session; every AppContext then shares the cached instance."""
    from aperag.embedding import get_embedder

    get_embedder(load_settings({}))


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(env)


@dataclass(frozen=True)
class AperagProcess:
    """One `python -m aperag.cli ...` process and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def aperag_processes() -> Iterator[Callable[[Sequence[str], dict[str, str], bytes, str], AperagProcess]]:
    """Start `python -m aperag.cli ARGS` processes with an environment, each waited on until its log holds a
    line saying it is ready; all are stopped (SIGTERM, then SIGKILL) when the block ends. The
    `worker_process` fixture uses it, and so do session-scoped servers (tests/browser)."""
    started: list[AperagProcess] = []

    def start(args: Sequence[str], env: dict[str, str], ready: bytes, what: str) -> AperagProcess:
        log = tempfile.NamedTemporaryFile(prefix=f"aperag-{args[0]}-", suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "aperag.cli", *args],
            env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "HEALTH_PORT": "0"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started.append(AperagProcess(proc, Path(log.name)))
        wait_until(lambda: ready in Path(log.name).read_bytes() or proc.poll() is not None, 120, what)
        assert proc.poll() is None, started[-1].output()
        return started[-1]

    try:
        yield start
    finally:
        for each in started:
            os.killpg(each.proc.pid, signal.SIGTERM)
            try:
                each.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(each.proc.pid, signal.SIGKILL)
                each.proc.wait(timeout=10)
            each.log.unlink(missing_ok=True)


WORKER_ARGS = ("worker", "--concurrency", "1", "--loglevel", "INFO")


@pytest.fixture
def worker_process() -> Iterator[Callable[[dict[str, str]], object]]:
    """Start `aperag worker` processes with the given environment; all are stopped at the end."""
    with aperag_processes() as start:
        yield lambda env: start(WORKER_ARGS, env, b"ready.", "worker ready").proc
