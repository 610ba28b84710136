"""Graph-mode search latency p50/p95 at 10k chunks (and more with --sizes), next to hybrid without
and with include_graph, measured side by side in one run on one embedded PostgreSQL.

    .venv/bin/python -m bench.graph_search [--sizes 10000] [--reps 3] [--json results.json]

Chunks and their vectors are bench/app_search.py's synthetic ones (Zipf-like text from the labelled
corpus's vocabulary, clustered 384-d vectors). The graph is synthetic too, written through the app's
own merge (aperag.graph.store.write_document, one document of 100 chunks per transaction):
each chunk names 3-8 entities drawn Zipf-like from a vocabulary of 0.6 entities per chunk (the
offline extractor found 0.5-2 distinct entities per chunk on the evaluation sets), the first four
pairwise related (same-sentence co-occurrence gives about that many), entity and relation vectors
from the same distribution as the chunks'. The vocabulary starts with the names the offline extractor
finds in the labelled corpus, so the 64 corpus queries' words match entities by name as they would
on real data; the rest are identifiers made of corpus words.
Timed per query (ms, perf_counter), the query vector passed in (embedding is timed in app_search):
- graph store: aperag.graph.retrieval.graph_search alone;
- search() graph / hybrid / hybrid+graph: the app's search() (stores, fusion, ready-documents join).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

from aperag import services
from aperag.context import AppContext
from aperag.db.models import chunk_id, new_id
from aperag.db.session import get_engine
from aperag.graph import store
from aperag.graph.model import ChunkGraph, ChunkOutcome, Entity, Relation, normalise_name
from aperag.graph.offline import extract_text
from aperag.graph.retrieval import graph_search
from aperag.search import search
from bench.app_search import CHUNKS_PER_DOC, DEPTH, DIM, TOP_K, Synth, load
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, percentile, server_version
from bench.retrieval_eval import load_corpus

ENTITIES_PER_CHUNK_VOCABULARY = 0.6
RELATED_PER_CHUNK = 4


def vocabulary(synth: Synth, size: int) -> list[str]:
    docs, _, _ = load_corpus()
    names: dict[str, str] = {}
    for body in docs.values():
        for entity in extract_text(body).entities:
            names.setdefault(entity.key, entity.name)
    out = list(names.values())
    words = synth.words[:400]
    n = 0
    while len(out) < size:
        out.append(f"{words[n % len(words)]}_{words[(n * 7 + 3) % len(words)]}_{n}")
        n += 1
    return out[:size]


def load_graph(ctx: AppContext, collection_id: str, synth: Synth, start: int, stop: int, names: list[str]) -> float:
    """The graph of chunks [start, stop), one document (100 chunks) per write; returns seconds."""
    weights = [1.0 / (rank + 1) for rank in range(len(names))]
    with ctx.sessions() as session:
        known = {r[0] for r in session.execute(text("SELECT name_key FROM graph_entities"))}
    started = time.perf_counter()
    for lo in range(start, stop, CHUNKS_PER_DOC):
        doc_no = lo // CHUNKS_PER_DOC
        doc_id = f"{doc_no:032x}"
        outcomes = []
        for ordinal in range(CHUNKS_PER_DOC):
            picked = list(dict.fromkeys(synth.py.choices(names, weights, k=synth.py.randint(3, 8))))
            sentence = " ".join(synth.py.choices(synth.words[:2000], k=25)) + "."
            entities = tuple(Entity(n, "identifier", f"{n}: {sentence}") for n in picked)
            related = picked[:RELATED_PER_CHUNK]
            relations = tuple(
                Relation(a, b, sentence, tuple(sentence.split()[:3]), 1.0)
                for i, a in enumerate(related)
                for b in related[i + 1 :]
            )
            outcomes.append(ChunkOutcome(chunk_id(doc_id, ordinal), ChunkGraph(entities, relations)))
        keys = store.entity_keys(outcomes)
        new = sorted(k for k in keys if k not in known)
        entity_vectors = dict(zip(new, (store.vector_literal(v) for v in synth.vectors(len(new))), strict=True))
        known.update(new)
        pairs = sorted(
            {
                tuple(sorted((normalise_name(r.source), normalise_name(r.target))))
                for o in outcomes
                if o.graph is not None
                for r in o.graph.relations
            }
        )
        relation_vectors: dict[tuple[str, str], str] = {}
        for pair, vector in zip(pairs, synth.vectors(len(pairs)), strict=True):
            literal = store.vector_literal(vector)
            relation_vectors[(pair[0], pair[1])] = relation_vectors[(pair[1], pair[0])] = literal
        write = store.DocumentGraphWrite(collection_id, doc_id, outcomes, entity_vectors, relation_vectors)
        with ctx.sessions.begin() as session:
            store.write_document(session, write)
    from aperag.db.session import get_engine

    with get_engine(ctx.settings.database_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("graph_entities", "graph_relations", "graph_entity_mentions", "graph_relation_mentions"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    return time.perf_counter() - started


def measure(ctx: AppContext, collection_id: str, queries: list[str], qvecs: np.ndarray, reps: int
            ) -> dict[str, list[float]]:  # fmt: skip
    keys = ("graph store", "search() graph", "search() hybrid", "search() hybrid+graph")
    samples: dict[str, list[float]] = {k: [] for k in keys}

    def graph_alone(q: str, v: np.ndarray) -> None:
        with ctx.sessions() as session:
            graph_search(session, collection_id, q, v, DEPTH)

    for q, v in zip(queries, qvecs, strict=True):  # warm caches and connections; not recorded
        graph_alone(q, v)
        search(ctx, collection_id, q, "hybrid", TOP_K, v, include_graph=True)

    def one(key: str, q: str, v: np.ndarray) -> None:
        t0 = time.perf_counter()
        if key == "graph store":
            graph_alone(q, v)
        elif key == "search() graph":
            search(ctx, collection_id, q, "graph", TOP_K, v)
        else:
            search(ctx, collection_id, q, "hybrid", TOP_K, v, include_graph=key.endswith("+graph"))
        samples[key].append((time.perf_counter() - t0) * 1000)

    for _ in range(reps):
        for q, v in zip(queries, qvecs, strict=True):
            for key in keys:
                one(key, q, v)
    return samples


def step_times(ctx: AppContext, collection_id: str, queries: list[str], qvecs: np.ndarray) -> dict[str, float]:
    """Median execution time (ms, PostgreSQL's own EXPLAIN ANALYZE) of each query graph_search runs,
    over the queries: where a graph search spends its time."""
    from aperag.graph.retrieval import MAX_ENTITIES, MAX_RELATIONS, query_ngrams

    steps: dict[str, list[float]] = {}

    def run(session: object, name: str, sql: str, params: dict[str, object]) -> None:
        rows = session.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql), params).scalar_one()  # type: ignore[attr-defined]
        steps.setdefault(name, []).append(float(rows[0]["Execution Time"]))

    with ctx.sessions() as session:
        for q, v in zip(queries, qvecs, strict=True):
            literal = store.vector_literal(v)
            run(session, "entities by name",
                "SELECT id FROM graph_entities WHERE collection_id = :c AND name_key = ANY(:k)",
                {"c": collection_id, "k": query_ngrams(q)})  # fmt: skip
            d = len(v)
            session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))  # type: ignore[attr-defined]
            for table, n in (("graph_entities", MAX_ENTITIES), ("graph_relations", MAX_RELATIONS)):
                run(session, f"{table} by embedding",
                    f"SELECT id, 1 - ((embedding::vector({d})) <=> CAST(:q AS vector({d}))) FROM {table}"
                    f" WHERE collection_id = :c AND vector_dims(embedding) = {d}"
                    f" ORDER BY (embedding::vector({d})) <=> CAST(:q AS vector({d})) LIMIT :n",
                    {"c": collection_id, "q": literal, "n": n})  # fmt: skip
            match = graph_search(session, collection_id, q, v, DEPTH)
            entities, relations = list(match.entities), list(match.relations)
            run(session, "neighbour relations", "SELECT id, source_id, target_id FROM graph_relations"
                " WHERE source_id = ANY(:e) OR target_id = ANY(:e) ORDER BY weight DESC, id LIMIT :n",
                {"e": entities, "n": MAX_RELATIONS * 4})  # fmt: skip
            run(session, "entity mentions",
                "SELECT entity_id, chunk_id FROM graph_entity_mentions WHERE entity_id = ANY(:e)",
                {"e": entities})  # fmt: skip
            run(session, "relation mentions", "SELECT relation_id, chunk_id FROM graph_relation_mentions"
                " WHERE relation_id = ANY(:r)", {"r": relations})  # fmt: skip
    return {k: percentile(v, 50) for k, v in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="collection sizes in chunks, ascending")
    parser.add_argument("--reps", type=int, default=3, help="passes over the 64 queries per size")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    _, corpus_queries, _ = load_corpus()
    queries = [q.text for q in corpus_queries]
    synth = Synth()
    qvecs = synth.vectors(len(queries))
    results: dict[str, dict[str, dict[str, float]]] = {}
    notes: list[str] = []
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        ctx = new_database(server, Path(objects)).ctx
        collection = services.create_collection(ctx, "bench-" + new_id()[:6])
        names = vocabulary(synth, int(sizes[-1] * ENTITIES_PER_CHUNK_VOCABULARY))
        loaded = 0
        for size in sizes:
            chunk_s = load(ctx, collection.id, synth, loaded, size)
            graph_s = load_graph(ctx, collection.id, synth, loaded, size, names[: int(size * 0.6)])
            with ctx.sessions() as session:
                tables = ("graph_entities", "graph_relations", "graph_entity_mentions", "graph_relation_mentions")
                counts = {t: session.scalar(text(f"SELECT count(*) FROM {t}")) for t in tables}
            notes.append(
                f"chunks {loaded}..{size}: loaded in {chunk_s:.0f}s; graph written in {graph_s:.0f}s "
                f"({graph_s * 1000 / (size - loaded):.1f} ms per chunk through store.write_document); {counts}"
            )
            loaded = size
            results[str(size)] = {}
            # Side by side: without the graph's HNSW indexes (every vector compared), then with them.
            for label in ("exact scan", "HNSW"):
                with ctx.sessions.begin() as session:
                    if label == "exact scan":
                        for table in ("graph_entities", "graph_relations"):
                            session.execute(text(f"DROP INDEX IF EXISTS ix_{table}_hnsw_{DIM}"))
                if label == "HNSW":
                    started = time.perf_counter()
                    store.ensure_indexes(get_engine(ctx.settings.database_url), DIM)
                    notes.append(f"{size}: graph HNSW indexes built in {time.perf_counter() - started:.0f}s")
                samples = measure(ctx, collection.id, queries, qvecs, args.reps)
                results[str(size)].update({
                    f"{k} ({label})": {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)}
                    for k, v in samples.items()
                })  # fmt: skip
                steps = step_times(ctx, collection.id, queries, qvecs)
                notes.append(f"{size}, {label}: median execution time per graph_search query (ms): "
                             + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))  # fmt: skip
            print(f"size {size} done", flush=True)
        versions = server_version(ctx)
    print(f"# graph search latency — {machine_facts()}, {versions}")
    for n in notes:
        print(n)
    header = ["what (ms)"] + [f"{s:,} p50 / p95" for s in sizes]
    rows = [
        [key] + [f"{results[str(s)][key]['p50']:.1f} / {results[str(s)][key]['p95']:.1f}" for s in sizes]
        for key in results[str(sizes[0])]
    ]
    print(markdown_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "notes": notes}, indent=2))


if __name__ == "__main__":
    main()
