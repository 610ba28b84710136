"""Retrieval-quality evaluation: nDCG@10 and recall@10 per search mode on a judged set.

Sets: the project's own labelled corpus in tests/data/retrieval (72 short documents written for the
project, 64 queries) and the two real-text sets of bench/corpora.py (tuning: Python module docs;
held-out: Linux man pages). Judgements are per document; a search returns chunks, so the ranking
that is scored is the chunk ranking collapsed to documents (each document at the rank of its best
chunk). Documents go through the app's own path: upload -> parse -> chunk -> embed -> stores.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Chunk
from aperag.ingest.pipeline import index_document
from aperag.search import MODES, search
from aperag.stores import FulltextHits, Hit
from bench.corpora import EvalSet, Query

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "retrieval"
CUTOFF = 10
# Chunks requested from search() per query; collapsed to documents, then cut at CUTOFF.
CHUNK_DEPTH = 30
# The chunking the project corpus is ingested with (in model tokens): ~3-4 chunks per document.
CHUNK_ENV = {"CHUNK_SIZE": "96", "CHUNK_OVERLAP_SIZE": "16"}
# The real-text sets use the app's default chunking.
REAL_TEXT_CHUNK_ENV = {"CHUNK_SIZE": "200", "CHUNK_OVERLAP_SIZE": "20"}



def load_corpus(root: Path = CORPUS) -> tuple[dict[str, str], list[Query], dict[str, dict[str, int]]]:
    docs = {p.stem: p.read_text() for p in sorted((root / "docs").glob("*.md"))}
    queries = [Query(**json.loads(line)) for line in (root / "queries.jsonl").read_text().splitlines() if line]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (root / "qrels.jsonl").read_text().splitlines():
        if line:
            row = json.loads(line)
            qrels[row["query_id"]][row["doc_id"]] = int(row["grade"])
    return docs, queries, dict(qrels)


def load_project_set() -> EvalSet:
    docs, queries, qrels = load_corpus()
    return EvalSet("project corpus (written for the project)", docs, queries, qrels)


def ndcg_at(ranked: list[str], judged: dict[str, int], k: int = CUTOFF) -> float:
    def gain(grade: int) -> float:
        return float(2**grade - 1)

    dcg = sum(gain(judged.get(d, 0)) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(judged.values(), reverse=True)[:k]
    idcg = sum(gain(g) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], judged: dict[str, int], k: int = CUTOFF) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def ingest_corpus(ctx: AppContext, collection: str, docs: dict[str, str], suffix: str = ".md") -> dict[str, str]:
    """Upload and index every document through the app's code path; returns app id -> corpus id."""
    services.create_collection(ctx, collection)
    by_app_id: dict[str, str] = {}
    for doc_id, body in docs.items():
        result = services.upload_document(ctx, collection, f"{doc_id}{suffix}", None, body.encode())
        status = index_document(ctx, result.document.id, final_attempt=True)
        if status != "ready":
            raise RuntimeError(f"{doc_id}: indexing ended {status}")
        by_app_id[result.document.id] = doc_id
    return by_app_id


def collapse(chunk_documents: list[str]) -> list[str]:
    """Chunk ranking (as document ids) -> document ranking, each at its best chunk, cut at CUTOFF."""
    return list(dict.fromkeys(chunk_documents))[:CUTOFF]


def document_ranking(ctx: AppContext, collection_id: str, text: str, mode: str, by_app_id: dict[str, str]) -> list[str]:
    hits = search(ctx, collection_id, text, mode, CHUNK_DEPTH).results
    return collapse([by_app_id[h.document_id] for h in hits])


@dataclass(frozen=True)
class ModeScores:
    ndcg: float
    recall: float
    by_type: dict[str, tuple[float, float]]
    per_query: dict[str, float]


def score_rankings(
    rankings: dict[str, list[str]], queries: list[Query], qrels: dict[str, dict[str, int]]
) -> ModeScores:
    per_ndcg = {q.id: ndcg_at(rankings[q.id], qrels[q.id]) for q in queries}
    per_recall = {q.id: recall_at(rankings[q.id], qrels[q.id]) for q in queries}
    by_type: dict[str, tuple[float, float]] = {}
    for kind in sorted({q.type for q in queries}):
        ids = [q.id for q in queries if q.type == kind]
        by_type[kind] = (sum(per_ndcg[i] for i in ids) / len(ids), sum(per_recall[i] for i in ids) / len(ids))
    return ModeScores(
        ndcg=sum(per_ndcg.values()) / len(queries),
        recall=sum(per_recall.values()) / len(queries),
        by_type=by_type,
        per_query=per_ndcg,
    )


def evaluate(ctx: AppContext, collection_id: str, by_app_id: dict[str, str], queries: list[Query],
             qrels: dict[str, dict[str, int]]) -> dict[str, ModeScores]:  # fmt: skip
    """Every mode through the app's search()."""
    return {
        mode: score_rankings(
            {q.id: document_ranking(ctx, collection_id, q.text, mode, by_app_id) for q in queries}, queries, qrels
        )
        for mode in MODES
    }


@dataclass(frozen=True)
class RawLists:
    """What search() fuses, per query: the vector and full-text chunk rankings at search()'s depth."""

    vector: dict[str, list[Hit]]
    text: dict[str, FulltextHits]
    chunk_document: dict[str, str]  # chunk id -> corpus document id


def raw_lists(
    ctx: AppContext, collection_id: str, by_app_id: dict[str, str], queries: list[Query], vector: bool = True
) -> RawLists:
    depth = max(CHUNK_DEPTH * 3, 30)  # as search() asks the stores for top_k = CHUNK_DEPTH
    vectors: dict[str, list[Hit]] = {}
    text: dict[str, FulltextHits] = {}
    for q in queries:
        if vector:
            vectors[q.id] = ctx.vector_store.search(collection_id, ctx.embedder.embed_queries([q.text])[0], depth)
        text[q.id] = ctx.fulltext_store.search(collection_id, q.text, depth)
    with ctx.sessions() as session:
        rows = session.execute(select(Chunk.id, Chunk.document_id).where(Chunk.collection_id == collection_id)).all()
    return RawLists(vectors, text, {r[0]: by_app_id[r[1]] for r in rows})


def score_fusion(raw: RawLists, fusion: Callable[[list[Hit], FulltextHits], list[Hit]], queries: list[Query],
                 qrels: dict[str, dict[str, int]]) -> ModeScores:  # fmt: skip
    rankings = {
        q.id: collapse(
            [raw.chunk_document[h.chunk_id] for h in fusion(raw.vector.get(q.id, []), raw.text[q.id])[:CHUNK_DEPTH]]
        )
        for q in queries
    }
    return score_rankings(rankings, queries, qrels)
