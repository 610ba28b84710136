"""Search a collection: vector, full-text, or hybrid by reciprocal-rank fusion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from aperag import metrics
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus
from aperag.stores import Hit

Mode = Literal["vector", "fulltext", "hybrid"]
MODES: tuple[str, ...] = ("vector", "fulltext", "hybrid")
# The usual RRF constant (Cormack et al. 2009): dampens the weight of the very top ranks.
RRF_K = 60


@dataclass(frozen=True)
class SearchResult:
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    vector_rank: int | None
    fulltext_rank: int | None


@dataclass
class SearchResponse:
    results: list[SearchResult]
    timings_ms: dict[str, float] = field(default_factory=dict)


def rrf_fuse(rankings: list[list[Hit]], k: int = RRF_K) -> list[Hit]:
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
    return [Hit(cid, s) for cid, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def search(
    ctx: AppContext,
    collection_id: str,
    query: str,
    mode: str,
    top_k: int,
    query_vector: npt.NDArray[np.float32] | None = None,
) -> SearchResponse:
    """`query_vector`: the query's embedding when the caller already has it (it is then not embedded
    again, and `embed_query` is absent from the timings); the benchmarks use it to time the stores alone."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    # Over-fetch: orphaned rows of failed documents are filtered below, and fusion needs depth.
    depth = max(top_k * 3, 30)
    vector_hits: list[Hit] = []
    text_hits: list[Hit] = []
    if mode in ("vector", "hybrid"):
        if query_vector is None:
            t0 = time.perf_counter()
            query_vector = ctx.embedder.embed([query])[0]
            timings["embed_query"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        vector_hits = ctx.vector_store.search(collection_id, query_vector, depth)
        timings["vector_store"] = (time.perf_counter() - t1) * 1000
    if mode in ("fulltext", "hybrid"):
        t0 = time.perf_counter()
        text_hits = ctx.fulltext_store.search(collection_id, query, depth)
        timings["fulltext_store"] = (time.perf_counter() - t0) * 1000
    if mode == "vector":
        ranked = vector_hits
    elif mode == "fulltext":
        ranked = text_hits
    else:
        ranked = rrf_fuse([vector_hits, text_hits])
    vrank = {h.chunk_id: i for i, h in enumerate(vector_hits, start=1)}
    trank = {h.chunk_id: i for i, h in enumerate(text_hits, start=1)}
    ids = [h.chunk_id for h in ranked]
    with ctx.sessions() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.document_id, Chunk.text, Document.filename)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(ids), Document.status == DocumentStatus.READY.value)
        ).all()
    found = {r[0]: r for r in rows}
    results = [
        SearchResult(
            chunk_id=h.chunk_id,
            document_id=found[h.chunk_id][1],
            filename=found[h.chunk_id][3],
            text=found[h.chunk_id][2],
            score=h.score,
            vector_rank=vrank.get(h.chunk_id),
            fulltext_rank=trank.get(h.chunk_id),
        )
        for h in ranked
        if h.chunk_id in found
    ][:top_k]
    timings["total"] = (time.perf_counter() - started) * 1000
    metrics.SEARCH_SECONDS.labels(mode=mode).observe(timings["total"] / 1000)
    return SearchResponse(results=results, timings_ms=timings)
