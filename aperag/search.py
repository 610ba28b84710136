"""Search a collection: vector, full-text, or hybrid (both, fused).

Fusion (`fuse`): a convex combination of the two scores, each on an absolute scale - the cosine
similarity as it is, the BM25 score divided by the most that query could score (`max_score`: the sum
of its terms' idf * (k1 + 1)). On an absolute scale a weak full-text match (only common words of
the query found) stays weak instead of being stretched to 1 as min-max normalisation or rank fusion
(RRF) would, so each query leans on whichever side actually matched: that is the query-dependent part.
Chosen on the tuning set against RRF and min-max combinations, confirmed on the held-out set
(docs/benchmarks.md, "Fusion"). When the full-text engine gives no bound (Elasticsearch), its scores
are divided by the best score of the list instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from aperag import metrics, telemetry
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus
from aperag.db.session import shared_transaction
from aperag.embedding import embed_query
from aperag.stores import FulltextHits, Hit

if TYPE_CHECKING:
    from aperag.graph.retrieval import GraphContext

Mode = Literal["vector", "fulltext", "hybrid", "graph"]
MODES: tuple[str, ...] = ("vector", "fulltext", "hybrid", "graph")
# The usual RRF constant (Cormack et al. 2009): dampens the weight of the very top ranks.
RRF_K = 60
# Weight of the vector score in the convex combination (1 - this for full text); see the module doc.
VECTOR_WEIGHT = 0.6
# Weight of the graph's ranking when hybrid fuses it too (include_graph): the two-way fusion keeps
# 1 - this. 0.1: the least harmful of 0.1-0.5 on the tuning set (every weight lowered nDCG@10 below
# plain hybrid there, with the offline extractor's graph), confirmed on the held-out set; which is also
# why include_graph is off by default. docs/benchmarks.md, "Graph".
GRAPH_WEIGHT = 0.1


@dataclass(frozen=True)
class SearchResult:
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    vector_rank: int | None
    fulltext_rank: int | None
    graph_rank: int | None = None


@dataclass
class SearchResponse:
    results: list[SearchResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The entities and relations the graph matched (graph mode, or hybrid with include_graph).
    graph: GraphContext | None = None


def rrf_fuse(vector_hits: list[Hit], text: FulltextHits, k: int = RRF_K) -> list[Hit]:
    scores: dict[str, float] = {}
    for ranking in (vector_hits, text.hits):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
    return _ranked(scores)


def _ranked(scores: dict[str, float]) -> list[Hit]:
    return [Hit(cid, s) for cid, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def _combine(vector: dict[str, float], text: dict[str, float], vector_weight: float) -> list[Hit]:
    """vector_weight * v + (1 - vector_weight) * t; a chunk missing from a list gets 0 from it."""
    scores = {cid: vector_weight * s for cid, s in vector.items()}
    for cid, s in text.items():
        scores[cid] = scores.get(cid, 0.0) + (1.0 - vector_weight) * s
    return _ranked(scores)


def _min_max(hits: list[Hit]) -> dict[str, float]:
    if not hits:
        return {}
    lo, hi = min(h.score for h in hits), max(h.score for h in hits)
    span = hi - lo
    return {h.chunk_id: (h.score - lo) / span if span > 0 else 1.0 for h in hits}


def text_scale(text: FulltextHits) -> float:
    """The divisor that puts the full-text scores on 0..1: the query's bound, else the list's best."""
    if text.max_score:
        return text.max_score
    return max((h.score for h in text.hits), default=1.0) or 1.0


def absolute_fuse(vector_hits: list[Hit], text: FulltextHits, vector_weight: float = VECTOR_WEIGHT) -> list[Hit]:
    scale = text_scale(text)
    return _combine(
        {h.chunk_id: h.score for h in vector_hits}, {h.chunk_id: h.score / scale for h in text.hits}, vector_weight
    )


def min_max_fuse(vector_hits: list[Hit], text: FulltextHits, vector_weight: float = VECTOR_WEIGHT) -> list[Hit]:
    return _combine(_min_max(vector_hits), _min_max(text.hits), vector_weight)


Fusion = Callable[[list[Hit], FulltextHits], list[Hit]]
fuse: Fusion = absolute_fuse


def needs_embedding(mode: str) -> bool:
    return mode in ("vector", "hybrid", "graph")


def fuse_with_graph(two_way: list[Hit], graph_hits: list[Hit], graph_weight: float | None = None) -> list[Hit]:
    """(1 - w) * the vector/full-text fusion + w * the graph score (already on 0..1). The weight is read
    at call time (not bound as a default) so bench/graph_quality.py can sweep it through search()."""
    weight = GRAPH_WEIGHT if graph_weight is None else graph_weight
    return _combine({h.chunk_id: h.score for h in two_way}, {h.chunk_id: h.score for h in graph_hits},
                    1.0 - weight)  # fmt: skip


def search(
    ctx: AppContext,
    collection_id: str,
    query: str,
    mode: str,
    top_k: int,
    query_vector: npt.NDArray[np.float32] | None = None,
    include_graph: bool = False,
) -> SearchResponse:
    """`query_vector`: the query's embedding when the caller already has it (it is then not embedded
    again, and `embed_query` is absent from the timings); the benchmarks use it to time the stores alone.
    The query is embedded first; then all the database work (the stores on the app's PostgreSQL, the
    ready-documents filter, and the caller's own reads if it opened the block) runs on one connection
    and transaction (`aperag.db.session.shared_transaction`)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if needs_embedding(mode) and query_vector is None:
        query_vector = _embed(ctx, query, timings)
    with shared_transaction(ctx.settings.database_url):
        results, graph_context = _retrieve(ctx, collection_id, query, mode, top_k, query_vector, timings, include_graph)
    timings["total"] = (time.perf_counter() - started) * 1000
    metrics.SEARCH_SECONDS.labels(mode=mode).observe(timings["total"] / 1000)
    return SearchResponse(results=results, timings_ms=timings, graph=graph_context)


def _embed(ctx: AppContext, query: str, timings: dict[str, float]) -> npt.NDArray[np.float32]:
    t0 = time.perf_counter()
    with telemetry.span("embedding.embed_query", {"aperag.embedding.model": ctx.settings.embedding_model}):
        vector = embed_query(ctx.embedder, query, ctx.settings.query_embedding_batch)
    timings["embed_query"] = (time.perf_counter() - t0) * 1000
    metrics.EMBEDDING_SECONDS.labels("query").observe(timings["embed_query"] / 1000)
    metrics.EMBEDDED_TEXTS.labels("query").inc()
    return vector


def _retrieve(
    ctx: AppContext,
    collection_id: str,
    query: str,
    mode: str,
    top_k: int,
    query_vector: npt.NDArray[np.float32] | None,
    timings: dict[str, float],
    include_graph: bool,
) -> tuple[list[SearchResult], GraphContext | None]:
    """The stores' hits, fused, filtered to ready documents; each step's time in `timings`."""
    # Over-fetch: orphaned rows of failed documents are filtered below, and fusion needs depth.
    depth = max(top_k * 3, 30)
    vector_hits: list[Hit] = []
    text = FulltextHits([], None)
    use_graph = mode == "graph" or (mode == "hybrid" and include_graph)
    graph_hits: list[Hit] = []
    if query_vector is not None and mode in ("vector", "hybrid"):
        t0 = time.perf_counter()
        with metrics.timed_store("vector", "search", ctx.settings.vector_db_type, top_k=depth):
            vector_hits = ctx.vector_store.search(collection_id, query_vector, depth)
        timings["vector_store"] = (time.perf_counter() - t0) * 1000
    graph_context: GraphContext | None = None
    if use_graph:
        from aperag.graph.retrieval import describe, graph_search

        t0 = time.perf_counter()
        with metrics.timed_store("graph", "search", "postgres", top_k=depth), ctx.read_session() as session:
            match = graph_search(session, collection_id, query, query_vector, depth)
            graph_hits = match.hits
            graph_context = describe(session, match)
        timings["graph_store"] = (time.perf_counter() - t0) * 1000
    if mode in ("fulltext", "hybrid"):
        t0 = time.perf_counter()
        with metrics.timed_store("fulltext", "search", ctx.settings.fulltext_type, top_k=depth):
            text = ctx.fulltext_store.search(collection_id, query, depth)
        timings["fulltext_store"] = (time.perf_counter() - t0) * 1000
    if mode == "vector":
        ranked = vector_hits
    elif mode == "fulltext":
        ranked = text.hits
    elif mode == "graph":
        ranked = graph_hits
    else:
        ranked = fuse(vector_hits, text)
        if use_graph:
            ranked = fuse_with_graph(ranked, graph_hits)
    t0 = time.perf_counter()
    results = _ready_results(ctx, ranked, vector_hits, text.hits, top_k, graph_hits)
    timings["ready_filter"] = (time.perf_counter() - t0) * 1000
    return results, graph_context


def _ready_results(
    ctx: AppContext,
    ranked: list[Hit],
    vector_hits: list[Hit],
    text_hits: list[Hit],
    top_k: int,
    graph_hits: list[Hit] | None = None,
) -> list[SearchResult]:
    """The ranked chunks that belong to ready documents, with their text, cut at top_k."""
    grank = {h.chunk_id: i for i, h in enumerate(graph_hits or [], start=1)}
    vrank = {h.chunk_id: i for i, h in enumerate(vector_hits, start=1)}
    trank = {h.chunk_id: i for i, h in enumerate(text_hits, start=1)}
    ids = [h.chunk_id for h in ranked]
    if not ids:
        return []
    with ctx.read_session() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.document_id, Chunk.text, Document.filename)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(ids), Document.status == DocumentStatus.READY.value)
        ).all()
    found = {r[0]: r for r in rows}
    return [
        SearchResult(
            chunk_id=h.chunk_id,
            document_id=found[h.chunk_id][1],
            filename=found[h.chunk_id][3],
            text=found[h.chunk_id][2],
            score=h.score,
            vector_rank=vrank.get(h.chunk_id),
            fulltext_rank=trank.get(h.chunk_id),
            graph_rank=grank.get(h.chunk_id),
        )
        for h in ranked
        if h.chunk_id in found
    ][:top_k]
