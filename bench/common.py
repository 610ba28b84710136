"""Shared helpers for the app benchmarks: a real embedded PostgreSQL (pgvector), a migrated database,
an AppContext on it, and machine facts for the reports."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aperag.config import load_settings
from aperag.context import AppContext
from aperag.embedded_pg import EmbeddedPostgres, free_port, remove_server, temporary_server

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchDatabase:
    server: EmbeddedPostgres
    env: dict[str, str]
    ctx: AppContext


@contextmanager
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    """A throw-away PostgreSQL 18 + pgvector on a free 127.0.0.1 port, stopped and removed at the end."""
    server, base = temporary_server()
    try:
        yield server
    finally:
        from aperag.db.session import dispose_all

        dispose_all()
        remove_server(server, base)


def new_database(server: EmbeddedPostgres, objects_dir: Path, **extra: str) -> BenchDatabase:
    """A fresh database migrated to head with the store schemas, and a context on it."""
    from aperag import migrate

    name = "bench_" + uuid.uuid4().hex[:8]
    server.create_database(name)
    env = {
        **server.env(name),
        "OBJECT_STORE_TYPE": "local",
        "OBJECT_STORE_LOCAL_ROOT_DIR": str(objects_dir),
        **extra,
    }
    settings = load_settings(env)
    migrate.upgrade(settings.database_url)
    ctx = AppContext(settings=settings)
    ctx.ensure_store_schemas()
    return BenchDatabase(server=server, env=env, ctx=ctx)


def server_version(ctx: AppContext) -> str:
    from sqlalchemy import text

    with ctx.sessions() as session:
        pg = str(session.execute(text("SHOW server_version")).scalar_one())
        vec = session.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    return f"PostgreSQL {pg}, pgvector {vec}"


def machine_facts() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs, {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, {platform.machine()}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in 0..100)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if 0 < q < 100 else max(values)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    workdir = tempfile.mkdtemp(prefix="aperag-bench-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until(answers, 20, "redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
