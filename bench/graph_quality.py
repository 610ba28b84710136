"""Retrieval quality with the knowledge graph: nDCG@10 and recall@10 of `graph` and of hybrid with
`include_graph` next to vector, full-text and hybrid, on the evaluation sets of bench/app_quality.py,
through the app's code path (upload -> chunk -> embed -> stores, then aperag.graph.build with the
offline extractor: no chat model here) on an embedded PostgreSQL.

    .venv/bin/python -m bench.graph_quality [--sets project,tuning,heldout] [--json results.json]

Document, entity and relation vectors come from the evaluation embedding cache after a first run (the
first run embeds ~15k entity and relation texts: tens of minutes on 2 shared cores); queries are
embedded live. Also sweeps the graph's weight in the hybrid fusion (search.GRAPH_WEIGHT) on the same
rankings, to say whether include_graph should be on by default.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from aperag import search as search_module
from aperag import services
from aperag.context import AppContext
from aperag.db.models import Chunk
from aperag.graph.build import build_document_graph
from aperag.graph.offline import OfflineExtractor
from bench.app_quality import SETS
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, server_version
from bench.corpora import EvalSet, Query
from bench.embedding_cache import cached_embeddings
from bench.retrieval_eval import CHUNK_DEPTH, CUTOFF, ModeScores, collapse, ingest_corpus, score_rankings

WEIGHTS = (0.1, 0.2, 0.3, 0.5)


def rankings(ctx: AppContext, collection_id: str, queries: list[Query], by_app_id: dict[str, str], mode: str,
             include_graph: bool = False) -> dict[str, list[str]]:  # fmt: skip
    out = {}
    for q in queries:
        hits = search_module.search(ctx, collection_id, q.text, mode, CHUNK_DEPTH, include_graph=include_graph).results
        out[q.id] = collapse([by_app_id[h.document_id] for h in hits])
    return out


def run_set(server: Any, objects: Path, evalset: EvalSet, chunk_env: dict[str, str], suffix: str) -> dict[str, Any]:
    ctx = new_database(server, objects, **chunk_env).ctx
    extractor = OfflineExtractor()
    with cached_embeddings(ctx.settings):
        by_app_id = ingest_corpus(ctx, "quality", evalset.docs, suffix)
        started = time.perf_counter()
        for app_id in by_app_id:
            status = build_document_graph(ctx, app_id, extractor=extractor)
            if status != "ready":
                raise RuntimeError(f"{by_app_id[app_id]}: graph ended {status}")
        graph_s = time.perf_counter() - started
        collection = services.get_collection(ctx, "quality").id
        scores: dict[str, ModeScores] = {}
        for mode in ("vector", "fulltext", "hybrid", "graph"):
            scores[mode] = score_rankings(
                rankings(ctx, collection, evalset.queries, by_app_id, mode), evalset.queries, evalset.qrels
            )
        default_weight = search_module.GRAPH_WEIGHT
        try:
            for weight in WEIGHTS:
                search_module.GRAPH_WEIGHT = weight
                scores[f"hybrid+graph w={weight}"] = score_rankings(
                    rankings(ctx, collection, evalset.queries, by_app_id, "hybrid", include_graph=True),
                    evalset.queries,
                    evalset.qrels,
                )
        finally:
            search_module.GRAPH_WEIGHT = default_weight
    with ctx.sessions() as session:
        chunks = int(session.scalar(select(func.count()).select_from(Chunk)) or 0)
        entities = int(session.scalar(text("SELECT count(*) FROM graph_entities")) or 0)
        relations = int(session.scalar(text("SELECT count(*) FROM graph_relations")) or 0)
    return {"scores": scores, "chunks": chunks, "entities": entities, "relations": relations, "graph_s": graph_s,
            "versions": server_version(ctx)}  # fmt: skip


def table(evalset: EvalSet, scores: dict[str, ModeScores]) -> str:
    kinds = sorted({q.type for q in evalset.queries})
    header = ["mode", f"nDCG@{CUTOFF}", f"recall@{CUTOFF}"] + [f"nDCG@{CUTOFF} {k}" for k in kinds]
    rows = [[m, f"{s.ndcg:.3f}", f"{s.recall:.3f}"] + [f"{s.by_type[k][0]:.3f}" for k in kinds]
            for m, s in scores.items()]  # fmt: skip
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="project,tuning,heldout")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        for name in args.sets.split(","):
            loader, chunk_env, suffix = SETS[name]
            evalset = loader()
            r = run_set(server, Path(objects), evalset, chunk_env, suffix)
            print(f"\n## {evalset.name} — {machine_facts()}, {r['versions']}")
            print(
                f"{len(evalset.docs)} documents -> {r['chunks']} chunks, {r['entities']} entities, "
                f"{r['relations']} relations (offline extractor, graph built in {r['graph_s']:.1f}s); "
                f"{len(evalset.queries)} queries; top_k={CHUNK_DEPTH} chunks collapsed to documents"
            )
            print(table(evalset, r["scores"]), flush=True)
            out[name] = {m: {"ndcg@10": s.ndcg, "recall@10": s.recall, "by_type": s.by_type, "per_query": s.per_query}
                         for m, s in r["scores"].items()}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
