"""Build one document's part of its collection's graph: the task ingestion queues once the document's
chunks are indexed (search works meanwhile; the graph follows).

The extractor is the chat model's when one is configured (LLM_API_BASE, LLM_MODEL), else the offline
one. Per-collection limit: a task holds one of GRAPH_EXTRACTION_CONCURRENCY session advisory locks
("slots") of its collection while it extracts; with none free it is retried later (GraphBusy).
Outcomes, in `documents.graph_status`: ready, partial (`graph_failed_chunks` chunks had unreadable model
output; the rest is in the graph), failed (`graph_error`: the model refused the request, or stayed
unavailable through the retries), disabled (GRAPH_ENABLED=false).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import select, text

from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus
from aperag.db.session import get_engine
from aperag.graph import store
from aperag.graph.llm_extractor import LLMExtractor
from aperag.graph.model import ChunkOutcome, ChunkText, normalise_name
from aperag.graph.offline import OfflineExtractor
from aperag.llm import LLMClient, LLMRequestRejected, LLMUnavailable, NotConfigured, TokenMeter, client_from_settings

log = logging.getLogger(__name__)


class GraphBusy(RuntimeError):
    """Every extraction slot of the collection is taken: try again later."""


class TransientGraphError(RuntimeError):
    """The model or the database was unreachable: worth retrying."""


class Extractor(Protocol):
    name: str

    def extract(self, chunks: list[ChunkText]) -> list[ChunkOutcome]: ...


def _slot_key(collection_id: str, slot: int) -> int:
    return zlib.crc32(f"{collection_id}:{slot}".encode()) | (3 << 40)


@contextmanager
def collection_slot(ctx: AppContext, collection_id: str) -> Iterator[None]:
    """Hold one of the collection's extraction slots (a session advisory lock: released if we die)."""
    with get_engine(ctx.settings.database_url).connect() as conn:
        for slot in range(ctx.settings.graph_extraction_concurrency):
            key = _slot_key(collection_id, slot)
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                return
        raise GraphBusy(f"all {ctx.settings.graph_extraction_concurrency} extraction slots of the collection are busy")


_clients: dict[tuple[str, str, str], LLMClient] = {}


def _cache_get(ctx: AppContext, model: str) -> Any:
    def get(keys: list[str]) -> dict[str, dict[str, Any]]:
        with ctx.sessions() as session:
            rows = session.execute(
                text("SELECT cache_key, result FROM graph_extraction_cache WHERE cache_key = ANY(:k)"), {"k": keys}
            )
            return {r[0]: r[1] for r in rows}

    return get


def _cache_put(ctx: AppContext, model: str) -> Any:
    from aperag.graph.llm_extractor import PROMPT_VERSION

    def put(entries: dict[str, dict[str, Any]]) -> None:
        import json

        with ctx.sessions.begin() as session:
            for key, result in entries.items():
                session.execute(
                    text(
                        "INSERT INTO graph_extraction_cache (cache_key, prompt_version, model, result)"
                        " VALUES (:k, :p, :m, CAST(:r AS jsonb)) ON CONFLICT (cache_key) DO NOTHING"
                    ),
                    {"k": key, "p": PROMPT_VERSION, "m": model, "r": json.dumps(result)},
                )

    return put


def extractor_for(ctx: AppContext, meter: TokenMeter | None = None) -> Extractor:
    s = ctx.settings
    try:
        key = (s.llm_api_base, s.llm_model, s.llm_api_key)
        client = _clients.get(key)
        if client is None or meter is not None:
            client = client_from_settings(s, meter)
            if meter is None:
                _clients[key] = client
    except NotConfigured:
        return OfflineExtractor()
    return LLMExtractor(client, s.graph_extraction_batch, _cache_get(ctx, s.llm_model), _cache_put(ctx, s.llm_model))


def _set_graph_status(
    ctx: AppContext, document_id: str, status: str, failed: int = 0, error: str | None = None
) -> None:
    with ctx.sessions.begin() as session:
        doc = session.get(Document, document_id)
        if doc is not None:
            doc.graph_status = status
            doc.graph_failed_chunks = failed
            doc.graph_error = error[:2000] if error else None


def _embed(ctx: AppContext, texts: list[str]) -> list[str]:
    if not texts:
        return []
    vectors = ctx.embedder.embed(texts)
    return [store.vector_literal(v) for v in vectors]


def build_document_graph(ctx: AppContext, document_id: str, *, final_attempt: bool = True,
                         extractor: Extractor | None = None) -> str:  # fmt: skip
    """Extract and merge the document's graph; returns its graph status (or why nothing was done:
    deleted, not_ready). Raises GraphBusy or TransientGraphError when a retry should follow."""
    with ctx.sessions() as session:
        doc = session.get(Document, document_id)
        if doc is None:
            return "deleted"
        if doc.status != DocumentStatus.READY.value:
            return "not_ready"
        collection_id = doc.collection_id
        chunks = [
            ChunkText(r[0], r[1])
            for r in session.execute(
                select(Chunk.id, Chunk.text).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)
            )
        ]
    if not ctx.settings.graph_enabled:
        _set_graph_status(ctx, document_id, "disabled")
        return "disabled"
    started = time.perf_counter()
    with collection_slot(ctx, collection_id):
        _set_graph_status(ctx, document_id, "building")
        chosen = extractor or extractor_for(ctx)
        try:
            outcomes = chosen.extract(chunks)
        except LLMRequestRejected as exc:
            _set_graph_status(ctx, document_id, "failed", error=f"the model refused the request: {exc}")
            return "failed"
        except LLMUnavailable as exc:
            if final_attempt:
                _set_graph_status(ctx, document_id, "failed", error=f"the model stayed unavailable: {exc}")
                return "failed"
            _set_graph_status(ctx, document_id, "pending", error=f"retrying: {exc}")
            raise TransientGraphError(str(exc)) from exc
        write = _prepare_write(ctx, collection_id, document_id, outcomes)
        with ctx.sessions.begin() as session:
            if session.get(Document, document_id) is None:
                return "deleted"
            entities, relations = store.write_document(session, write)
    failed = sum(1 for o in outcomes if o.graph is None)
    status = "partial" if failed else "ready"
    _set_graph_status(
        ctx, document_id, status, failed,
        f"{failed} of {len(outcomes)} chunks could not be extracted" if failed else None,
    )  # fmt: skip
    log.info(
        "graph of %s: %d entities, %d relations, %d/%d chunks failed, %s extractor, %.2fs",
        document_id, entities, relations, failed, len(outcomes), chosen.name, time.perf_counter() - started,
    )  # fmt: skip
    return status


def _prepare_write(
    ctx: AppContext, collection_id: str, document_id: str, outcomes: list[ChunkOutcome]
) -> store.DocumentGraphWrite:
    """Embeddings of the entities and relations this document may add (outside any lock: the model
    is the slow part)."""
    names = store.entity_keys(outcomes)
    with ctx.sessions() as session:
        known = store.existing_entity_keys(session, collection_id, list(names))
    new_keys = sorted(k for k in names if k not in known)
    entity_vectors = dict(
        zip(new_keys, _embed(ctx, [f"{names[k].name}: {names[k].description}"[:1000] for k in new_keys]), strict=True)
    )
    pairs: dict[tuple[str, str], str] = {}
    for outcome in outcomes:
        if outcome.graph is None:
            continue
        for relation in outcome.graph.relations:
            a, b = normalise_name(relation.source), normalise_name(relation.target)
            if a and b and a != b:
                pair = (a, b) if a < b else (b, a)
                pairs.setdefault(pair, f"{relation.source} {relation.target}: {' '.join(relation.keywords)} "
                                       f"{relation.description}"[:1000])  # fmt: skip
    # Relation ids order pairs by entity id, not name: the write looks vectors up under both orders.
    ordered = sorted(pairs)
    vectors = _embed(ctx, [pairs[p] for p in ordered])
    relation_vectors: dict[tuple[str, str], str] = {}
    for pair, vector in zip(ordered, vectors, strict=True):
        relation_vectors[pair] = vector
        relation_vectors[(pair[1], pair[0])] = vector
    return store.DocumentGraphWrite(collection_id, document_id, outcomes, entity_vectors, relation_vectors)
