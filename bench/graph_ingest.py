"""Graph ingestion cost per chunk: model calls and tokens with a chat model (the scripted
OpenAI-compatible server of tests/scripted_llm.py, answering what the offline extractor finds, so the
answers have a realistic size), and wall time with the offline extractor, split into extraction,
embedding the new entities and relations, and the rest (merge in PostgreSQL, status updates).

    .venv/bin/python -m bench.graph_ingest [--json results.json]

Corpus: the project corpus (tests/data/retrieval, 72 documents) chunked as in the quality evaluation
(CHUNK_SIZE 96 tokens). Chunk vectors come from the evaluation embedding cache (ingestion itself is
bench/app_ingest.py); the graph's own entity and relation vectors are computed live with the local
MiniLM in the offline run, which is what a deployment without a chat model pays.
Tokens: the scripted server counts whitespace-separated words of the prompt (system + user messages)
and of the answer; a BPE tokenizer gives roughly 1.3-1.5x more on this text. Calls and the ratio
between batch sizes do not depend on that.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, text

from aperag.context import AppContext
from aperag.db.models import Chunk
from aperag.embedding import Embedder, get_embedder, replace_embedder
from aperag.graph.build import build_document_graph, extractor_for
from aperag.graph.model import ChunkText
from aperag.graph.offline import OfflineExtractor, extract_text
from aperag.llm import TokenMeter
from bench.common import embedded_postgres, machine_facts, markdown_table, new_database, server_version
from bench.embedding_cache import cached_embeddings
from bench.retrieval_eval import CHUNK_ENV, ingest_corpus, load_project_set
from tests.scripted_llm import Reply, Request, ScriptedLLM, Step

CHUNK = re.compile(r"### chunk (\d+)\n(.*?)(?=\n\n### chunk |\Z)", re.S)


def answer_from_text(request: Request) -> Step:
    """The scripted 'model': the offline extractor's graph of each chunk of the prompt, as JSON (as in
    tests/app/test_graph.py)."""
    chunks = {n: extract_text(body).to_json() for n, body in CHUNK.findall(request.text)}
    return Reply(json.dumps({"chunks": chunks}))


class TimedEmbedder:
    """Counts the texts the graph build embeds and the time it takes."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        self.seconds = 0.0
        self.texts = 0

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)

    def embed_queries(self, queries: list[str]) -> npt.NDArray[np.float32]:
        return self.inner.embed_queries(queries)


def chunk_texts(ctx: AppContext, document_id: str) -> list[ChunkText]:
    with ctx.sessions() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.text).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)
        )
        return [ChunkText(r[0], r[1]) for r in rows]


def count(ctx: AppContext, table: str) -> int:
    with ctx.sessions() as session:
        return int(session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def offline_run(server: Any, objects: Path, docs: dict[str, str]) -> dict[str, Any]:
    ctx = new_database(server, objects, **CHUNK_ENV).ctx
    with cached_embeddings(ctx.settings):
        by_app_id = ingest_corpus(ctx, "graph-cost", docs)
    with ctx.sessions() as session:
        chunks = int(session.scalar(select(func.count()).select_from(Chunk)) or 0)
    extractor = OfflineExtractor()
    # Extraction alone (pure Python, no I/O), then the whole build with a live embedder.
    started = time.perf_counter()
    for app_id in by_app_id:
        extractor.extract(chunk_texts(ctx, app_id))
    extract_s = time.perf_counter() - started
    timed = TimedEmbedder(get_embedder(ctx.settings))
    timed.inner.embed(["warm up"])
    replace_embedder(ctx.settings, timed)
    try:
        started = time.perf_counter()
        for app_id in by_app_id:
            assert build_document_graph(ctx, app_id, extractor=extractor) == "ready"
        build_s = time.perf_counter() - started
    finally:
        replace_embedder(ctx.settings, timed.inner)
    return {
        "chunks": chunks, "extract_s": extract_s, "build_s": build_s, "embed_s": timed.seconds,
        "embedded_texts": timed.texts, "entities": count(ctx, "graph_entities"),
        "relations": count(ctx, "graph_relations"), "versions": server_version(ctx),
    }  # fmt: skip


def model_run(server: Any, objects: Path, docs: dict[str, str], batch: int) -> dict[str, Any]:
    with ScriptedLLM(default=answer_from_text) as llm:
        ctx = new_database(server, objects, **CHUNK_ENV, **llm.env(), GRAPH_EXTRACTION_BATCH=str(batch)).ctx
        with cached_embeddings(ctx.settings):
            by_app_id = ingest_corpus(ctx, "graph-cost", docs)
            meter = TokenMeter()
            extractor = extractor_for(ctx, meter)
            started = time.perf_counter()
            for app_id in by_app_id:
                assert build_document_graph(ctx, app_id, extractor=extractor) == "ready"
            first_s = time.perf_counter() - started
            first_calls, first_usage = meter.calls(), meter.usage()
            # The same documents again (a re-index, or a task retried after a crash): the extraction
            # cache answers, no call.
            for app_id in by_app_id:
                assert build_document_graph(ctx, app_id, extractor=extractor) == "ready"
        with ctx.sessions() as session:
            chunks = int(session.scalar(select(func.count()).select_from(Chunk)) or 0)
        return {
            "batch": batch, "chunks": chunks, "calls": first_calls, "prompt": first_usage.prompt_tokens,
            "completion": first_usage.completion_tokens, "again_calls": meter.calls() - first_calls,
            "requests_seen": len(llm.requests), "build_s": first_s,
        }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    docs = load_project_set().docs
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects:
        offline = offline_run(server, Path(objects), docs)
        models = [model_run(server, Path(objects), docs, batch) for batch in (1, 4, 8)]
    n = offline["chunks"]
    print(f"# graph ingestion cost — {machine_facts()}, {offline['versions']}")
    print(f"{len(docs)} documents, {n} chunks; offline graph: {offline['entities']} entities, "
          f"{offline['relations']} relations, {offline['embedded_texts']} texts embedded")  # fmt: skip
    rest = offline["build_s"] - offline["embed_s"] - offline["extract_s"]
    print(markdown_table(
        ["offline extractor, ms per chunk", "extraction", "embedding new entities/relations", "merge + rest", "total"],
        [["", f"{offline['extract_s'] * 1000 / n:.2f}", f"{offline['embed_s'] * 1000 / n:.1f}",
          f"{rest * 1000 / n:.1f}", f"{offline['build_s'] * 1000 / n:.1f}"]],
    ))  # fmt: skip
    print(markdown_table(
        ["chat model, GRAPH_EXTRACTION_BATCH", "calls per chunk", "prompt words per chunk",
         "answer words per chunk", "calls on a second build (cache)"],
        [[str(m["batch"]), f"{m['calls'] / m['chunks']:.2f}", f"{m['prompt'] / m['chunks']:.0f}",
          f"{m['completion'] / m['chunks']:.0f}", str(m["again_calls"])] for m in models],
    ))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"offline": offline, "model": models}, indent=2))


if __name__ == "__main__":
    main()
