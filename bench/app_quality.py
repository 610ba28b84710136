"""Retrieval quality: nDCG@10 and recall@10 of vector, full-text and hybrid search on the labelled
corpus in tests/data/retrieval, ingested through the app's real code path (upload -> parse -> chunk ->
embed with the local all-MiniLM-L6-v2 -> pgvector + PostgreSQL full-text) on an embedded PostgreSQL.

    .venv/bin/python -m bench.app_quality [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, server_version
from bench.retrieval_eval import CHUNK_DEPTH, CHUNK_ENV, CUTOFF, evaluate, ingest_corpus, load_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()

    docs, queries, qrels = load_corpus()
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        db = new_database(server, Path(objects), **CHUNK_ENV)
        ctx = db.ctx
        started = time.perf_counter()
        by_app_id = ingest_corpus(ctx, "quality", docs)
        ingest_s = time.perf_counter() - started
        from aperag import services
        from aperag.db.models import Chunk

        collection = services.get_collection(ctx, "quality")
        with ctx.sessions() as session:
            chunks = int(session.scalar(select(func.count()).select_from(Chunk)) or 0)
        scores = evaluate(ctx, collection.id, by_app_id, queries, qrels)
        versions = server_version(ctx)

    kinds = sorted({q.type for q in queries})
    counts = {k: sum(q.type == k for q in queries) for k in kinds}
    header = ["mode", f"nDCG@{CUTOFF}", f"recall@{CUTOFF}"]
    for k in kinds:
        header += [f"nDCG@{CUTOFF} {k} ({counts[k]})", f"recall@{CUTOFF} {k}"]
    rows = []
    for mode, s in scores.items():
        row = [mode, f"{s.ndcg:.3f}", f"{s.recall:.3f}"]
        for k in kinds:
            row += [f"{s.by_type[k][0]:.3f}", f"{s.by_type[k][1]:.3f}"]
        rows.append(row)
    print(f"# retrieval quality — {machine_facts()}, {versions}")
    print(
        f"corpus: {len(docs)} documents -> {chunks} chunks ({CHUNK_ENV}), {len(queries)} queries, "
        f"{sum(len(v) for v in qrels.values())} judgements; ingested in {ingest_s:.1f}s; "
        f"search top_k={CHUNK_DEPTH} chunks collapsed to documents"
    )
    print(markdown_table(header, rows))
    best_single = max(scores["vector"].ndcg, scores["fulltext"].ndcg)
    print(f"hybrid nDCG@{CUTOFF} - max(vector, fulltext) = {scores['hybrid'].ndcg - best_single:+.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "documents": len(docs),
                    "chunks": chunks,
                    "queries": len(queries),
                    "modes": {
                        m: {"ndcg@10": s.ndcg, "recall@10": s.recall, "by_type": s.by_type, "per_query": s.per_query}
                        for m, s in scores.items()
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
