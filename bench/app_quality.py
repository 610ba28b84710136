"""Retrieval quality: nDCG@10 and recall@10 of vector, full-text (BM25) and hybrid search on three
judged sets, ingested through the app's real code path (upload -> parse -> chunk -> embed with the
local all-MiniLM-L6-v2 -> pgvector + PostgreSQL BM25 full-text) on an embedded PostgreSQL.

    .venv/bin/python -m bench.app_quality [--sets project,tuning,heldout] [--json results.json]

Sets (bench/corpora.py, bench/retrieval_eval.py): `project` (tests/data/retrieval, written for the
project), `tuning` (Python module docs: every ranking choice was made on it) and `heldout` (Linux man
pages: never tuned on). Document vectors come from the evaluation embedding cache after a first run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from aperag import services
from aperag.db.models import Chunk
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, server_version
from bench.corpora import EvalSet, load_heldout, load_tuning
from bench.embedding_cache import cached_embeddings
from bench.retrieval_eval import (
    CHUNK_DEPTH,
    CHUNK_ENV,
    CUTOFF,
    REAL_TEXT_CHUNK_ENV,
    ModeScores,
    evaluate,
    ingest_corpus,
    load_project_set,
)

SETS = {
    "project": (load_project_set, CHUNK_ENV, ".md"),
    "tuning": (load_tuning, REAL_TEXT_CHUNK_ENV, ".txt"),
    "heldout": (load_heldout, REAL_TEXT_CHUNK_ENV, ".txt"),
}


def run_set(server: Any, objects: Path, evalset: EvalSet, chunk_env: dict[str, str], suffix: str) -> dict[str, Any]:
    db = new_database(server, objects, **chunk_env)
    ctx = db.ctx
    with cached_embeddings(ctx.settings):
        started = time.perf_counter()
        by_app_id = ingest_corpus(ctx, "quality", evalset.docs, suffix)
        ingest_s = time.perf_counter() - started
        collection = services.get_collection(ctx, "quality")
        scores = evaluate(ctx, collection.id, by_app_id, evalset.queries, evalset.qrels)
    with ctx.sessions() as session:
        chunks = int(session.scalar(select(func.count()).select_from(Chunk)) or 0)
    return {"scores": scores, "chunks": chunks, "ingest_s": ingest_s, "versions": server_version(ctx)}


def table(evalset: EvalSet, scores: dict[str, ModeScores]) -> str:
    kinds = sorted({q.type for q in evalset.queries})
    counts = {k: sum(q.type == k for q in evalset.queries) for k in kinds}
    header = ["mode", f"nDCG@{CUTOFF}", f"recall@{CUTOFF}"]
    for k in kinds:
        header += [f"nDCG@{CUTOFF} {k} ({counts[k]})", f"recall@{CUTOFF} {k}"]
    rows = []
    for mode, s in scores.items():
        row = [mode, f"{s.ndcg:.3f}", f"{s.recall:.3f}"]
        for k in kinds:
            row += [f"{s.by_type[k][0]:.3f}", f"{s.by_type[k][1]:.3f}"]
        rows.append(row)
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="project,tuning,heldout")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        for name in args.sets.split(","):
            loader, chunk_env, suffix = SETS[name]
            evalset = loader()
            result = run_set(server, Path(objects), evalset, chunk_env, suffix)
            scores: dict[str, ModeScores] = result["scores"]
            print(f"\n## {evalset.name} — {machine_facts()}, {result['versions']}")
            print(
                f"{len(evalset.docs)} documents -> {result['chunks']} chunks ({chunk_env}), "
                f"{len(evalset.queries)} queries, {sum(len(v) for v in evalset.qrels.values())} judgements; "
                f"ingested in {result['ingest_s']:.1f}s; search top_k={CHUNK_DEPTH} chunks collapsed to documents"
            )
            print(table(evalset, scores))
            best_single = max(scores["vector"].ndcg, scores["fulltext"].ndcg)
            print(f"hybrid nDCG@{CUTOFF} - max(vector, fulltext) = {scores['hybrid'].ndcg - best_single:+.3f}")
            out[name] = {
                "documents": len(evalset.docs),
                "chunks": result["chunks"],
                "queries": len(evalset.queries),
                "modes": {
                    m: {"ndcg@10": s.ndcg, "recall@10": s.recall, "by_type": s.by_type, "per_query": s.per_query}
                    for m, s in scores.items()
                },
            }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
