"""Alembic upgrade/downgrade on a database holding data, the advisory lock, and the CLI's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, inspect, text

from aperag import migrate
from tests.app.conftest import settings_from


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def _sql(url: str, sql: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def test_upgrade_downgrade_roundtrip_keeps_data(app_env_factory: Callable[..., dict[str, str]]) -> None:
    url = settings_from(app_env_factory(migrate=False)).database_url
    assert migrate.current(url)["current"] == []
    migrate.upgrade(url)
    assert migrate.current(url) == {"current": ["0002"], "heads": ["0002"], "up_to_date": True}
    _sql(url, "INSERT INTO collections (id, name) VALUES ('c1', 'kept')")
    _sql(
        url,
        "INSERT INTO documents (id, collection_id, filename, content_type, content_hash, size_bytes,"
        " object_key,"
        " status, attempts) VALUES ('d1', 'c1', 'a.txt', 'text/plain', 'h', 3, 'k', 'ready', 4)",
    )
    _sql(
        url,
        "INSERT INTO chunks (id, document_id, collection_id, ordinal, text, token_count,"
        " start_char, end_char)"
        " VALUES ('x1', 'd1', 'c1', 0, 'hello', 1, 0, 5)",
    )

    migrate.downgrade(url, "0001")
    assert migrate.current(url)["current"] == ["0001"]
    assert "attempts" not in _columns(url, "documents")
    migrate.upgrade(url, "head")
    assert "attempts" in _columns(url, "documents")
    # Tables present in both revisions kept their rows; the re-added column got its default.
    assert _sql(url, "SELECT name FROM collections") == [("kept",)]
    assert _sql(url, "SELECT id, status, attempts FROM documents") == [("d1", "ready", 0)]
    assert _sql(url, "SELECT text FROM chunks") == [("hello",)]

    migrate.downgrade(url, "base")
    assert migrate.current(url)["current"] == []
    assert not {"collections", "documents", "chunks"} & set(inspect(create_engine(url)).get_table_names())
    migrate.upgrade(url)
    assert migrate.current(url)["up_to_date"]


def test_advisory_lock_serialises_runners(app_env_factory: Callable[..., dict[str, str]]) -> None:
    url = settings_from(app_env_factory(migrate=False)).database_url
    finished = threading.Event()
    errors: list[BaseException] = []

    def second_runner() -> None:
        try:
            migrate.upgrade(url)
            finished.set()
        except BaseException as exc:
            errors.append(exc)

    with migrate.locked_connection(url):
        worker = threading.Thread(target=second_runner)
        worker.start()
        # While we hold the lock the other runner must be blocked: it cannot finish.
        assert not finished.wait(1.5)
    worker.join(timeout=60)
    assert not errors and finished.is_set()
    assert migrate.current(url)["up_to_date"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aperag.cli", *args],
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_migrate_commands_print_json(app_env_factory: Callable[..., dict[str, str]]) -> None:
    env = app_env_factory(migrate=False)
    heads = _cli(env, "migrate", "heads")
    assert heads.returncode == 0, heads.stderr
    assert json.loads(heads.stdout) == {"heads": ["0002"]}
    before = _cli(env, "migrate", "current")
    assert json.loads(before.stdout) == {"current": [], "heads": ["0002"], "up_to_date": False}
    up = _cli(env, "migrate", "upgrade", "0001", "--skip-stores")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout.strip().splitlines()[-1])["current"] == ["0001"]
    up = _cli(env, "migrate", "upgrade")
    assert json.loads(up.stdout.strip().splitlines()[-1])["up_to_date"] is True
    down = _cli(env, "migrate", "downgrade", "base")
    assert json.loads(down.stdout.strip().splitlines()[-1])["current"] == []
    missing = _cli(env, "migrate", "downgrade")
    assert missing.returncode != 0


def test_cli_without_database_refuses_clearly() -> None:
    result = _cli({}, "migrate", "current")
    assert result.returncode != 0 and "POSTGRES_HOST" in result.stderr


@pytest.mark.parametrize("bad", [{"VECTOR_DB_TYPE": "nope"}, {"CHUNK_SIZE": "x"}])
def test_cli_reports_config_errors(bad: dict[str, str]) -> None:
    result = _cli(bad, "migrate", "heads")
    assert result.returncode == 2 and "configuration error" in result.stderr
