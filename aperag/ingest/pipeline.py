"""Index one document. Idempotent: running it twice leaves the same chunks.

Chunks become visible to search only when the document turns `ready` (search joins on it), so a
document that fails half-way is never half-searchable.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.exc import OperationalError

from aperag import metrics
from aperag.chunking import chunk_text
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus, chunk_id
from aperag.db.session import get_engine
from aperag.parsing import UnparsableDocument, UnsupportedDocument, extract_text
from aperag.stores import IndexedChunk, StoreUnavailable

log = logging.getLogger(__name__)


class TransientIngestionError(RuntimeError):
    """Worth retrying: a store, the database or the embedding service was unreachable."""


def _transient_types() -> tuple[type[BaseException], ...]:
    from aperag.embedding.openai_compat import EmbeddingServiceError

    return (StoreUnavailable, OperationalError, EmbeddingServiceError, ConnectionError, TimeoutError)


@contextmanager
def document_lock(ctx: AppContext, document_id: str) -> Iterator[bool]:
    """True if this process holds the document's advisory lock; a duplicate delivery gets False."""
    key = zlib.crc32(document_id.encode()) | (1 << 40)
    with get_engine(ctx.settings.database_url).connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                _unlock(conn, key)


def _unlock(conn: Connection, key: int) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    conn.commit()


def _set_status(ctx: AppContext, document_id: str, status: DocumentStatus, error: str | None = None) -> None:
    with ctx.sessions.begin() as session:
        doc = session.get(Document, document_id)
        if doc is not None:
            doc.status = status.value
            doc.error = error
            doc.status_changed_at = datetime.now(UTC)
            if status is not DocumentStatus.READY:
                doc.chunk_count = 0


def remove_document_chunks(ctx: AppContext, document_id: str) -> None:
    ctx.vector_store.delete_document(document_id)
    ctx.fulltext_store.delete_document(document_id)
    with ctx.sessions.begin() as session:
        session.execute(delete(Chunk).where(Chunk.document_id == document_id))


def _cleanup_best_effort(ctx: AppContext, document_id: str) -> None:
    try:
        remove_document_chunks(ctx, document_id)
    except _transient_types() as exc:
        # Orphaned store rows are harmless: search only returns chunks of ready documents.
        log.warning("could not remove partial chunks of %s: %s", document_id, exc)


def index_document(ctx: AppContext, document_id: str, *, final_attempt: bool) -> str:
    """Returns the final status. Raises TransientIngestionError when a retry should follow."""
    started = time.perf_counter()
    with document_lock(ctx, document_id) as locked:
        if not locked:
            log.info("document %s is being indexed by another worker; skipping", document_id)
            return "skipped"
        with ctx.sessions.begin() as session:
            doc = session.get(Document, document_id)
            if doc is None:
                return "deleted"
            if doc.status == DocumentStatus.READY.value:
                return "ready"
            doc.status = DocumentStatus.INDEXING.value
            doc.attempts += 1
            doc.status_changed_at = datetime.now(UTC)
            object_key, content_type, collection_id = doc.object_key, doc.content_type, doc.collection_id
        try:
            count = _index(ctx, document_id, collection_id, object_key, content_type)
        except (UnparsableDocument, UnsupportedDocument, FileNotFoundError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            _cleanup_best_effort(ctx, document_id)
            _set_status(ctx, document_id, DocumentStatus.FAILED, reason)
            metrics.INGESTED_DOCUMENTS.labels(result="failed").inc()
            return "failed"
        except _transient_types() as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if final_attempt:
                _cleanup_best_effort(ctx, document_id)
                _set_status(ctx, document_id, DocumentStatus.FAILED, f"gave up after retries: {reason}")
                metrics.INGESTED_DOCUMENTS.labels(result="failed").inc()
                return "failed"
            try:
                _set_status(ctx, document_id, DocumentStatus.PENDING, f"retrying: {reason}")
            except _transient_types():
                log.warning("could not record retry state of %s", document_id)
            metrics.INGESTED_DOCUMENTS.labels(result="retry").inc()
            raise TransientIngestionError(reason) from exc
    metrics.INGESTED_DOCUMENTS.labels(result="ready").inc()
    metrics.INGESTED_CHUNKS.inc(count)
    metrics.INGESTION_SECONDS.observe(time.perf_counter() - started)
    return "ready"


def _index(ctx: AppContext, document_id: str, collection_id: str, object_key: str, content_type: str) -> int:
    settings = ctx.settings
    text_content = extract_text(ctx.object_store.get(object_key), content_type)
    pieces = chunk_text(text_content, ctx.tokenizer, settings.chunk_size, settings.chunk_overlap_size)
    if not pieces:
        raise UnparsableDocument("document contains no text")
    # Start clean: a previous attempt (or an older version of the chunking settings) may have left
    # chunks whose ordinals the new run does not produce.
    remove_document_chunks(ctx, document_id)
    rows: list[Chunk] = []
    for start in range(0, len(pieces), settings.index_batch_size):
        batch = pieces[start : start + settings.index_batch_size]
        indexed = [
            IndexedChunk(chunk_id(document_id, p.ordinal), document_id, collection_id, p.text) for p in batch
        ]
        vectors = ctx.embedder.embed([p.text for p in batch])
        ctx.vector_store.upsert(indexed, vectors)
        ctx.fulltext_store.upsert(indexed)
        rows.extend(
            Chunk(
                id=c.chunk_id,
                document_id=document_id,
                collection_id=collection_id,
                ordinal=p.ordinal,
                text=p.text,
                token_count=p.token_count,
                start_char=p.start_char,
                end_char=p.end_char,
            )
            for c, p in zip(indexed, batch, strict=True)
        )
    with ctx.sessions.begin() as session:
        doc = session.get(Document, document_id)
        if doc is None:
            # Deleted while we indexed: undo our writes.
            remove_document_chunks(ctx, document_id)
            return 0
        session.add_all(rows)
        doc.status = DocumentStatus.READY.value
        doc.error = None
        doc.chunk_count = len(rows)
        doc.status_changed_at = datetime.now(UTC)
    return len(rows)


def stuck_documents(ctx: AppContext, older_than_seconds: int) -> list[tuple[str, int]]:
    cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, UTC)
    with ctx.sessions() as session:
        rows = session.execute(
            select(Document.id, Document.attempts).where(
                Document.status.in_([DocumentStatus.PENDING.value, DocumentStatus.INDEXING.value]),
                Document.status_changed_at < cutoff,
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


def reconcile(ctx: AppContext) -> dict[str, int]:
    """Re-dispatch documents stuck in pending/indexing (a lost task, a killed worker); give up on
    those that already used all their attempts."""
    requeued = failed = 0
    for document_id, attempts in stuck_documents(ctx, ctx.settings.stuck_after_seconds):
        if attempts > ctx.settings.task_max_retries:
            _cleanup_best_effort(ctx, document_id)
            _set_status(ctx, document_id, DocumentStatus.FAILED, f"stuck after {attempts} attempts")
            failed += 1
            continue
        _set_status(ctx, document_id, DocumentStatus.PENDING, None)
        if ctx.dispatcher is not None:
            ctx.dispatcher.enqueue(document_id)
        requeued += 1
    return {"requeued": requeued, "failed": failed}
