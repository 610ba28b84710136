"""Knowledge-graph tables (entities, relations, their mentions in chunks) and the documents' graph status.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Expand only (docs/app.md, "Compatibility contract"): new tables, and new nullable or defaulted columns on
``documents``, so the previous release's pods keep working on this schema during a rollout and after a
rollback; they neither read nor write the graph. The downgrade drops exactly what this revision adds.

- ``graph_entities``: one row per (collection, normalised name), merged across chunks and documents;
- ``graph_relations``: one row per unordered pair of entities of a collection;
- ``graph_entity_mentions`` / ``graph_relation_mentions``: what each chunk said about them (the links
  back to the chunks; cascade-deleted with the chunk, so a removed document takes its mentions with it,
  and an entity or relation left with no mention is pruned);
- ``graph_chunk_extractions``: each chunk's extraction outcome (``ok`` or ``failed`` with the reason);
- ``graph_extraction_cache``: a model's extraction of a chunk text, by chunk hash, prompt version and model.

Embeddings are pgvector ``vector`` columns without a fixed dimension (the dimension is a setting,
EMBEDDING_DIMENSION, and a revision must not depend on settings). Their HNSW indexes are expression
indexes for the configured dimension that `ensure_store_schemas` makes after the migration
(aperag.graph.store.ensure_indexes): exact scans were ~10x hybrid search's latency at 10k chunks
(docs/benchmarks.md, "Graph").
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    "ALTER TABLE documents ADD COLUMN graph_status varchar(20)",
    "ALTER TABLE documents ADD COLUMN graph_failed_chunks integer NOT NULL DEFAULT 0",
    "ALTER TABLE documents ADD COLUMN graph_error text",
    "CREATE TABLE graph_entities ("
    " id bigserial PRIMARY KEY,"
    " collection_id varchar(32) NOT NULL REFERENCES collections(id) ON DELETE CASCADE,"
    " name_key text NOT NULL, name text NOT NULL, entity_type varchar(64) NOT NULL,"
    " description text NOT NULL DEFAULT '', embedding vector,"
    " CONSTRAINT uq_graph_entities_name UNIQUE (collection_id, name_key))",
    "CREATE INDEX ix_graph_entities_type ON graph_entities (collection_id, entity_type)",
    "CREATE TABLE graph_relations ("
    " id bigserial PRIMARY KEY,"
    " collection_id varchar(32) NOT NULL REFERENCES collections(id) ON DELETE CASCADE,"
    " source_id bigint NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,"
    " target_id bigint NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,"
    " description text NOT NULL DEFAULT '', keywords text NOT NULL DEFAULT '',"
    " weight double precision NOT NULL DEFAULT 0, embedding vector,"
    " CONSTRAINT uq_graph_relations_pair UNIQUE (collection_id, source_id, target_id),"
    " CONSTRAINT ck_graph_relations_ordered CHECK (source_id < target_id))",
    "CREATE INDEX ix_graph_relations_target ON graph_relations (target_id)",
    "CREATE TABLE graph_entity_mentions ("
    " entity_id bigint NOT NULL REFERENCES graph_entities(id) ON DELETE CASCADE,"
    " chunk_id varchar(36) NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,"
    " document_id varchar(32) NOT NULL, entity_type varchar(64) NOT NULL, description text NOT NULL DEFAULT '',"
    " PRIMARY KEY (entity_id, chunk_id))",
    "CREATE INDEX ix_graph_entity_mentions_chunk ON graph_entity_mentions (chunk_id)",
    "CREATE INDEX ix_graph_entity_mentions_document ON graph_entity_mentions (document_id)",
    "CREATE TABLE graph_relation_mentions ("
    " relation_id bigint NOT NULL REFERENCES graph_relations(id) ON DELETE CASCADE,"
    " chunk_id varchar(36) NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,"
    " document_id varchar(32) NOT NULL, description text NOT NULL DEFAULT '', keywords text NOT NULL DEFAULT '',"
    " weight double precision NOT NULL DEFAULT 1,"
    " PRIMARY KEY (relation_id, chunk_id))",
    "CREATE INDEX ix_graph_relation_mentions_chunk ON graph_relation_mentions (chunk_id)",
    "CREATE INDEX ix_graph_relation_mentions_document ON graph_relation_mentions (document_id)",
    "CREATE TABLE graph_chunk_extractions ("
    " chunk_id varchar(36) PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,"
    " document_id varchar(32) NOT NULL, status varchar(20) NOT NULL, error text)",
    "CREATE INDEX ix_graph_chunk_extractions_document ON graph_chunk_extractions (document_id)",
    "CREATE TABLE graph_extraction_cache ("
    " cache_key varchar(64) PRIMARY KEY, prompt_version varchar(32) NOT NULL, model text NOT NULL,"
    " result jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
]

DOWNGRADE = [
    "DROP TABLE IF EXISTS graph_extraction_cache",
    "DROP TABLE IF EXISTS graph_chunk_extractions",
    "DROP TABLE IF EXISTS graph_relation_mentions",
    "DROP TABLE IF EXISTS graph_entity_mentions",
    "DROP TABLE IF EXISTS graph_relations",
    "DROP TABLE IF EXISTS graph_entities",
    "ALTER TABLE documents DROP COLUMN IF EXISTS graph_error",
    "ALTER TABLE documents DROP COLUMN IF EXISTS graph_failed_chunks",
    "ALTER TABLE documents DROP COLUMN IF EXISTS graph_status",
    # The vector extension stays: revision 0001's store tables may use it, and it holds no rows.
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
