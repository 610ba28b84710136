"""Ingestion throughput (chunks/s) of one worker against the raw embedding throughput of the same model
on the same machine, measured side by side in one run.

    .venv/bin/python -m bench.app_ingest [--json results.json]

Everything is real: an embedded PostgreSQL 18 with pgvector, a redis-server on 127.0.0.1, and one
`aperag worker --concurrency 1` Celery process (prefork pool). Documents are uploaded first (status
pending, nothing queued), then all tasks are enqueued at t0; the worker's end time is the last
document's `status_changed_at` (written by the worker when it marks the document ready), so polling
adds nothing to the measurement. The same documents are also indexed in-process
(`index_document` called directly) to separate the pipeline's cost from Celery's.

The worker indexes the small pending documents of a collection together (INGEST_BATCH_DOCUMENTS,
default 16); the small documents are measured a second time with a worker that takes one document
per task (INGEST_BATCH_DOCUMENTS=1), in the same run, to show what the batching changes.

Raw embedding = `embedder.embed()` on exactly the chunk texts the pipeline produces (same tokenizer,
chunk size, overlap and batch sizes), in the same process as the in-process run. The documents are
split into rounds; each round runs raw, worker, raw, in-process, raw, and each ingestion run is
divided by the mean of the two raw runs around it. The median of those per-round ratios is the
headline (load from other processes on a shared machine hits both sides of each ratio alike); the
aggregate chunks/s of each path are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import func, select

from aperag import services
from aperag.chunking import chunk_text
from aperag.context import AppContext
from aperag.db.models import Document, DocumentStatus
from aperag.ingest.dispatch import CeleryDispatcher
from aperag.ingest.pipeline import index_document
from bench.common import (
    REPO,
    embedded_postgres,
    machine_facts,
    markdown_table,
    new_database,
    redis_server,
    server_version,
    wait_until,
)
from bench.retrieval_eval import load_corpus

TARGET = 0.80


@contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = Path(tempfile.mkstemp(prefix="aperag-bench-worker-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aperag.cli", "worker", "--concurrency", "1", "--loglevel", "WARNING"],
            env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.returncode not in (0, -signal.SIGTERM):
            print(log.read_text()[-3000:], file=sys.stderr)
        log.unlink(missing_ok=True)


def make_documents(docs: dict[str, str], per_document: int) -> dict[str, str]:
    """Concatenate corpus documents `per_document` at a time into longer documents."""
    items = list(docs.items())
    out: dict[str, str] = {}
    for start in range(0, len(items), per_document):
        group = items[start : start + per_document]
        out[f"bundle-{start // per_document:02d}.md"] = "\n\n".join(body for _, body in group)
    return out


def chunk_texts(ctx: AppContext, docs: dict[str, str]) -> list[str]:
    s = ctx.settings
    return [
        c.text for body in docs.values() for c in chunk_text(body, ctx.tokenizer, s.chunk_size, s.chunk_overlap_size)
    ]


def raw_embedding(ctx: AppContext, texts: list[str]) -> tuple[int, float]:
    """chunks/s of the embedder alone, fed the way the pipeline feeds it (INDEX_BATCH_SIZE per call)."""
    step = ctx.settings.index_batch_size
    started = time.perf_counter()
    for i in range(0, len(texts), step):
        ctx.embedder.embed(texts[i : i + step])
    return len(texts), time.perf_counter() - started


def upload_all(ctx: AppContext, collection: str, docs: dict[str, str]) -> list[str]:
    services.create_collection(ctx, collection)
    return [
        services.upload_document(ctx, collection, name, None, body.encode()).document.id for name, body in docs.items()
    ]


def chunk_total(ctx: AppContext, ids: list[str]) -> int:
    with ctx.sessions() as session:
        return int(session.scalar(select(func.sum(Document.chunk_count)).where(Document.id.in_(ids))) or 0)


def in_process(ctx: AppContext, ids: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    for doc_id in ids:
        if index_document(ctx, doc_id, final_attempt=True) != "ready":
            raise RuntimeError(f"document {doc_id} did not index")
    elapsed = time.perf_counter() - started
    return chunk_total(ctx, ids), elapsed


def through_worker(ctx: AppContext, redis_url: str, ids: list[str]) -> tuple[int, float]:
    dispatcher = CeleryDispatcher(redis_url)
    t0 = datetime.now(UTC)
    for doc_id in ids:
        dispatcher.enqueue(doc_id)

    def done() -> bool:
        with ctx.sessions() as session:
            rows = session.execute(select(Document.status).where(Document.id.in_(ids))).scalars().all()
        if DocumentStatus.FAILED.value in rows:
            raise RuntimeError("a document failed in the worker")
        return all(r == DocumentStatus.READY.value for r in rows)

    wait_until(done, 900, "the worker to index every document", interval=0.25)
    with ctx.sessions() as session:
        end = session.scalar(select(func.max(Document.status_changed_at)).where(Document.id.in_(ids)))
    assert end is not None
    return chunk_total(ctx, ids), (end - t0).total_seconds()


def scenario(ctx: AppContext, redis_url: str, name: str, docs: dict[str, str], rounds: int) -> dict[str, object]:
    """Interleave in `rounds` slices of the documents: raw, worker, raw, in-process, raw. Each ingestion
    run is compared with the mean of the two raw runs around it, so load from other processes on the
    machine hits both sides of a ratio alike; the median over rounds is the headline figure."""
    names = list(docs)
    slices = [{n: docs[n] for n in names[i::rounds]} for i in range(rounds)]
    totals = {"raw": [0, 0.0], "worker": [0, 0.0], "in_process": [0, 0.0]}
    worker_ratios: list[float] = []
    local_ratios: list[float] = []
    for r, part in enumerate(slices):
        texts = chunk_texts(ctx, part)
        worker_ids = upload_all(ctx, f"{name}-worker-{r}", part)
        local_ids = upload_all(ctx, f"{name}-inproc-{r}", part)
        raws = []
        for step in (
            partial(raw_embedding, ctx, texts),
            partial(through_worker, ctx, redis_url, worker_ids),
            partial(raw_embedding, ctx, texts),
            partial(in_process, ctx, local_ids),
            partial(raw_embedding, ctx, texts),
        ):
            n, secs = step()
            key = {raw_embedding: "raw", through_worker: "worker", in_process: "in_process"}[step.func]
            totals[key][0] += n
            totals[key][1] += secs
            if key == "raw":
                raws.append(n / secs)
            elif key == "worker":
                worker_rate = n / secs
            else:
                local_rate = n / secs
        worker_ratios.append(worker_rate / ((raws[0] + raws[1]) / 2))
        local_ratios.append(local_rate / ((raws[1] + raws[2]) / 2))
        print(
            f"{name} round {r}: raw {'/'.join(f'{x:.2f}' for x in raws)}, worker {worker_rate:.2f} "
            f"({worker_ratios[-1]:.0%}), in-process {local_rate:.2f} ({local_ratios[-1]:.0%}) chunks/s",
            file=sys.stderr,
        )
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    return {
        "scenario": name,
        "documents": len(docs),
        "chunks": totals["worker"][0],
        "raw": rate["raw"],
        "worker": rate["worker"],
        "in_process": rate["in_process"],
        "worker_ratio": statistics.median(worker_ratios),
        "in_process_ratio": statistics.median(local_ratios),
        "worker_ratios": worker_ratios,
        "in_process_ratios": local_ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--per-document", type=int, default=9, help="corpus docs per bundle (large documents)")
    parser.add_argument("--small", type=int, default=36, help="how many corpus docs to index one by one")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved measurement rounds per scenario")
    args = parser.parse_args()
    corpus, _, _ = load_corpus()
    small = {f"{k}.md": v for k, v in list(corpus.items())[: args.small]}
    # Upload and chunking settings are the app defaults (CHUNK_SIZE 200, overlap 20, batch sizes 32/256).
    with (
        embedded_postgres() as server,
        redis_server() as redis_port,
        tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects,
    ):
        db = new_database(server, Path(objects), REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port))
        ctx = db.ctx
        ctx.embedder.embed(["warm up the model in this process"])
        with celery_worker(db.env) as worker:
            # Warm-up document: the worker loads the model on its first task; not timed.
            warm = upload_all(ctx, "warmup", {"warm.md": "Warm-up document. " * 40})
            through_worker(ctx, ctx.settings.redis_url, warm)
            results = [
                scenario(
                    ctx, ctx.settings.redis_url, "bundles", make_documents(corpus, args.per_document), args.rounds
                ),
                scenario(ctx, ctx.settings.redis_url, "small", small, args.rounds),
            ]
            assert worker.poll() is None, "the worker died"
        one_by_one = AppContext(settings=replace(ctx.settings, ingest_batch_documents=1))
        with celery_worker({**db.env, "INGEST_BATCH_DOCUMENTS": "1"}) as worker:
            warm = upload_all(one_by_one, "warmup-unbatched", {"warm.md": "Warm-up document, again. " * 40})
            through_worker(one_by_one, ctx.settings.redis_url, warm)
            results.append(scenario(one_by_one, ctx.settings.redis_url, "small-unbatched", small, args.rounds))
            assert worker.poll() is None, "the worker died"
        versions = server_version(ctx)

    print(f"# ingestion throughput — {machine_facts()}, {versions}")
    header = [
        "documents",
        "chunks",
        "raw embed chunks/s",
        "worker chunks/s",
        "worker / raw: median (per round)",
        "in-process chunks/s",
        "in-process / raw: median (per round)",
    ]
    rows = [
        [
            f"{r['documents']} ({r['scenario']})",
            str(r["chunks"]),
            f"{r['raw']:.2f}",
            f"{r['worker']:.2f}",
            f"{r['worker_ratio']:.0%} ({', '.join(f'{x:.0%}' for x in r['worker_ratios'])})",
            f"{r['in_process']:.2f}",
            f"{r['in_process_ratio']:.0%} ({', '.join(f'{x:.0%}' for x in r['in_process_ratios'])})",
        ]
        for r in results
    ]
    print(markdown_table(header, rows))
    print(f"target: worker >= {TARGET:.0%} of raw")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
