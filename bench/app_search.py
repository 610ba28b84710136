"""Search latency p50/p95 at 10k and 100k chunks for vector, full-text and hybrid on PostgreSQL
(pgvector HNSW + BM25 tables), with the query embedding time reported separately. Latency under
concurrent load, through the HTTP API, is bench/search_load.py.

    .venv/bin/python -m bench.app_search [--sizes 10000,100000] [--json results.json]

Synthetic data (embedding 100k real chunks would take hours on 2 CPUs): the chunk rows go straight
through the stores' batch upserts (PgVectorStore.upsert, PgFulltextStore.upsert: BM25 analysis,
postings and term statistics) plus the `chunks` metadata rows, under ready documents of 100 chunks
each, in one collection. Vectors: 384-d, drawn around 1,000 random centres (clustered like real
embeddings, not uniform noise) and L2-normalised.
Text: 40-90 words per chunk sampled Zipf-like from the vocabulary of the labelled corpus
(tests/data/retrieval), so the real queries' words occur with realistic skew. Queries: the 64 corpus
queries; their text feeds full-text search, their real MiniLM embedding is timed separately, and the
vector stores are queried with vectors from the same synthetic distribution as the rows.

Per query and mode, timed separately (milliseconds, perf_counter):
- store query: `vector_store.search` / `fulltext_store.search` alone (depth 30, as search() asks);
- search(): the app's search function with the query vector passed in (stores + fusion + the
  metadata join that keeps only ready documents), i.e. everything except embedding the query;
- embed: the query embedding (all-MiniLM-L6-v2, numpy) on its own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import insert, text

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus, chunk_id, new_id, utcnow
from aperag.search import search
from aperag.stores import IndexedChunk
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, percentile, server_version
from bench.retrieval_eval import load_corpus

DIM = 384
CHUNKS_PER_DOC = 100
CENTRES = 1000
DEPTH = 30  # what search() asks each store for with top_k=10
TOP_K = 10
LOAD_BATCH = 1000


class Synth:
    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.py = random.Random(seed)
        centres = self.rng.standard_normal((CENTRES, DIM)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        docs, _, _ = load_corpus()
        counts = Counter(w for body in docs.values() for w in re.findall(r"[a-z][a-z0-9_-]+", body.lower()))
        self.words = [w for w, _ in counts.most_common()]
        # Zipf-like weights over the corpus vocabulary, most frequent first.
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]

    def vectors(self, n: int) -> npt.NDArray[np.float32]:
        picks = self.rng.integers(0, CENTRES, n)
        v = self.centres[picks] + 0.6 * self.rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def texts(self, n: int) -> list[str]:
        return [" ".join(self.py.choices(self.words, self.weights, k=self.py.randint(40, 90))) + "." for _ in range(n)]


def load(ctx: AppContext, collection_id: str, synth: Synth, start: int, stop: int) -> float:
    """Add chunks [start, stop) to the collection; returns seconds spent."""
    started = time.perf_counter()
    bulk = stop - start > 20000
    if bulk:
        # Bulk load: drop the HNSW index and let the store's own DDL (ensure_schema) rebuild it after,
        # as one would for any large initial load; small loads insert into the live index.
        with ctx.sessions.begin() as session:
            session.execute(text("DROP INDEX IF EXISTS ix_vector_chunks_hnsw"))
    for lo in range(start, stop, LOAD_BATCH):
        hi = min(stop, lo + LOAD_BATCH)
        texts = synth.texts(hi - lo)
        vecs = synth.vectors(hi - lo)
        docs: dict[int, str] = {}
        indexed: list[IndexedChunk] = []
        rows: list[dict[str, object]] = []
        for n, body in zip(range(lo, hi), texts, strict=True):
            doc_no, ordinal = divmod(n, CHUNKS_PER_DOC)
            doc_id = docs.setdefault(doc_no, f"{doc_no:032x}")
            cid = chunk_id(doc_id, ordinal)
            indexed.append(IndexedChunk(cid, doc_id, collection_id, body))
            rows.append(
                {
                    "id": cid,
                    "document_id": doc_id,
                    "collection_id": collection_id,
                    "ordinal": ordinal,
                    "text": body,
                    "token_count": len(body.split()),
                    "start_char": 0,
                    "end_char": len(body),
                }
            )
        with ctx.sessions.begin() as session:
            for doc_no, doc_id in docs.items():
                if session.get(Document, doc_id) is None:
                    session.add(
                        Document(
                            id=doc_id,
                            collection_id=collection_id,
                            filename=f"synthetic-{doc_no}.txt",
                            content_type="text/plain",
                            content_hash=doc_id,
                            size_bytes=0,
                            object_key=f"synthetic/{doc_id}",
                            status=DocumentStatus.READY.value,
                            attempts=1,
                            chunk_count=CHUNKS_PER_DOC,
                            status_changed_at=utcnow(),
                            created_at=utcnow(),
                            updated_at=utcnow(),
                        )
                    )
            session.flush()
            session.execute(insert(Chunk), rows)
        ctx.vector_store.upsert(indexed, vecs)
        ctx.fulltext_store.upsert(indexed)
    if bulk:
        with ctx.sessions.begin() as session:
            db = session.execute(text("SELECT current_database()")).scalar_one()
            session.execute(text(f"ALTER DATABASE \"{db}\" SET maintenance_work_mem = '1GB'"))
        from aperag.db.session import dispose_all

        dispose_all()  # new connections pick up the setting
        ctx.vector_store.ensure_schema()
    # What autovacuum does soon after a load anyway: statistics, and the visibility map the BM25
    # posting scans (index-only) rely on.
    from aperag.db.session import get_engine

    with get_engine(ctx.settings.database_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("chunks", "documents", "vector_chunks", "fts_chunks", "fts_terms", "fts_postings"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    return time.perf_counter() - started


def vector_plan(ctx: AppContext, collection_id: str, vec: npt.NDArray[np.float32]) -> str:
    from aperag.stores.pgvector_store import vector_literal

    with ctx.sessions() as session:
        rows = session.execute(
            text(
                "EXPLAIN SELECT chunk_id, embedding <=> CAST(:q AS vector) AS distance FROM vector_chunks "
                "WHERE collection_id = :c ORDER BY distance LIMIT :k"
            ),
            {"q": vector_literal(vec), "c": collection_id, "k": DEPTH},
        ).all()
    plan = " / ".join(r[0].strip() for r in rows[:3])
    return re.sub(r"'\[[^']*\]'", "'[...]'", plan)


def measure(
    ctx: AppContext, collection_id: str, queries: list[str], qvecs: npt.NDArray[np.float32], reps: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        k: [] for k in ("vector store", "fulltext store", "search() vector", "search() fulltext", "search() hybrid")
    }

    def timed(key: str, fn: object) -> None:
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples[key].append((time.perf_counter() - t0) * 1000)

    # Warm the caches and connections once; not recorded.
    for q, v in zip(queries, qvecs, strict=True):
        ctx.vector_store.search(collection_id, v, DEPTH)
        ctx.fulltext_store.search(collection_id, q, DEPTH)
    for _ in range(reps):
        for q, v in zip(queries, qvecs, strict=True):
            timed("vector store", lambda v=v: ctx.vector_store.search(collection_id, v, DEPTH))
            timed("fulltext store", lambda q=q: ctx.fulltext_store.search(collection_id, q, DEPTH))
            timed("search() vector", lambda q=q, v=v: search(ctx, collection_id, q, "vector", TOP_K, v))
            timed("search() fulltext", lambda q=q: search(ctx, collection_id, q, "fulltext", TOP_K))
            timed("search() hybrid", lambda q=q, v=v: search(ctx, collection_id, q, "hybrid", TOP_K, v))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="collection sizes in chunks, ascending")
    parser.add_argument("--reps", type=int, default=3, help="passes over the 64 queries per size")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    _, corpus_queries, _ = load_corpus()
    queries = [q.text for q in corpus_queries]
    synth = Synth()
    qvecs = synth.vectors(len(queries))
    results: dict[str, dict[str, dict[str, float]]] = {}
    notes: list[str] = []
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        db = new_database(server, Path(objects))
        ctx = db.ctx
        ctx.embedder.embed(["warm up"])
        embed_ms: list[float] = []
        for _ in range(args.reps):
            for q in queries:
                t0 = time.perf_counter()
                ctx.embedder.embed([q])
                embed_ms.append((time.perf_counter() - t0) * 1000)
        collection = services.create_collection(ctx, "bench-" + new_id()[:6])
        loaded = 0
        for size in sizes:
            secs = load(ctx, collection.id, synth, loaded, size)
            notes.append(f"loaded chunks {loaded}..{size} in {secs:.0f}s ({(size - loaded) / secs:.0f} chunks/s)")
            loaded = size
            notes.append(f"{size}: vector plan: {vector_plan(ctx, collection.id, qvecs[0])}")
            samples = measure(ctx, collection.id, queries, qvecs, args.reps)
            results[str(size)] = {
                k: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)} for k, v in samples.items()
            }
            print(f"size {size} done", flush=True)
        versions = server_version(ctx)
    results["embed"] = {"query embedding": {"p50": percentile(embed_ms, 50), "p95": percentile(embed_ms, 95)}}

    print(f"# search latency — {machine_facts()}, {versions}")
    for n in notes:
        print(n)
    header = ["what (ms)"] + [f"{s:,} p50 / p95" for s in sizes]
    rows = []
    for key in results[str(sizes[0])]:
        rows.append([key] + [f"{results[str(s)][key]['p50']:.1f} / {results[str(s)][key]['p95']:.1f}" for s in sizes])
    e = results["embed"]["query embedding"]
    rows.append(["query embedding (MiniLM, separate)"] + [f"{e['p50']:.1f} / {e['p95']:.1f}"] * len(sizes))
    print(markdown_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "notes": notes}, indent=2))


if __name__ == "__main__":
    main()
