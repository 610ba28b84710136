"""Schema migrations under a PostgreSQL advisory lock.

The operator runs `aperag migrate upgrade` once per rollout as a Job; the lock makes a second runner
(a retried Job, a developer's shell) wait instead of migrating concurrently. The API never calls this.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

# Arbitrary but fixed: every aperag process agrees on it. "aperag" in ASCII.
MIGRATION_LOCK_KEY = 0x617065726167

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def locked_connection(url: str, lock_timeout_seconds: int = 600) -> Iterator[Connection]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(
                text("SELECT set_config('lock_timeout', :t, false)"), {"t": f"{lock_timeout_seconds}s"}
            )
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            # Session-level lock: commit the implicit transaction so alembic starts clean while the
            # lock stays held until we release it.
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def _run(url: str, action: str, revision: str) -> None:
    cfg = alembic_config(url)
    with locked_connection(url) as conn:
        cfg.attributes["connection"] = conn
        if action == "upgrade":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)
        conn.commit()


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    _run(url, "downgrade", revision)


def heads() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    return list(script.get_heads())


def current(url: str) -> dict[str, Any]:
    """Machine-readable state: the operator's Job and tests parse this JSON."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            revs = list(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    head_revs = heads()
    return {
        "current": sorted(revs),
        "heads": sorted(head_revs),
        "up_to_date": sorted(revs) == sorted(head_revs),
    }


def current_json(url: str) -> str:
    return json.dumps(current(url), sort_keys=True)
