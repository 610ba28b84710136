"""Schema migrations under a PostgreSQL advisory lock, the report the operator reads, and the readiness
check of the schema.

The operator runs ``aperag migrate upgrade head`` (or ``downgrade REV``) as a Job; the lock makes a
second runner (a retried Job, a developer's shell) wait instead of migrating concurrently. The API
never migrates. Every run ends in one JSON :class:`Report`, printed on stdout and written to the
Kubernetes termination-message file, so the operator reads the schema revision reached from the pod's
``state.terminated.message``.

A run is one transaction: every revision of it, and the ``alembic_version`` row, commit together or not
at all (PostgreSQL has transactional DDL). A revision that fails part-way therefore leaves the schema
exactly where the run found it, and the report says so (``changed: false``). The one exception is
Alembic's ``autocommit_block`` (for statements PostgreSQL refuses inside a transaction, such as
``CREATE INDEX CONCURRENTLY``): it commits everything the run did before it, so a failure after it
leaves the schema at the last revision stamped before the block, and the report says ``changed: true``
with that revision as ``current`` (the operator then downgrades).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# Arbitrary but fixed: every aperag process agrees on it. "aperag" in ASCII.
MIGRATION_LOCK_KEY = 0x617065726167

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"

#: TEST ONLY: more Alembic version directories (separated by ``os.pathsep``), so tests and test images
#: can add a revision that fails part-way or a second head. Never set it in production.
EXTRA_DIR_ENV = "APERAG_MIGRATIONS_EXTRA_DIR"
#: Where the report is written (besides stdout). The operator's Job sets it to the termination log.
REPORT_FILE_ENV = "APERAG_MIGRATE_REPORT_FILE"
#: The kubelet's default terminationMessagePath; written when it exists and no other path is given.
TERMINATION_LOG = Path("/dev/termination-log")
#: The kubelet keeps at most 4096 bytes of a container's termination message.
REPORT_LIMIT = 4096

Action = Literal["upgrade", "downgrade"]

# Reasons of a failed run (docs/app.md). Exit codes: refused or failed for good -> 1, the configuration
# -> 2, the database (or a store) could not be reached -> 3 (worth retrying).
MULTIPLE_HEADS = "MultipleHeads"
UNKNOWN_REVISION = "UnknownRevision"
INVALID_TARGET = "InvalidTarget"
MIGRATION_FAILED = "MigrationFailed"
DATABASE_UNAVAILABLE = "DatabaseUnavailable"
STORES_FAILED = "StoreSchemaFailed"
NOT_CONFIGURED = "NotConfigured"
EXIT_CODES = {DATABASE_UNAVAILABLE: 3, NOT_CONFIGURED: 2}


class MigrationError(Exception):
    """A run that did not reach its target; ``report`` says why and where the schema is."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"{report.reason}: {report.message}")
        self.report = report


@dataclass
class Report:
    """The outcome of one ``upgrade`` or ``downgrade`` run (the operator's contract, docs/app.md).

    ``before`` and ``current`` are the database's revisions before and after the run (``[]`` = an
    empty schema; ``None`` = not read, e.g. the run stopped before connecting); ``changed`` says whether
    the run moved the schema at all, so a failed upgrade that changed nothing needs no downgrade.
    """

    ok: bool
    action: str
    target: str
    heads: list[str]
    before: list[str] | None = None
    current: list[str] | None = None
    changed: bool = False
    reason: str | None = None
    message: str = ""
    up_to_date: bool = False

    def to_json(self, limit: int = REPORT_LIMIT) -> str:
        """One line of JSON, at most ``limit`` bytes: the message is shortened to fit, never the rest."""
        body: dict[str, Any] = {k: v for k, v in asdict(self).items() if v is not None}
        encoded = json.dumps(body, sort_keys=True)
        message = self.message
        while len(encoded.encode()) > limit and message:
            overshoot = len(encoded.encode()) - limit
            message = message[: max(0, len(message) - overshoot - 3)]
            body["message"] = message + "..."
            encoded = json.dumps(body, sort_keys=True)
        return encoded

    @property
    def exit_code(self) -> int:
        if self.ok:
            return 0
        return EXIT_CODES.get(self.reason or "", 1)


def version_locations() -> list[str]:
    """The release's version directory, then any test-only extra directories."""
    extra = [p for p in os.environ.get(EXTRA_DIR_ENV, "").split(os.pathsep) if p]
    return [str(VERSIONS_DIR), *extra]


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(version_locations()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused"))


def heads() -> list[str]:
    """The heads of this release's migrations (exactly one in a sound release)."""
    return sorted(script_directory().get_heads())


def multiple_heads_message(found: list[str]) -> str:
    return (
        f"this release's migrations have {len(found)} heads ({', '.join(found)}); exactly one is needed. "
        "Nothing was changed. The release must merge its heads (alembic merge) before it can be installed"
    )


@contextmanager
def locked_connection(url: str, lock_timeout_seconds: int = 600) -> Iterator[Connection]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT set_config('lock_timeout', :t, false)"), {"t": f"{lock_timeout_seconds}s"})
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            # Session-level lock: commit the implicit transaction so the run starts clean while the
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


#: One attempt to lock the app's tables may take this long (statement_timeout), well under PostgreSQL's
#: deadlock_timeout (1 s by default): a session that waits on a half-done attempt is never left waiting
#: long enough to find a cycle through it.
TABLE_LOCK_ATTEMPT_MS = 400
#: How long a run keeps trying before it fails (MigrationFailed, nothing changed).
TABLE_LOCK_DEADLINE_SECONDS = 300.0
_TIMEOUT_SQLSTATES = {"55P03", "57014"}  # lock_not_available, query_canceled (statement_timeout)


class TablesBusy(Exception):
    """Other sessions kept the app's tables locked past the deadline."""


def lock_schema_tables(
    conn: Connection,
    deadline_seconds: float = TABLE_LOCK_DEADLINE_SECONDS,
    attempt_ms: int = TABLE_LOCK_ATTEMPT_MS,
) -> None:
    """ACCESS EXCLUSIVE on every table of the schema, taken before the first revision runs.

    Why: a run's revisions commit in one transaction, and their DDL takes its locks table by table
    (0004: ALTER TABLE documents, then foreign keys to chunks) while the running release writes those
    tables in either order. That is a lock-order cycle; PostgreSQL breaks it by aborting one side, the
    upgrade (a failed migration and a rollback) or a writer. Taken all at once up front, in attempts
    bounded by a short statement_timeout and rolled back to a savepoint when they expire (so nothing is
    held between attempts), the migration never waits while holding a lock: writers and readers wait
    for it, for its DDL only, and never the other way round."""
    tables = list(
        conn.execute(
            text("SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
        ).scalars()
    )
    if not tables:
        return
    previous = conn.execute(text("SHOW statement_timeout")).scalar_one()
    deadline = time.monotonic() + deadline_seconds
    attempt = 0
    while True:
        attempt += 1
        savepoint = conn.begin_nested()
        try:
            conn.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": f"{attempt_ms}ms"})
            conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
        except OperationalError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) not in _TIMEOUT_SQLSTATES:
                raise
            if time.monotonic() >= deadline:
                raise TablesBusy(
                    f"could not lock the app's tables within {deadline_seconds:.0f} s ({attempt} attempts): "
                    "other sessions kept them busy; nothing was changed"
                ) from exc
            # Let the sessions we waited for finish; jitter so two runners never pace each other.
            time.sleep(random.uniform(0.05, min(2.0, 0.05 * 2**attempt)))
            continue
        savepoint.commit()
        conn.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": previous})
        if attempt > 1:
            log.info("locked the app's tables after %d attempts", attempt)
        return


def current_revisions(conn: Connection) -> list[str]:
    """The revisions recorded in the database (``[]`` when it was never migrated)."""
    return sorted(MigrationContext.configure(conn).get_current_heads())


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".strip()


def _classify(exc: BaseException, script: ScriptDirectory, before: list[str]) -> tuple[str, str]:
    """(reason, message) for an exception raised by Alembic or a revision."""
    unknown = [rev for rev in before if not _known(script, rev)]
    if isinstance(exc, (CommandError, RevisionError)):
        if unknown:
            return UNKNOWN_REVISION, (
                f"the database is at revision {', '.join(unknown)}, which this release does not know "
                "(a newer release migrated it)"
            )
        if "Can't locate revision" in str(exc) or "No such revision" in str(exc):
            return UNKNOWN_REVISION, str(exc).strip().splitlines()[0]
        return INVALID_TARGET, str(exc).strip().splitlines()[0]
    if isinstance(exc, OperationalError):
        return DATABASE_UNAVAILABLE, _one_line(exc.orig or exc)
    return MIGRATION_FAILED, _one_line(exc)


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def run(url: str, action: Action, target: str) -> Report:
    """Upgrade or downgrade to ``target`` in one transaction; never raises for a migration problem."""
    script = script_directory()
    found = sorted(script.get_heads())
    report = Report(ok=False, action=action, target=target, heads=found)
    if action == "upgrade" and len(found) > 1 and target in ("head", "heads"):
        report.reason, report.message = MULTIPLE_HEADS, multiple_heads_message(found)
        return report
    try:
        with locked_connection(url) as conn:
            report.before = current_revisions(conn)
            conn.commit()
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            # Only a run with something to do locks the tables (env.py): `upgrade head` at head is free.
            cfg.attributes["lock_tables"] = action == "downgrade" or report.before != found
            try:
                # Alembic opens the run's one transaction (env.py) and rolls it back on an error. It
                # owns it, so a revision's autocommit_block (CREATE INDEX CONCURRENTLY) can commit
                # what ran before it, as Alembic documents.
                if action == "upgrade":
                    command.upgrade(cfg, target)
                else:
                    command.downgrade(cfg, target)
                report.ok = True
            except OperationalError:
                raise
            except Exception as exc:  # a revision or Alembic refused: the transaction rolled back
                conn.rollback()
                report.reason, report.message = _classify(exc, script, report.before)
            report.current = current_revisions(conn)
            conn.commit()
    except OperationalError as exc:
        report.ok = False
        report.reason, report.message = _classify(exc, script, report.before or [])
    report.changed = report.current is not None and report.current != report.before
    report.up_to_date = report.current is not None and report.current == found
    if report.ok:
        report.message = _describe(report)
    return report


def _describe(report: Report) -> str:
    before = ", ".join(report.before or []) or "base"
    current = ", ".join(report.current or []) or "base"
    if not report.changed:
        return f"already at {current}"
    return f"{report.action}d from {before} to {current}"


def upgrade(url: str, revision: str = "head") -> Report:
    """Upgrade or raise :class:`MigrationError`."""
    report = run(url, "upgrade", revision)
    if not report.ok:
        raise MigrationError(report)
    return report


def downgrade(url: str, revision: str) -> Report:
    """Downgrade or raise :class:`MigrationError`."""
    report = run(url, "downgrade", revision)
    if not report.ok:
        raise MigrationError(report)
    return report


def current(url: str) -> dict[str, Any]:
    """Machine-readable state: the operator's Job and tests parse this JSON."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            revs = current_revisions(conn)
    finally:
        engine.dispose()
    head_revs = heads()
    return {"current": revs, "heads": head_revs, "up_to_date": revs == head_revs}


def current_json(url: str) -> str:
    return json.dumps(current(url), sort_keys=True)


def write_report(report: Report, path: str | None) -> None:
    """Write the report where Kubernetes reads a container's termination message.

    ``path`` (the ``--report-file`` flag) wins, then ``APERAG_MIGRATE_REPORT_FILE``, then
    ``/dev/termination-log`` when it exists (the kubelet creates it). Failing to write is logged, never
    fatal: the report is on stdout as well.
    """
    target = path or os.environ.get(REPORT_FILE_ENV) or (str(TERMINATION_LOG) if TERMINATION_LOG.exists() else None)
    if not target:
        return
    try:
        Path(target).write_text(report.to_json())
    except OSError as exc:
        log.warning("could not write the migration report to %s: %s", target, exc)


# --- readiness: the schema must not be behind the code --------------------------------------------


SchemaPosition = Literal["current", "ahead", "behind"]


@dataclass(frozen=True)
class SchemaState:
    position: SchemaPosition
    database: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        database = ", ".join(self.database) or "base (never migrated)"
        return f"database schema at {database}, this release's head is {', '.join(self.code)}"


class SchemaBehind(Exception):
    """The database has not been migrated to this release's head yet."""


def schema_position(database: list[str], script: ScriptDirectory) -> SchemaState:
    """Where the database stands against the code.

    Ahead: a revision the code does not know (a newer release migrated it; this older code keeps
    serving, relying on migrations being backward compatible). Current: at the code's head(s).
    Behind: anything else, including an empty schema and a release with several heads.
    """
    code = sorted(script.get_heads())
    if any(not _known(script, rev) for rev in database):
        return SchemaState("ahead", database, code)
    if database == code and len(code) == 1:
        return SchemaState("current", database, code)
    return SchemaState("behind", database, code)


class SchemaCheck:
    """The readiness check of a process that uses the database: fails while the schema is behind.

    The result is cached for ``ttl`` seconds so probes cost one query every few seconds at most; a
    database that cannot be reached raises (and is not cached), like the other checks.
    """

    def __init__(
        self, engine: Callable[[], Engine], ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, SchemaState] | None = None
        self._script: ScriptDirectory | None = None

    def state(self) -> SchemaState:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]
            if self._script is None:
                self._script = script_directory()
            with self._engine().connect() as conn:
                database = current_revisions(conn)
            state = schema_position(database, self._script)
            self._cached = (now, state)
            return state

    def __call__(self) -> None:
        state = self.state()
        if state.position == "behind":
            raise SchemaBehind(state.message + ": not ready until the migration Job has run")
