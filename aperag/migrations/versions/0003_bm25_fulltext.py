"""BM25 full-text tables next to the tsvector table of the previous release (expand, not contract).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The previous release (revisions 0001-0002) indexed full text in ``fulltext_chunks`` (tsvector, created
by its store's ``ensure_schema``). This release ranks by BM25 from its own tables, and keeps
``fulltext_chunks`` complete beside them, so the previous release's pods keep working during a
rollout and after a rollback (docs/app.md, "Full-text tables across releases"):

- ``fulltext_chunks`` (created here when the database never had it: this release writes every chunk
  into it too, in the same transaction as the BM25 tables);
- the BM25 tables ``fts_collections``, ``fts_terms``, ``fts_chunks``, ``fts_postings``;
- ``fts_pending`` and a trigger on ``fulltext_chunks``: a row written or deleted there by code that
  does not maintain the BM25 tables (the previous release's pods, during the rollout) queues its chunk
  id, and this release's reconciler indexes it (``PgFulltextStore.sync``). This release's own writes
  set ``aperag.fts_dual_write`` for their transaction, so the trigger leaves them alone.

The upgrade indexes every row of ``fulltext_chunks`` into the BM25 tables in the migration's
transaction. It first locks that table (SHARE ROW EXCLUSIVE, as creating the trigger would): the lock
waits for the previous release's writes in flight and holds new ones until the commit, so every row is
either read by the backfill or, written after the commit, queued by the trigger; none is lost. Searches
(plain reads) are not blocked; the previous release's ingestion waits for the migration.

The downgrade drops what this revision added and keeps ``fulltext_chunks`` with its rows: at 0002 the
schema is exactly what the previous release expects, with every document indexed.

The table definitions are written out here (a revision must not change when the code does); the
backfill uses the store's analyser and writer, because the BM25 rows must be what the running code
would have written.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The previous release's table, exactly as its PgFulltextStore.ensure_schema created it.
LEGACY = [
    "CREATE TABLE IF NOT EXISTS fulltext_chunks ("
    " chunk_id varchar(36) PRIMARY KEY, document_id varchar(32) NOT NULL,"
    " collection_id varchar(32) NOT NULL, text text NOT NULL,"
    " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED)",
    "CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_document ON fulltext_chunks (document_id)",
    "CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_tsv ON fulltext_chunks USING gin (tsv)",
    "CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_collection ON fulltext_chunks (collection_id)",
]

# IF NOT EXISTS: a development database that ran the unreleased code between the two releases has these
# tables already (created then by the store's ensure_schema), with the same definitions.
BM25 = [
    "CREATE TABLE IF NOT EXISTS fts_collections ("
    " collection_id varchar(32) PRIMARY KEY, chunks bigint NOT NULL, total_length bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fts_terms ("
    " id bigserial PRIMARY KEY, collection_id varchar(32) NOT NULL, term text NOT NULL, df integer NOT NULL,"
    " CONSTRAINT uq_fts_terms UNIQUE (collection_id, term))",
    "CREATE TABLE IF NOT EXISTS fts_chunks ("
    " id bigserial PRIMARY KEY, chunk_id varchar(36) NOT NULL UNIQUE, document_id varchar(32) NOT NULL,"
    " collection_id varchar(32) NOT NULL, length integer NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_fts_chunks_document ON fts_chunks (document_id)",
    "CREATE INDEX IF NOT EXISTS ix_fts_chunks_collection ON fts_chunks (collection_id)",
    # Probing a chunk's terms and deleting a chunk use the primary key; a term's postings are read
    # from the second index, highest term frequency first (covering: index-only scans).
    "CREATE TABLE IF NOT EXISTS fts_postings ("
    " term_id bigint NOT NULL, chunk_no bigint NOT NULL, tf integer NOT NULL, length integer NOT NULL,"
    " PRIMARY KEY (chunk_no, term_id) INCLUDE (tf, length))",
    "CREATE INDEX IF NOT EXISTS ix_fts_postings_impact ON fts_postings (term_id, tf DESC, length) INCLUDE (chunk_no)",
]

PENDING = [
    "CREATE TABLE fts_pending (chunk_id varchar(36) PRIMARY KEY)",
    "CREATE FUNCTION fts_note_legacy_write() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  IF TG_OP <> 'INSERT' THEN\n"
    "    INSERT INTO fts_pending (chunk_id) VALUES (OLD.chunk_id) ON CONFLICT DO NOTHING;\n"
    "  END IF;\n"
    "  IF TG_OP <> 'DELETE' THEN\n"
    "    INSERT INTO fts_pending (chunk_id) VALUES (NEW.chunk_id) ON CONFLICT DO NOTHING;\n"
    "  END IF;\n"
    "  RETURN NULL;\n"
    "END\n"
    "$$",
    # The WHEN clause skips this release's own writes before the function is even called.
    "CREATE TRIGGER fulltext_chunks_pending AFTER INSERT OR UPDATE OR DELETE ON fulltext_chunks FOR EACH ROW"
    " WHEN (current_setting('aperag.fts_dual_write', true) IS DISTINCT FROM 'on')"
    " EXECUTE FUNCTION fts_note_legacy_write()",
]

# Only a development database (see BM25 above) has BM25 rows here that fulltext_chunks lacks; their text
# is in `chunks`. Runs before the trigger exists, so it queues nothing.
COPY_TO_LEGACY = (
    "INSERT INTO fulltext_chunks (chunk_id, document_id, collection_id, text)"
    " SELECT c.id, c.document_id, c.collection_id, c.text FROM fts_chunks f JOIN chunks c ON c.id = f.chunk_id"
    " WHERE NOT EXISTS (SELECT 1 FROM fulltext_chunks l WHERE l.chunk_id = f.chunk_id)"
)


def upgrade() -> None:
    from aperag.stores.pg_fulltext_store import index_legacy_rows

    create_table, *indexes = LEGACY
    op.execute(create_table)
    op.execute("LOCK TABLE fulltext_chunks IN SHARE ROW EXCLUSIVE MODE")  # until the commit
    for statement in [*indexes, *BM25]:
        op.execute(statement)
    op.execute(COPY_TO_LEGACY)
    for statement in PENDING:
        op.execute(statement)
    index_legacy_rows(op.get_bind())


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS fulltext_chunks_pending ON fulltext_chunks")
    op.execute("DROP FUNCTION IF EXISTS fts_note_legacy_write()")
    for table in ("fts_pending", "fts_postings", "fts_terms", "fts_chunks", "fts_collections"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
