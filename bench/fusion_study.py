"""Fusion study: how to combine the vector and BM25 rankings, measured on one evaluation set.

    .venv/bin/python -m bench.fusion_study [--set tuning|heldout|project] [--json FILE]

Ingests the set through the app's path, takes for every query the two rankings search() fuses (same
depth), then scores each fusion function on them (nDCG@10 / recall@10, chunks collapsed to documents).
Choices are made on `--set tuning` only; `--set heldout` confirms them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from aperag.context import AppContext
from aperag.search import absolute_fuse, min_max_fuse, rrf_fuse
from aperag.stores import FulltextHits, Hit
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database
from bench.corpora import EvalSet, load_heldout, load_tuning
from bench.embedding_cache import cached_embeddings
from bench.retrieval_eval import (
    CHUNK_ENV,
    REAL_TEXT_CHUNK_ENV,
    ingest_corpus,
    load_project_set,
    raw_lists,
    score_fusion,
)

Fusion = Callable[[list[Hit], FulltextHits], list[Hit]]


def candidates() -> dict[str, Fusion]:
    out: dict[str, Fusion] = {
        "vector only": lambda v, t: v,
        "full-text only": lambda v, t: t.hits,
        "RRF k=60": rrf_fuse,
        "RRF k=20": partial(rrf_fuse, k=20),
    }
    for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        out[f"min-max CC w_vec={w}"] = partial(min_max_fuse, vector_weight=w)
    for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        out[f"absolute CC w_vec={w}"] = partial(absolute_fuse, vector_weight=w)
    return out


def load_set(name: str) -> tuple[EvalSet, dict[str, str], str]:
    if name == "tuning":
        return load_tuning(), REAL_TEXT_CHUNK_ENV, ".txt"
    if name == "heldout":
        return load_heldout(), REAL_TEXT_CHUNK_ENV, ".txt"
    return load_project_set(), CHUNK_ENV, ".md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="tuning", choices=("tuning", "heldout", "project"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--bm25-grid", action="store_true", help="also score full-text alone for a grid of k1, b")
    args = parser.parse_args()
    evalset, chunk_env, suffix = load_set(args.set)
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        db = new_database(server, Path(objects), **chunk_env)
        with cached_embeddings(db.ctx.settings):
            by_app_id = ingest_corpus(db.ctx, "study", evalset.docs, suffix)
            from aperag import services

            collection = services.get_collection(db.ctx, "study")
            raw = raw_lists(db.ctx, collection.id, by_app_id, evalset.queries)
            grid = bm25_grid(db.ctx, collection.id, by_app_id, evalset) if args.bm25_grid else []
    kinds = sorted({q.type for q in evalset.queries})
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for name, fusion in candidates().items():
        s = score_fusion(raw, fusion, evalset.queries, evalset.qrels)
        figures[name] = {"ndcg": s.ndcg, "recall": s.recall, **{f"ndcg_{k}": s.by_type[k][0] for k in kinds}}
        rows.append(
            [name, f"{s.ndcg:.3f}", f"{s.recall:.3f}"]
            + [f"{s.by_type[k][0]:.3f} / {s.by_type[k][1]:.3f}" for k in kinds]
        )
    print(
        f"# fusion study on {evalset.name}: {len(evalset.docs)} documents, {len(evalset.queries)} queries"
        f" — {machine_facts()}"
    )
    print(markdown_table(["fusion", "nDCG@10", "recall@10"] + [f"{k} nDCG / recall" for k in kinds], rows))
    if grid:
        print(markdown_table(["BM25 k1", "b", "full-text nDCG@10", "recall@10"], grid))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def bm25_grid(ctx: AppContext, collection_id: str, by_app_id: dict[str, str], evalset: EvalSet) -> list[list[str]]:
    """Full-text alone for several BM25 parameters (query-time constants of the store)."""
    from aperag.stores import pg_fulltext_store as store

    saved = store.K1, store.B
    rows = []
    try:
        for k1 in (0.9, 1.2, 1.5, 2.0):
            for b in (0.3, 0.5, 0.75, 0.9):
                store.K1, store.B = k1, b
                raw = raw_lists(ctx, collection_id, by_app_id, evalset.queries, vector=False)
                s = score_fusion(raw, lambda v, t: t.hits, evalset.queries, evalset.qrels)
                rows.append([str(k1), str(b), f"{s.ndcg:.3f}", f"{s.recall:.3f}"])
    finally:
        store.K1, store.B = saved
    return rows


if __name__ == "__main__":
    main()
