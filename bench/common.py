"""Shared helpers for the app benchmarks: a real embedded PostgreSQL (pgvector), a migrated database,
an AppContext on it, and machine facts for the reports."""

from __future__ import annotations

import os
import platform
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aperag.config import load_settings
from aperag.context import AppContext
from aperag.embedded_pg import EmbeddedPostgres, remove_server, temporary_server

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
