"""Retrieval-quality evaluation on the labelled corpus in tests/data/retrieval.

The corpus: 72 short technical documents (docs/*.md), 64 queries (queries.jsonl, each tagged
`lexical` or `paraphrase`) and graded judgements (qrels.jsonl: 2 = highly relevant, 1 = partially;
unjudged = not relevant). Judgements are per document; a search returns chunks, so the ranking that
is scored is the chunk ranking collapsed to documents (each document at the rank of its best chunk).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from aperag import services
from aperag.context import AppContext
from aperag.ingest.pipeline import index_document
from aperag.search import MODES, search

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "retrieval"
CUTOFF = 10
# Chunks requested from search() per query; collapsed to documents, then cut at CUTOFF.
CHUNK_DEPTH = 30
# The chunking the evaluation ingests with (in model tokens): ~3-4 chunks per document.
CHUNK_ENV = {"CHUNK_SIZE": "96", "CHUNK_OVERLAP_SIZE": "16"}


@dataclass(frozen=True)
class Query:
    id: str
    type: str
    text: str


def load_corpus(root: Path = CORPUS) -> tuple[dict[str, str], list[Query], dict[str, dict[str, int]]]:
    docs = {p.stem: p.read_text() for p in sorted((root / "docs").glob("*.md"))}
    queries = [Query(**json.loads(line)) for line in (root / "queries.jsonl").read_text().splitlines() if line]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (root / "qrels.jsonl").read_text().splitlines():
        if line:
            row = json.loads(line)
            qrels[row["query_id"]][row["doc_id"]] = int(row["grade"])
    return docs, queries, dict(qrels)


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


def ingest_corpus(ctx: AppContext, collection: str, docs: dict[str, str]) -> dict[str, str]:
    """Upload and index every document through the app's code path; returns app id -> corpus id."""
    services.create_collection(ctx, collection)
    by_app_id: dict[str, str] = {}
    for doc_id, body in docs.items():
        result = services.upload_document(ctx, collection, f"{doc_id}.md", None, body.encode())
        status = index_document(ctx, result.document.id, final_attempt=True)
        if status != "ready":
            raise RuntimeError(f"{doc_id}: indexing ended {status}")
        by_app_id[result.document.id] = doc_id
    return by_app_id


def document_ranking(ctx: AppContext, collection_id: str, text: str, mode: str, by_app_id: dict[str, str]) -> list[str]:
    ranked: list[str] = []
    for hit in search(ctx, collection_id, text, mode, CHUNK_DEPTH).results:
        doc = by_app_id[hit.document_id]
        if doc not in ranked:
            ranked.append(doc)
    return ranked[:CUTOFF]


@dataclass(frozen=True)
class ModeScores:
    ndcg: float
    recall: float
    by_type: dict[str, tuple[float, float]]
    per_query: dict[str, float]


def evaluate(ctx: AppContext, collection_id: str, by_app_id: dict[str, str], queries: list[Query],
             qrels: dict[str, dict[str, int]]) -> dict[str, ModeScores]:  # fmt: skip
    scores: dict[str, ModeScores] = {}
    for mode in MODES:
        per_ndcg: dict[str, float] = {}
        per_recall: dict[str, float] = {}
        for q in queries:
            ranked = document_ranking(ctx, collection_id, q.text, mode, by_app_id)
            per_ndcg[q.id] = ndcg_at(ranked, qrels[q.id])
            per_recall[q.id] = recall_at(ranked, qrels[q.id])
        by_type: dict[str, tuple[float, float]] = {}
        for kind in sorted({q.type for q in queries}):
            ids = [q.id for q in queries if q.type == kind]
            by_type[kind] = (
                sum(per_ndcg[i] for i in ids) / len(ids),
                sum(per_recall[i] for i in ids) / len(ids),
            )
        scores[mode] = ModeScores(
            ndcg=sum(per_ndcg.values()) / len(queries),
            recall=sum(per_recall.values()) / len(queries),
            by_type=by_type,
            per_query=per_ndcg,
        )
    return scores
