"""Alembic upgrade/downgrade on a database holding data, the advisory lock, the CLI's JSON reports, a
failing revision and a second head through the test-only migrations location, and the readiness
contract of the schema (behind: not ready; ahead: ready)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from aperag import migrate
from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.stores import IndexedChunk
from aperag.stores.pg_fulltext_store import PgFulltextStore
from tests.app.conftest import settings_from, wait_until
from tests.app.migration_fixtures import (
    failing_release,
    next_release,
    part_way_release,
    release_head,
    second_head,
)


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
    head = release_head()
    assert migrate.current(url) == {"current": [head], "heads": [head], "up_to_date": True}
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


def _sessions_waiting_on_a_lock(url: str, besides: int) -> int:
    rows = _sql(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND pid <> :besides",
        {"besides": besides},
    )
    return int(str(rows[0][0]))


def test_an_upgrade_under_writers_waits_for_them_instead_of_deadlocking(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    """A writer of the running release holds `chunks` and then writes `documents`, while the upgrade from
    0003 alters `documents` and then references `chunks` (0004): a lock-order cycle, which PostgreSQL
    breaks by aborting one of them, unless the upgrade takes its locks up front (migrate.lock_schema_tables)."""
    url = settings_from(app_env_factory(migrate=False)).database_url
    migrate.upgrade(url, "0003")
    _sql(url, "INSERT INTO collections (id, name) VALUES ('c1', 'kb')")
    _sql(
        url,
        "INSERT INTO documents (id, collection_id, filename, content_type, content_hash, size_bytes,"
        " object_key, status) VALUES ('d1', 'c1', 'a.txt', 'text/plain', 'h', 3, 'k', 'indexing')",
    )
    _sql(
        url,
        "INSERT INTO chunks (id, document_id, collection_id, ordinal, text, token_count, start_char, end_char)"
        " VALUES ('x1', 'd1', 'c1', 0, 'hello', 1, 0, 5)",
    )
    reports: list[migrate.Report] = []
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as writer:
        writer.execute(text("UPDATE chunks SET text = 'hello again' WHERE id = 'x1'"))
        writer_pid = int(writer.execute(text("SELECT pg_backend_pid()")).scalar_one())
        upgrade = threading.Thread(target=lambda: reports.append(migrate.upgrade(url)))
        upgrade.start()
        wait_until(lambda: _sessions_waiting_on_a_lock(url, writer_pid) > 0, 60, "the upgrade to wait for the writer")
        # The writer's second table: with the cycle, this or the upgrade fails with "deadlock detected".
        writer.execute(text("UPDATE documents SET status = 'ready' WHERE id = 'd1'"))
        writer.commit()
    upgrade.join(timeout=120)
    engine.dispose()
    assert len(reports) == 1 and reports[0].ok, reports
    assert reports[0].current == [release_head()]
    assert _sql(url, "SELECT d.status, c.text FROM documents d JOIN chunks c ON c.document_id = d.id") == [
        ("ready", "hello again")
    ]


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
    head = release_head()
    heads = _cli(env, "migrate", "heads")
    assert heads.returncode == 0, heads.stderr
    assert json.loads(heads.stdout) == {"heads": [head], "single": True}
    # Alembic's plugin announcements are silenced.
    assert "alembic.runtime.plugins" not in heads.stderr
    before = _cli(env, "migrate", "current")
    assert json.loads(before.stdout) == {"current": [], "heads": [head], "up_to_date": False}
    up = _cli(env, "migrate", "upgrade", "0001", "--skip-stores")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout.strip().splitlines()[-1])["current"] == ["0001"]
    up = _cli(env, "migrate", "upgrade")
    assert json.loads(up.stdout.strip().splitlines()[-1])["up_to_date"] is True
    down = _cli(env, "migrate", "downgrade", "base")
    assert json.loads(down.stdout.strip().splitlines()[-1])["current"] == []
    missing = _cli(env, "migrate", "downgrade")
    assert missing.returncode == 2 and "needs a revision" in missing.stderr


def test_cli_without_database_refuses_clearly() -> None:
    result = _cli({}, "migrate", "current")
    assert result.returncode == 2 and "POSTGRES_HOST" in result.stderr  # a configuration error


@pytest.mark.parametrize("bad", [{"VECTOR_DB_TYPE": "nope"}, {"CHUNK_SIZE": "x"}])
def test_cli_reports_config_errors(bad: dict[str, str]) -> None:
    result = _cli(bad, "migrate", "heads")
    assert result.returncode == 2 and "configuration error" in result.stderr


# --- reports, failures and the test-only migrations location ---------------------------------------


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON report: the last line of stdout."""
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error on stderr: one ``migrate: Reason: message`` line, never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("migrate: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_upgrade_report_goes_to_stdout_and_the_termination_file(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = app_env_factory(migrate=False)
    report_file = tmp_path / "termination-log"
    up = _cli({**env, migrate.REPORT_FILE_ENV: str(report_file)}, "migrate", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    head = release_head()
    report = _report(up)
    assert report == json.loads(report_file.read_text())
    assert report["ok"] is True and report["action"] == "upgrade" and report["target"] == "head"
    assert report["before"] == [] and report["current"] == [head] and report["heads"] == [head]
    assert report["changed"] is True and report["up_to_date"] is True
    # Nothing to do the second time: still a report, saying nothing changed. The flag beats the env.
    flagged = tmp_path / "flagged"
    again = _cli(env, "migrate", "upgrade", "head", "--report-file", str(flagged))
    assert _report(again)["changed"] is False and json.loads(flagged.read_text())["ok"] is True


def test_failing_revision_leaves_the_schema_where_it_was(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = app_env_factory()  # at the release's head, with the store schemas
    url = settings_from(env).database_url
    head = release_head()
    _sql(url, "INSERT INTO collections (id, name) VALUES ('c1', 'kept')")
    extra = failing_release(tmp_path / "extra")
    result = _cli({**env, migrate.EXTRA_DIR_ENV: str(extra)}, "migrate", "upgrade", "head")
    assert result.returncode == 1
    report = _report(result)
    assert report["ok"] is False and report["reason"] == "MigrationFailed"
    assert "table_that_does_not_exist" in str(report["message"])
    # The good revision of the same run was rolled back with the failing one: one transaction.
    assert report["before"] == [head] and report["current"] == [head] and report["changed"] is False
    assert report["heads"] == ["t_broken"]
    assert "MigrationFailed" in _one_line_error(result)
    assert migrate.current(url)["current"] == [head]
    assert "half_done" not in inspect(create_engine(url)).get_table_names()
    assert "broken" not in _columns(url, "documents")
    assert _sql(url, "SELECT name FROM collections") == [("kept",)]


def test_a_failure_after_an_autocommit_block_reports_the_committed_part(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """A revision with an autocommit block (CREATE INDEX CONCURRENTLY) commits the run before it: when
    it then fails, the report names the revision the schema was left at (changed), and the downgrade
    to the revision before the run removes it with the data written before intact."""
    env = app_env_factory()
    url = settings_from(env).database_url
    head = release_head()
    _sql(url, "INSERT INTO collections (id, name) VALUES ('c1', 'kept')")
    part_way = {**env, migrate.EXTRA_DIR_ENV: str(part_way_release(tmp_path / "extra"))}
    result = _cli(part_way, "migrate", "upgrade", "head")
    assert result.returncode == 1
    report = _report(result)
    assert report["reason"] == "MigrationFailed" and "table_that_does_not_exist" in str(report["message"])
    assert report["before"] == [head] and report["current"] == ["t_audit"] and report["changed"] is True
    tables = inspect(create_engine(url)).get_table_names()
    assert "audit_log" in tables and "audited" not in _columns(url, "documents")
    assert _sql(url, "SELECT indexname FROM pg_indexes WHERE indexname = 'audit_log_entry'") == [("audit_log_entry",)]
    down = _cli(part_way, "migrate", "downgrade", head)
    assert down.returncode == 0, down.stderr
    assert _report(down)["current"] == [head]
    assert "audit_log" not in inspect(create_engine(url)).get_table_names()
    assert _sql(url, "SELECT name FROM collections") == [("kept",)]


def test_second_head_is_refused_before_the_database_is_touched(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = app_env_factory(migrate=False)
    url = settings_from(env).database_url
    forked = {**env, migrate.EXTRA_DIR_ENV: str(second_head(tmp_path / "extra"))}
    heads = _cli(forked, "migrate", "heads")
    assert json.loads(heads.stdout) == {"heads": sorted([release_head(), "t_fork"]), "single": False}
    result = _cli(forked, "migrate", "upgrade", "head")
    assert result.returncode == 1
    report = _report(result)
    assert report["reason"] == "MultipleHeads" and report["changed"] is False
    assert "before" not in report and "current" not in report  # it never connected
    assert "t_fork" in str(report["message"]) and release_head() in str(report["message"])
    assert "MultipleHeads" in _one_line_error(result)
    # Not even Alembic's version table was created.
    assert "alembic_version" not in inspect(create_engine(url)).get_table_names()


def test_unknown_revision_is_one_line_not_a_traceback(app_env_factory: Callable[..., dict[str, str]]) -> None:
    env = app_env_factory()
    result = _cli(env, "migrate", "downgrade", "no_such_revision")
    assert result.returncode == 1
    assert _report(result)["reason"] == "UnknownRevision"
    assert "no_such_revision" in _one_line_error(result)


def test_an_older_release_meets_a_newer_schema(app_env_factory: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    """The database was migrated by a newer release: the older code's upgrade refuses and changes
    nothing, naming the revision it does not know (what the operator reads to refuse a version)."""
    env = app_env_factory()
    newer = {**env, migrate.EXTRA_DIR_ENV: str(next_release(tmp_path / "extra"))}
    assert _cli(newer, "migrate", "upgrade", "head").returncode == 0
    result = _cli(env, "migrate", "upgrade", "head")
    assert result.returncode == 1
    report = _report(result)
    assert report["reason"] == "UnknownRevision" and report["changed"] is False
    assert report["current"] == ["t_next"] and "newer release" in str(report["message"])


def test_unreachable_database_is_a_retryable_exit_code(app_env_factory: Callable[..., dict[str, str]]) -> None:
    env = {**app_env_factory(migrate=False), "POSTGRES_PORT": "1"}
    result = _cli(env, "migrate", "upgrade", "head")
    assert result.returncode == 3
    assert _report(result)["reason"] == "DatabaseUnavailable"
    _one_line_error(result)


def test_missing_database_settings_still_report(tmp_path: Path) -> None:
    report_file = tmp_path / "report"
    result = _cli({migrate.REPORT_FILE_ENV: str(report_file)}, "migrate", "upgrade", "head")
    assert result.returncode == 2
    assert json.loads(report_file.read_text())["reason"] == "NotConfigured"


def test_report_fits_the_termination_message_limit() -> None:
    report = migrate.Report(
        ok=False, action="upgrade", target="head", heads=["0002"], before=["0001"], current=["0001"],
        reason="MigrationFailed", message="x" * 10_000,
    )  # fmt: skip
    encoded = report.to_json()
    assert len(encoded.encode()) <= migrate.REPORT_LIMIT
    decoded = json.loads(encoded)
    assert decoded["reason"] == "MigrationFailed" and decoded["current"] == ["0001"]
    assert decoded["message"].endswith("...")


def test_downgrade_to_base_drops_the_store_tables(app_env_factory: Callable[..., dict[str, str]]) -> None:
    """Nothing the migrations or the stores created in PostgreSQL outlives `downgrade base`: neither the
    tables (vector, BM25, the tsvector table, the queue of the previous release's writes) nor the
    trigger's function, so no row comes back orphaned after the next upgrade."""
    env = app_env_factory(migrate=False)
    url = settings_from(env).database_url
    assert _cli(env, "migrate", "upgrade", "head").returncode == 0  # creates the store tables too
    PgFulltextStore(url).upsert([IndexedChunk("x", "d", "c", "alpha")])
    _sql(url, "INSERT INTO fts_pending (chunk_id) VALUES ('y')")
    _sql(
        url,
        "INSERT INTO vector_chunks (chunk_id, document_id, collection_id, embedding) "
        "VALUES ('x', 'd', 'c', CAST(:v AS vector))",
        {"v": "[" + ",".join(["0.1"] * 384) + "]"},
    )
    store_tables = {
        "vector_chunks", "fulltext_chunks", "fts_chunks", "fts_terms", "fts_postings", "fts_collections",
        "fts_pending",
    }  # fmt: skip
    for table in store_tables:
        assert _sql(url, f"SELECT count(*) FROM {table}") == [(1,)], table
    down = _cli(env, "migrate", "downgrade", "base")
    assert down.returncode == 0, down.stderr
    # Alembic keeps its (now empty) version table; nothing else is left.
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}
    # No function either, other than the pgvector extension's (left installed: it holds no rows).
    functions = (
        "SELECT proname FROM pg_proc p WHERE pronamespace = 'public'::regnamespace"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
    )
    assert _sql(url, functions) == []
    assert _cli(env, "migrate", "upgrade", "head").returncode == 0
    for table in store_tables:
        assert _sql(url, f"SELECT count(*) FROM {table}") == [(0,)], table


# --- readiness contract -------------------------------------------------------------------------------


@pytest.fixture
def extra_dir_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path | None], None]:
    """Sets or clears the test-only migrations location in this process (restored afterwards)."""

    def use(directory: Path | None) -> None:
        if directory is None:
            monkeypatch.delenv(migrate.EXTRA_DIR_ENV, raising=False)
        else:
            monkeypatch.setenv(migrate.EXTRA_DIR_ENV, str(directory))

    return use


def test_not_ready_while_the_schema_is_behind(app_env_factory: Callable[..., dict[str, str]]) -> None:
    env = app_env_factory()
    url = settings_from(env).database_url
    migrate.downgrade(url, "0001")
    ctx = AppContext(settings=settings_from(env))
    with TestClient(create_app(ctx)) as client:
        resp = client.get("/health/ready")
        assert resp.status_code == 503
        checks = resp.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["schema"].startswith("error: database schema at 0001")


def test_ready_when_the_schema_is_ahead(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path, extra_dir_env: Callable[[Path | None], None]
) -> None:
    """An old pod during a rollout (or after a rollback) keeps serving on the newer schema."""
    env = app_env_factory()
    url = settings_from(env).database_url
    extra_dir_env(next_release(tmp_path / "extra"))
    migrate.upgrade(url)
    extra_dir_env(None)  # this process is now the older release
    assert migrate.current(url)["current"] == ["t_next"]
    ctx = AppContext(settings=settings_from(env))
    with TestClient(create_app(ctx)) as client:
        resp = client.get("/health/ready")
        assert resp.status_code == 200, resp.text
        assert resp.json()["checks"]["schema"] == "ok"


def test_schema_check_caches_then_sees_the_migration(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    env = app_env_factory(migrate=False)
    url = settings_from(env).database_url
    engine = create_engine(url)
    now = [1000.0]
    check = migrate.SchemaCheck(lambda: engine, ttl=5.0, clock=lambda: now[0])
    try:
        with pytest.raises(migrate.SchemaBehind, match="never migrated"):
            check()
        migrate.upgrade(url)
        now[0] += 4.9  # still cached: probes do not query the database every time
        with pytest.raises(migrate.SchemaBehind):
            check()
        now[0] += 0.2
        check()
        assert check.state().position == "current"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "database, position",
    [([], "behind"), (["0001"], "behind"), (["HEAD"], "current"), (["from_the_future"], "ahead")],
)
def test_schema_position(database: list[str], position: str) -> None:
    head = release_head()
    revisions = [head if rev == "HEAD" else rev for rev in database]
    assert migrate.schema_position(revisions, migrate.script_directory()).position == position
