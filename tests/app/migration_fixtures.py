"""Test-only Alembic revisions, written into a directory that ``APERAG_MIGRATIONS_EXTRA_DIR`` adds.

The revisions chain onto whatever the release's head is when the test runs (not a hard-coded "0002"),
so a revision added to the main chain later does not turn them into a second head by accident.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from aperag import migrate

TEMPLATE = '''"""Test-only revision {revision}."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def release_head() -> str:
    """The single head of the release's own migrations (without any extra directory)."""
    saved = os.environ.pop(migrate.EXTRA_DIR_ENV, None)
    try:
        (head,) = migrate.heads()
        return head
    finally:
        if saved is not None:
            os.environ[migrate.EXTRA_DIR_ENV] = saved


def write_revision(
    directory: Path, revision: str, down_revision: str | None, upgrade: str, downgrade: str
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{revision}.py"
    path.write_text(
        TEMPLATE.format(
            revision=revision,
            down_revision=down_revision,
            upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
        )
    )
    return path


def next_release(directory: Path, revision: str = "t_next", after: str | None = None) -> Path:
    """A good revision: a new table and a new column with a default (an expand-only change). ``after``:
    the revision it chains onto (the release's head by default)."""
    write_revision(
        directory,
        revision,
        after or release_head(),
        """
        op.create_table(
            "release_notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text)
        )
        op.add_column(
            "collections", sa.Column("tier", sa.String(20), nullable=False, server_default="free")
        )
        """,
        """
        op.drop_column("collections", "tier")
        op.drop_table("release_notes")
        """,
    )
    return directory


def failing_release(directory: Path, good: str = "t_good", bad: str = "t_broken") -> Path:
    """Two revisions in one run: a good one, then one that fails after changing something."""
    write_revision(
        directory,
        good,
        release_head(),
        'op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("half_done")',
    )
    write_revision(
        directory,
        bad,
        good,
        """
        op.add_column("documents", sa.Column("broken", sa.Integer, nullable=True))
        op.execute("SELECT * FROM table_that_does_not_exist")
        """,
        'op.drop_column("documents", "broken")',
    )
    return directory


def part_way_release(directory: Path, after: str | None = None, good: str = "t_audit", bad: str = "t_index") -> Path:
    """Two revisions in one run, the second failing after an autocommit block: ``good`` creates a table;
    ``bad`` builds an index on it with CREATE INDEX CONCURRENTLY, which PostgreSQL refuses inside a
    transaction, so it runs in Alembic's autocommit_block; that commits the run so far (``good``, stamped)
    and then ``bad`` fails. The schema is left at ``good``: the report says ``changed: true``, and only a
    downgrade puts it back. ``after``: the revision they chain onto (the release's head by default)."""
    write_revision(
        directory,
        good,
        after or release_head(),
        """
        op.create_table(
            "audit_log", sa.Column("id", sa.Integer, primary_key=True), sa.Column("entry", sa.Text)
        )
        """,
        'op.drop_table("audit_log")',
    )
    write_revision(
        directory,
        bad,
        good,
        """
        with op.get_context().autocommit_block():
            op.execute("CREATE INDEX CONCURRENTLY audit_log_entry ON audit_log (entry)")
        op.add_column("documents", sa.Column("audited", sa.Boolean, nullable=True))
        op.execute("SELECT * FROM table_that_does_not_exist")
        """,
        """
        op.drop_column("documents", "audited")
        op.drop_index("audit_log_entry", table_name="audit_log")
        """,
    )
    return directory


def second_head(directory: Path, revision: str = "t_fork") -> Path:
    """A revision branching off the release's first revision: the release then has two heads."""
    write_revision(
        directory,
        revision,
        "0001",
        'op.create_table("forked", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("forked")',
    )
    return directory
