"""What keeping the previous release's tsvector table costs: the dual write at ingestion, the backfill
of revision 0003 at upgrade, and the reconciler's sync of what the previous release's pods write.

    .venv/bin/python -m bench.fulltext_compat [--rounds 30] [--backfill 10000,100000] [--json results.json]

Everything real: an embedded PostgreSQL with pgvector, the app's migrations, the stores' own code.

- Dual write: `PgFulltextStore.upsert` of INDEX_BATCH_SIZE (256) synthetic chunks per call (40-90 words
  drawn Zipf-like from the labelled corpus' vocabulary, as bench/app_search.py does), into two databases
  side by side, one with the write to `fulltext_chunks` and one without it (the function that does it,
  `write_legacy`, replaced by a no-op for that call); the order alternates every round, so load from
  other processes hits both alike. Per batch: median and p95 milliseconds, and the difference per chunk.
  For scale, the embedding of one such batch (all-MiniLM-L6-v2, the app's chunk size) is timed too.
- Backfill: a database at revision 0002 whose `fulltext_chunks` the previous release's store filled
  with N chunks; then `migrate.upgrade` to head (revision 0003 indexes them all in its transaction).
- Sync: after the upgrade, the previous release's store writes 2,000 chunks (queued by the trigger);
  `PgFulltextStore.sync()` indexes them. And one sync call on an empty queue (what the reconciler pays
  every RECONCILE_INTERVAL_SECONDS once the rollout is over).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aperag import migrate
from aperag.chunking import chunk_text, load_tokenizer
from aperag.config import load_settings
from aperag.embedding import get_embedder
from aperag.stores import IndexedChunk
from aperag.stores import pg_fulltext_store as fts
from aperag.stores.pg_fulltext_store import PgFulltextStore
from aperag.stores.pgvector_store import PgVectorStore
from bench.app_search import Synth
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, percentile
from tests.app.previous_release import PreviousPgFulltextStore

BATCH = 256
SYNC_CHUNKS = 2000


@contextmanager
def without_legacy_write() -> Iterator[None]:
    saved = fts.write_legacy
    fts.write_legacy = lambda conn, chunks: None
    try:
        yield
    finally:
        fts.write_legacy = saved


def chunks_for(synth: Synth, n: int, collection: str) -> list[IndexedChunk]:
    document = uuid.uuid4().hex
    return [IndexedChunk(str(uuid.uuid4()), document, collection, t) for t in synth.texts(n)]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def dual_write(server: Any, objects: Path, synth: Synth, rounds: int) -> dict[str, Any]:
    dual = PgFulltextStore(new_database(server, objects).ctx.settings.database_url)
    single = PgFulltextStore(new_database(server, objects).ctx.settings.database_url)
    # One collection per database, as a worker fills one collection: statistics rows are shared.
    collection = uuid.uuid4().hex
    samples: dict[str, list[float]] = {"dual": [], "bm25 only": []}

    def run_dual(batch: list[IndexedChunk]) -> None:
        samples["dual"].append(timed(lambda: dual.upsert(batch)))

    def run_single(batch: list[IndexedChunk]) -> None:
        with without_legacy_write():
            samples["bm25 only"].append(timed(lambda: single.upsert(batch)))

    for r in range(rounds):
        batch = chunks_for(synth, BATCH, collection)
        for run in (run_dual, run_single) if r % 2 == 0 else (run_single, run_dual):
            run(batch)
    # The embedding of one batch of the same texts, cut to the app's chunk size, for scale.
    settings = load_settings({})
    tokenizer = load_tokenizer()
    texts = [p.text for t in synth.texts(BATCH) for p in chunk_text(t, tokenizer, settings.chunk_size, 0)][:BATCH]
    embedder = get_embedder(settings)
    embedder.embed(texts[:8])  # warm
    embed_ms = [timed(lambda: embedder.embed(texts)) for _ in range(3)]
    result: dict[str, Any] = {
        key: {"median_ms": statistics.median(v), "p95_ms": percentile(v, 95), "batches": len(v)}
        for key, v in samples.items()
    }
    diffs = [d - s for d, s in zip(samples["dual"], samples["bm25 only"], strict=True)]
    result["added_per_chunk_ms"] = statistics.median(diffs) / BATCH
    result["embed_batch_ms"] = statistics.median(embed_ms)
    result["chunks_each"] = rounds * BATCH
    return result


def backfill(server: Any, objects: Path, synth: Synth, size: int) -> dict[str, Any]:
    env = new_database_at_previous(server, objects)
    url = load_settings(env).database_url
    previous = PreviousPgFulltextStore(url)
    collection = uuid.uuid4().hex  # one large collection
    t0 = time.perf_counter()
    for start in range(0, size, 1000):
        previous.upsert(chunks_for(synth, min(1000, size - start), collection))
    fill_s = time.perf_counter() - t0
    upgrade_s = timed(lambda: migrate.upgrade(url)) / 1000
    store = PgFulltextStore(url)
    for _ in range(0, SYNC_CHUNKS, 500):
        previous.upsert(chunks_for(synth, 500, collection))
    sync_s = timed(store.sync) / 1000
    idle = [timed(store.sync) for _ in range(50)]
    return {
        "chunks": size,
        "previous_release_fill_s": fill_s,
        "upgrade_s": upgrade_s,
        "sync_chunks": SYNC_CHUNKS,
        "sync_s": sync_s,
        "idle_sync_ms": statistics.median(idle),
    }


def new_database_at_previous(server: Any, objects: Path) -> dict[str, str]:
    """A database as the previous release's `migrate upgrade` left it (revision 0002, its store tables)."""
    name = "bench_" + uuid.uuid4().hex[:8]
    server.create_database(name)
    env = {**server.env(name), "OBJECT_STORE_TYPE": "local", "OBJECT_STORE_LOCAL_ROOT_DIR": str(objects)}
    settings = load_settings(env)
    migrate.upgrade(settings.database_url, "0002")
    PgVectorStore(settings.database_url, settings.embedding_dimension).ensure_schema()
    PreviousPgFulltextStore(settings.database_url).ensure_schema()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="batches of 256 chunks per store")
    parser.add_argument("--backfill", default="10000,100000", help="sizes of the previous release's table")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    synth = Synth()
    results: dict[str, Any] = {"machine": machine_facts()}
    with embedded_postgres() as server, tempfile.TemporaryDirectory() as objects:
        if args.rounds:
            results["dual_write"] = dual_write(server, Path(objects), synth, args.rounds)
        results["backfill"] = [backfill(server, Path(objects), synth, int(n)) for n in args.backfill.split(",")]
    print(results["machine"])
    if "dual_write" in results:
        w = results["dual_write"]
        print(
            markdown_table(
                ["upsert of 256 chunks", "median ms", "p95 ms"],
                [[k, f"{w[k]['median_ms']:.1f}", f"{w[k]['p95_ms']:.1f}"] for k in ("bm25 only", "dual")],
            )
        )
        print(
            f"added by the dual write: {w['added_per_chunk_ms']:.3f} ms per chunk (median of per-round "
            f"differences); embedding the same batch: {w['embed_batch_ms']:.0f} ms; {w['chunks_each']} chunks per store"
        )
    header = [
        "chunks in fulltext_chunks", "previous release fills it, s", "upgrade to 0003, s",
        f"sync of {SYNC_CHUNKS} queued, s", "sync, empty queue, ms",
    ]  # fmt: skip
    rows = [
        [str(b["chunks"]), f"{b['previous_release_fill_s']:.1f}", f"{b['upgrade_s']:.1f}", f"{b['sync_s']:.2f}",
         f"{b['idle_sync_ms']:.2f}"]
        for b in results["backfill"]
    ]  # fmt: skip
    print(markdown_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
