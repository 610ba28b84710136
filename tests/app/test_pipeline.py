"""Ingestion and search in-process against real PostgreSQL (pgvector + full-text)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select, text

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Chunk
from aperag.ingest.pipeline import TransientIngestionError, index_document, reconcile
from aperag.search import search
from aperag.stores import StoreUnavailable
from tests.app.conftest import settings_from
from tests.app.corpus import DOCS, QUERIES


@pytest.fixture
def ctx(app_env_factory: Callable[..., dict[str, str]], embedder_warm: None) -> AppContext:
    return AppContext(settings=settings_from(app_env_factory()))


def _ingest_all(ctx: AppContext, collection: str) -> dict[str, str]:
    services.create_collection(ctx, collection)
    ids = {}
    for name, body in DOCS.items():
        result = services.upload_document(ctx, collection, name, None, body.encode())
        assert result.created
        assert index_document(ctx, result.document.id, final_attempt=False) == "ready"
        ids[name] = result.document.id
    return ids


def _count(ctx: AppContext, table: str, document_id: str) -> int:
    with ctx.sessions() as session:
        return int(
            session.execute(
                text(f"SELECT count(*) FROM {table} WHERE document_id = :d"), {"d": document_id}
            ).scalar_one()
        )


@pytest.mark.parametrize("mode", ["vector", "fulltext", "hybrid"])
def test_search_finds_the_right_document(ctx: AppContext, mode: str) -> None:
    ids = _ingest_all(ctx, "kb")
    collection = services.get_collection(ctx, "kb")
    for query, expected in QUERIES:
        found = search(ctx, collection.id, query, mode, 3)
        assert found.results, f"{mode}: no result for {query!r}"
        top = found.results[0]
        assert top.document_id == ids[expected], f"{mode}: {query!r} -> {top.filename}"
        assert top.filename == expected and top.text
    assert "total" in found.timings_ms


def test_reupload_and_reindex_do_not_duplicate_chunks(ctx: AppContext) -> None:
    ids = _ingest_all(ctx, "kb")
    doc_id = ids["sourdough.txt"]
    before = _count(ctx, "chunks", doc_id)
    assert before >= 1
    again = services.upload_document(ctx, "kb", "copy.txt", None, DOCS["sourdough.txt"].encode())
    assert not again.created and again.document.id == doc_id
    services.reindex_document(ctx, doc_id)
    assert index_document(ctx, doc_id, final_attempt=False) == "ready"
    for table in ("chunks", "vector_chunks", "fts_chunks", "fulltext_chunks"):
        assert _count(ctx, table, doc_id) == before, table


def test_collections_are_isolated(ctx: AppContext) -> None:
    _ingest_all(ctx, "kb")
    services.create_collection(ctx, "other")
    other = services.get_collection(ctx, "other")
    assert search(ctx, other.id, "volcano magma", "hybrid", 5).results == []


def test_delete_document_removes_chunks_everywhere(ctx: AppContext) -> None:
    ids = _ingest_all(ctx, "kb")
    doc_id = ids["chess.html"]
    services.delete_document(ctx, "kb", doc_id)
    for table in ("chunks", "vector_chunks", "fts_chunks", "fulltext_chunks"):
        assert _count(ctx, table, doc_id) == 0, table
    collection = services.get_collection(ctx, "kb")
    hits = search(ctx, collection.id, "Sicilian Defence", "fulltext", 5).results
    assert all(h.document_id != doc_id for h in hits)


class _FlakyStore:
    """Wraps a real store and fails the first `failures` upserts, as a store going away would."""

    def __init__(self, inner: object, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def upsert(self, *args: object) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("store went away")
        self.inner.upsert(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_store_outage_retries_then_ready(ctx: AppContext) -> None:
    services.create_collection(ctx, "kb")
    doc = services.upload_document(ctx, "kb", "v.md", None, DOCS["volcanoes.md"].encode()).document
    ctx.__dict__["vector_store"] = _FlakyStore(ctx.vector_store, failures=1)
    with pytest.raises(TransientIngestionError):
        index_document(ctx, doc.id, final_attempt=False)
    mid = services.get_document(ctx, "kb", doc.id)
    assert mid.status == "pending" and mid.error and "retrying" in mid.error
    assert index_document(ctx, doc.id, final_attempt=False) == "ready"
    final = services.get_document(ctx, "kb", doc.id)
    assert final.status == "ready" and final.error is None and final.attempts == 2


def test_store_outage_on_last_attempt_fails_cleanly(ctx: AppContext) -> None:
    services.create_collection(ctx, "kb")
    long_text = " ".join(f"Paragraph {i} about volcanic basalt and magma chambers." for i in range(200))
    doc = services.upload_document(ctx, "kb", "long.txt", None, long_text.encode()).document
    # Fail the *fulltext* store after the vector store has accepted a batch: partial rows exist.
    flaky = _FlakyStore(ctx.fulltext_store, failures=100)
    ctx.__dict__["fulltext_store"] = flaky
    assert index_document(ctx, doc.id, final_attempt=True) == "failed"
    failed = services.get_document(ctx, "kb", doc.id)
    assert failed.status == "failed" and "gave up" in (failed.error or "")
    for table in ("chunks", "vector_chunks", "fts_chunks", "fulltext_chunks"):
        assert _count(ctx, table, doc.id) == 0, table


def test_reconcile_requeues_stuck_documents(ctx: AppContext) -> None:
    services.create_collection(ctx, "kb")
    doc = services.upload_document(ctx, "kb", "s.txt", None, DOCS["sourdough.txt"].encode()).document
    with ctx.sessions.begin() as session:
        session.execute(
            text(
                "UPDATE documents SET status='indexing',"
                " status_changed_at = now() - interval '2 hours' WHERE id=:d"
            ),
            {"d": doc.id},
        )

    class Recorder:
        def __init__(self) -> None:
            self.enqueued: list[str] = []

        def enqueue(self, document_id: str) -> None:
            self.enqueued.append(document_id)

        def queue_depth(self) -> int:
            return len(self.enqueued)

    recorder = Recorder()
    ctx.dispatcher = recorder
    assert reconcile(ctx) == {"requeued": 1, "failed": 0, "graph_requeued": 0, "fulltext_synced": 0}
    assert recorder.enqueued == [doc.id]
    assert services.get_document(ctx, "kb", doc.id).status == "pending"
    # A fresh pending document is not stuck.
    assert reconcile(ctx) == {"requeued": 0, "failed": 0, "graph_requeued": 0, "fulltext_synced": 0}


def test_chunk_rows_match_store_rows(ctx: AppContext) -> None:
    ids = _ingest_all(ctx, "kb")
    with ctx.sessions() as session:
        total = session.scalar(select(func.count()).select_from(Chunk))
        vec = session.execute(text("SELECT count(*) FROM vector_chunks")).scalar_one()
        fts = session.execute(text("SELECT count(*) FROM fts_chunks")).scalar_one()
        legacy = session.execute(text("SELECT count(*) FROM fulltext_chunks")).scalar_one()
    assert total == vec == fts == legacy == sum(_count(ctx, "chunks", d) for d in ids.values())
