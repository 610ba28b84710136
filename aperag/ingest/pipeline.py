"""Index documents. Idempotent: running it twice leaves the same chunks.

Chunks become visible to search only when the document turns `ready` (search joins on it), so a
document that fails half-way is never half-searchable.

Small documents are indexed together: the task for one document also claims other pending documents
of its collection (up to INGEST_BATCH_DOCUMENTS), and their chunks share the model's forward passes
and the store writes. Their own tasks, when they arrive, find them `ready` (or locked) and return.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from aperag import metrics, telemetry
from aperag.chunking import TextChunk, chunk_text
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus, chunk_id
from aperag.db.session import get_engine
from aperag.parsing import ParseLimits, UnparsableDocument, UnsupportedDocument, extract_text
from aperag.stores import IndexedChunk, StoreUnavailable

log = logging.getLogger(__name__)

# Companions are small documents: a large one fills the forward passes by itself.
COMPANION_MAX_BYTES = 256 * 1024
COMPANION_TOTAL_BYTES = 2 * 1024 * 1024


class TransientIngestionError(RuntimeError):
    """Worth retrying: a store, the database or the embedding service was unreachable."""


class IngestionCancelled(RuntimeError):
    """Shutdown asked the running batch to stop; its documents went back to `pending`."""


def _transient_types() -> tuple[type[BaseException], ...]:
    from aperag.embedding.openai_compat import EmbeddingServiceError

    return (StoreUnavailable, OperationalError, EmbeddingServiceError, ConnectionError, TimeoutError)


def _lock_key(document_id: str) -> int:
    return zlib.crc32(document_id.encode()) | (1 << 40)


class _Locks:
    """Session-level advisory locks on one connection: whoever holds a document's lock indexes it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.held: set[int] = set()

    def try_lock(self, document_id: str) -> bool:
        key = _lock_key(document_id)
        got = bool(self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        self.conn.commit()
        if got:
            self.held.add(key)
        return got

    def unlock(self, document_id: str) -> None:
        key = _lock_key(document_id)
        if key in self.held:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            self.conn.commit()
            self.held.discard(key)

    def release_all(self) -> None:
        try:
            self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
            self.conn.commit()
        except SQLAlchemyError as exc:
            # The connection is gone, and its session-level locks with it.
            log.warning("could not release advisory locks (%s); the closed session released them", exc)
            self.conn.invalidate()
        self.held.clear()


@contextmanager
def _advisory_locks(ctx: AppContext) -> Iterator[_Locks]:
    with get_engine(ctx.settings.database_url).connect() as conn:
        locks = _Locks(conn)
        try:
            yield locks
        finally:
            locks.release_all()


@contextmanager
def document_lock(ctx: AppContext, document_id: str) -> Iterator[bool]:
    """True if this process holds the document's advisory lock; a duplicate delivery gets False."""
    with _advisory_locks(ctx) as locks:
        yield locks.try_lock(document_id)


@dataclass(frozen=True)
class _Claimed:
    id: str
    collection_id: str
    object_key: str
    content_type: str
    size_bytes: int


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
    from aperag.graph import store as graph_store

    ctx.vector_store.delete_document(document_id)
    ctx.fulltext_store.delete_document(document_id)
    with ctx.sessions.begin() as session:
        # First the document's part of the graph (what only it supported goes; shared entities are
        # recomputed from their other mentions), then the chunks, in one transaction.
        graph_store.remove_document(session, document_id)
        session.execute(delete(Chunk).where(Chunk.document_id == document_id))


def _queue_graphs(ctx: AppContext, document_ids: list[str]) -> None:
    """The graph of each newly ready document is built by its own task, so search works before it is."""
    from aperag.ingest.dispatch import GraphDispatcher

    if not ctx.settings.graph_enabled or not isinstance(ctx.dispatcher, GraphDispatcher):
        return
    for document_id in document_ids:
        try:
            ctx.dispatcher.enqueue_graph(document_id)
        except Exception as exc:  # the broker is away: the document is ready, its graph can follow later
            log.warning("could not queue the graph of %s: %s", document_id, exc)


def _cleanup_best_effort(ctx: AppContext, document_id: str) -> None:
    try:
        remove_document_chunks(ctx, document_id)
    except _transient_types() as exc:
        # Orphaned store rows are harmless: search only returns chunks of ready documents.
        log.warning("could not remove partial chunks of %s: %s", document_id, exc)


def _fail(ctx: AppContext, document_id: str, reason: str) -> None:
    _cleanup_best_effort(ctx, document_id)
    _set_status(ctx, document_id, DocumentStatus.FAILED, reason[:2000])
    metrics.INGESTED_DOCUMENTS.labels(result="failed").inc()


def _claim(ctx: AppContext, document_id: str, *, only_pending: bool) -> _Claimed | str:
    """Mark the document `indexing` (we hold its lock); else say why not: deleted, ready, taken."""
    with ctx.sessions.begin() as session:
        doc = session.get(Document, document_id, with_for_update=True)
        if doc is None:
            return "deleted"
        if doc.status == DocumentStatus.READY.value:
            return "ready"
        if only_pending and (doc.status != DocumentStatus.PENDING.value or doc.error is not None):
            return doc.status
        doc.status = DocumentStatus.INDEXING.value
        doc.attempts += 1
        doc.status_changed_at = datetime.now(UTC)
        return _Claimed(doc.id, doc.collection_id, doc.object_key, doc.content_type, doc.size_bytes)


def _claim_companions(ctx: AppContext, primary: _Claimed, locks: _Locks) -> list[_Claimed]:
    """Other small pending documents of the same collection, oldest first. Documents waiting for a
    retry (pending with an error) are left to their own task and its backoff."""
    wanted = ctx.settings.ingest_batch_documents - 1
    if wanted < 1 or primary.size_bytes > COMPANION_MAX_BYTES:
        return []
    with ctx.sessions() as session:
        candidates = session.execute(
            select(Document.id)
            .where(
                Document.collection_id == primary.collection_id,
                Document.status == DocumentStatus.PENDING.value,
                Document.error.is_(None),
                Document.id != primary.id,
                Document.size_bytes <= COMPANION_MAX_BYTES,
            )
            .order_by(Document.created_at)
            .limit(wanted * 2)
        ).scalars()
        ids = list(candidates)
    claimed: list[_Claimed] = []
    budget = COMPANION_TOTAL_BYTES - primary.size_bytes
    for document_id in ids:
        if len(claimed) >= wanted or budget <= 0:
            break
        if not locks.try_lock(document_id):
            continue
        outcome = _claim(ctx, document_id, only_pending=True)
        if isinstance(outcome, str):
            locks.unlock(document_id)
            continue
        claimed.append(outcome)
        budget -= outcome.size_bytes
    return claimed


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise IngestionCancelled("shutting down")


def embed_documents(ctx: AppContext, texts: list[str]) -> Any:
    """One call of the embedding model over a batch of chunks (a span, a duration sample)."""
    started = time.perf_counter()
    settings = ctx.settings
    attributes = {"aperag.embedding.backend": settings.embedding_backend,
                  "aperag.embedding.model": settings.embedding_model, "aperag.embedding.texts": len(texts)}  # fmt: skip
    with telemetry.span("embedding.embed", attributes):
        vectors = ctx.embedder.embed(texts)
    metrics.EMBEDDING_SECONDS.labels("documents").observe(time.perf_counter() - started)
    metrics.EMBEDDED_TEXTS.labels("documents").inc(len(texts))
    return vectors


def _parse(ctx: AppContext, doc: _Claimed) -> list[TextChunk]:
    s = ctx.settings
    content = extract_text(ctx.object_store.get(doc.object_key), doc.content_type, ParseLimits.from_settings(s))
    pieces = chunk_text(content, ctx.tokenizer, s.chunk_size, s.chunk_overlap_size)
    if not pieces:
        raise UnparsableDocument("document contains no text")
    return pieces


def _index_batch(ctx: AppContext, batch: list[_Claimed], cancel: threading.Event | None) -> dict[str, str]:
    """Parse, chunk, embed and store a batch of claimed documents; returns each one's final status."""
    outcome: dict[str, str] = {}
    parsed: list[tuple[_Claimed, list[TextChunk]]] = []
    for doc in batch:
        _check_cancel(cancel)
        try:
            with telemetry.span("ingest.parse", {"aperag.document.id": doc.id, "aperag.content_type": doc.content_type or ""}):  # noqa: E501
                parsed.append((doc, _parse(ctx, doc)))
        except (UnparsableDocument, UnsupportedDocument, FileNotFoundError) as exc:
            _fail(ctx, doc.id, f"{type(exc).__name__}: {exc}")
            outcome[doc.id] = "failed"
    # Start clean: a previous attempt (or older chunking settings) may have left chunks whose
    # ordinals this run does not produce.
    for doc, _ in parsed:
        remove_document_chunks(ctx, doc.id)
    flat = [(doc, piece) for doc, pieces in parsed for piece in pieces]
    rows: dict[str, list[Chunk]] = {doc.id: [] for doc, _ in parsed}
    step = ctx.settings.index_batch_size
    for start in range(0, len(flat), step):
        _check_cancel(cancel)
        part = flat[start : start + step]
        indexed = [IndexedChunk(chunk_id(d.id, p.ordinal), d.id, d.collection_id, p.text) for d, p in part]
        vectors = embed_documents(ctx, [p.text for _, p in part])
        with metrics.timed_store("vector", "upsert", ctx.settings.vector_db_type, chunks=len(indexed)):
            ctx.vector_store.upsert(indexed, vectors)
        with metrics.timed_store("fulltext", "upsert", ctx.settings.fulltext_type, chunks=len(indexed)):
            ctx.fulltext_store.upsert(indexed)
        for c, (d, p) in zip(indexed, part, strict=True):
            rows[d.id].append(
                Chunk(
                    id=c.chunk_id,
                    document_id=d.id,
                    collection_id=d.collection_id,
                    ordinal=p.ordinal,
                    text=p.text,
                    token_count=p.token_count,
                    start_char=p.start_char,
                    end_char=p.end_char,
                )
            )
    _check_cancel(cancel)
    deleted: list[str] = []
    with ctx.sessions.begin() as session:
        for document_id, doc_rows in rows.items():
            row = session.get(Document, document_id)
            if row is None:
                deleted.append(document_id)
                continue
            session.add_all(doc_rows)
            row.status = DocumentStatus.READY.value
            row.error = None
            row.chunk_count = len(doc_rows)
            row.status_changed_at = datetime.now(UTC)
            outcome[document_id] = "ready"
    for document_id in deleted:
        # Deleted while we indexed: undo our writes.
        remove_document_chunks(ctx, document_id)
        outcome[document_id] = "deleted"
    _queue_graphs(ctx, [d for d, status in outcome.items() if status == "ready"])
    metrics.INGESTED_CHUNKS.inc(sum(len(r) for d, r in rows.items() if d not in deleted))
    metrics.INGESTED_DOCUMENTS.labels(result="ready").inc(sum(1 for v in outcome.values() if v == "ready"))
    return outcome


def _release(ctx: AppContext, docs: list[_Claimed], error: str | None, requeue: bool) -> None:
    """Give claimed documents back: `pending` again, and (for companions whose own task may already
    have been consumed while we held their lock) queued again."""
    for doc in docs:
        try:
            _set_status(ctx, doc.id, DocumentStatus.PENDING, error)
            if requeue and ctx.dispatcher is not None:
                ctx.dispatcher.enqueue(doc.id)
        except Exception as exc:  # the database or broker is away: the reconciler finds them later
            log.warning("could not give %s back to the queue: %s", doc.id, exc)


def index_document(
    ctx: AppContext, document_id: str, *, final_attempt: bool, cancel: threading.Event | None = None
) -> str:
    """Index the document (and small pending companions); returns its final status.

    Raises TransientIngestionError when a retry should follow, IngestionCancelled when `cancel` was
    set (the batch is then back to `pending`). Any other failure marks the documents `failed` with
    the reason: a document never stays `indexing` because of an error.
    """
    started = time.perf_counter()
    outcome = "failed"
    try:
        outcome = _index_with_companions(ctx, document_id, final_attempt, cancel)
        return outcome
    except TransientIngestionError:
        outcome = "retry"
        raise
    except IngestionCancelled:
        outcome = "cancelled"
        raise
    except _transient_types() as exc:
        # The database went away before (or while) anything was claimed or recorded.
        outcome = "retry"
        raise TransientIngestionError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        metrics.INGESTION_TASKS.labels(outcome).inc()
        metrics.INGESTION_TASK_SECONDS.labels(outcome).observe(time.perf_counter() - started)


def _index_with_companions(
    ctx: AppContext, document_id: str, final_attempt: bool, cancel: threading.Event | None
) -> str:
    started = time.perf_counter()
    with _advisory_locks(ctx) as locks:
        if not locks.try_lock(document_id):
            log.info("document %s is being indexed by another worker; skipping", document_id)
            return "skipped"
        primary = _claim(ctx, document_id, only_pending=False)
        if isinstance(primary, str):
            return primary
        companions: list[_Claimed] = []
        try:
            companions = _claim_companions(ctx, primary, locks)
            outcome = _index_batch(ctx, [primary, *companions], cancel)
        except IngestionCancelled:
            _release(ctx, [primary, *companions], None, requeue=False)
            raise
        except _transient_types() as exc:
            reason = f"{type(exc).__name__}: {exc}"
            _release(ctx, companions, None, requeue=True)
            if final_attempt:
                _fail(ctx, primary.id, f"gave up after retries: {reason}")
                return "failed"
            try:
                _set_status(ctx, primary.id, DocumentStatus.PENDING, f"retrying: {reason}")
            except _transient_types():
                log.warning("could not record retry state of %s", primary.id)
            metrics.INGESTED_DOCUMENTS.labels(result="retry").inc()
            raise TransientIngestionError(reason) from exc
        except Exception as exc:
            # A bug or a value the stores refuse: retrying would fail the same way.
            log.exception("indexing %s failed unexpectedly", [d.id for d in (primary, *companions)])
            for doc in (primary, *companions):
                _fail_best_effort(ctx, doc.id, f"internal error: {type(exc).__name__}: {exc}")
            return "failed"
    metrics.INGESTION_SECONDS.observe(time.perf_counter() - started)
    if companions:
        log.info("indexed %s with %d companion documents in one batch", primary.id, len(companions))
    return outcome[primary.id]


def _fail_best_effort(ctx: AppContext, document_id: str, reason: str) -> None:
    try:
        _fail(ctx, document_id, reason)
    except Exception as exc:
        log.warning("could not mark %s failed (%s); the reconciler will", document_id, exc)


def stuck_documents(
    ctx: AppContext, older_than_seconds: int, exclude: Collection[str] = ()
) -> list[tuple[str, int]]:
    cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, UTC)
    with ctx.sessions() as session:
        rows = session.execute(
            select(Document.id, Document.attempts).where(
                Document.status.in_([DocumentStatus.PENDING.value, DocumentStatus.INDEXING.value]),
                Document.status_changed_at < cutoff,
            )
        ).all()
    return [(r[0], r[1]) for r in rows if r[0] not in exclude]


# Graph builds the reconciler queues per run at most: a backfill after the upgrade to revision 0004
# (every document indexed before it) spreads over runs instead of flooding the queue at once.
GRAPH_BACKFILL_BATCH = 200


def graph_backlog(ctx: AppContext, older_than_seconds: int, exclude: Collection[str] = (),
                  limit: int = GRAPH_BACKFILL_BATCH) -> list[str]:  # fmt: skip
    """Ready documents whose graph nobody is building: never queued (indexed before revision 0004, or
    the broker was away when they turned ready: graph_status NULL), or pending/building for longer
    than the cutoff (a lost task, a killed worker). Oldest first."""
    cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, UTC)
    with ctx.sessions() as session:
        rows = session.execute(
            select(Document.id)
            .where(
                Document.status == DocumentStatus.READY.value,
                or_(
                    and_(Document.graph_status.is_(None), Document.status_changed_at <= cutoff),
                    and_(Document.graph_status.in_(["pending", "building"]), Document.updated_at <= cutoff),
                ),
            )
            .order_by(Document.status_changed_at, Document.id)
            .limit(limit + len(exclude))
        ).all()
    return [r[0] for r in rows if r[0] not in exclude][:limit]


def _requeue_graphs(ctx: AppContext, older_than_seconds: int, exclude: Collection[str]) -> int:
    from aperag.ingest.dispatch import GraphDispatcher

    if not ctx.settings.graph_enabled or not isinstance(ctx.dispatcher, GraphDispatcher):
        return 0
    backlog = graph_backlog(ctx, older_than_seconds, exclude)
    for document_id in backlog:
        # `pending` with a fresh updated_at: the next run leaves it alone for another cutoff, so a
        # long queue is not fed the same document every interval.
        with ctx.sessions.begin() as session:
            doc = session.get(Document, document_id)
            if doc is None:
                continue
            doc.graph_status = "pending"
            doc.updated_at = datetime.now(UTC)
        ctx.dispatcher.enqueue_graph(document_id)
    return len(backlog)


def reconcile(
    ctx: AppContext, *, older_than_seconds: int | None = None, exclude: Collection[str] = (),
    exclude_graphs: Collection[str] = (),
) -> dict[str, int]:  # fmt: skip
    """Re-dispatch documents stuck in pending/indexing (a lost task, a killed worker or process);
    give up on those that already used all their attempts. `exclude`: documents the caller knows to
    be queued or running in this very process. Then queue the graph builds of ready documents that
    have none coming (graph_backlog; `exclude_graphs`: graph jobs queued or running in this process).
    Then bring the full-text index up to date with what the previous release's pods wrote during a
    rollout (`FulltextStore.sync`; one query when nothing)."""
    older = ctx.settings.stuck_after_seconds if older_than_seconds is None else older_than_seconds
    requeued = failed = 0
    for document_id, attempts in stuck_documents(ctx, older, exclude):
        if attempts > ctx.settings.task_max_retries:
            _fail(ctx, document_id, f"stuck after {attempts} attempts")
            failed += 1
            continue
        _set_status(ctx, document_id, DocumentStatus.PENDING, None)
        if ctx.dispatcher is not None:
            ctx.dispatcher.enqueue(document_id)
        requeued += 1
    graphs = _requeue_graphs(ctx, older, exclude_graphs)
    synced = ctx.fulltext_store.sync()
    if synced:
        log.info("indexed %d chunks the previous release wrote to the tsvector table", synced)
    return {"requeued": requeued, "failed": failed, "graph_requeued": graphs, "fulltext_synced": synced}
