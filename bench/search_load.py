"""Search latency under concurrent load, through the real HTTP API.

    .venv/bin/python -m bench.search_load [--clients 1,10,50] [--requests 200] [--json FILE]

Everything is real: an embedded PostgreSQL (pgvector), a redis-server, the API as a separate
`aperag serve` process (uvicorn) and, for the "while indexing" rows, one `aperag worker` Celery
process indexing documents uploaded through the API while the searches run. The collection holds the
tuning set (104 Python module docs, app-default chunking); its document vectors come from the
evaluation cache, the rest of ingestion runs for real. Queries: the tuning set's 70 queries, each
client cycling through them from a different offset, so concurrent requests carry different texts.

Per client count and mode, N closed-loop clients (each sends its next request when the previous
answers) share a fixed number of requests; latency is measured at the client (request sent to
response read). The API's own `timings_ms` (embed_query, vector_store, fulltext_store, total) is
collected as well: the gap between the client's latency and the server's `total` is time spent
waiting for a thread, a database connection or the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from aperag.db.models import Document, DocumentStatus
from bench.common import (
    REPO,
    embedded_postgres,
    free_port,
    machine_facts,
    markdown_table,
    new_database,
    percentile,
    redis_server,
    server_version,
    wait_until,
)
from bench.corpora import load_heldout, load_tuning
from bench.embedding_cache import cached_embeddings
from bench.retrieval_eval import REAL_TEXT_CHUNK_ENV, ingest_corpus


@contextmanager
def process(args: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = Path(tempfile.mkstemp(prefix=f"aperag-bench-{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aperag.cli", *args],
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
            print(f"{name} exited {proc.returncode}; log: {log}", file=sys.stderr)
        else:
            log.unlink(missing_ok=True)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    base: str, collection: str, queries: list[str], mode: str, clients: int, requests: int, api_pid: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        "client": [],
        "server_total": [],
        "embed_query": [],
        "stores": [],
        "transport_retries": [],
    }
    remaining = requests
    errors: list[str] = []

    async def client(offset: int, http: httpx.AsyncClient) -> None:
        nonlocal remaining
        i = offset
        while remaining > 0:
            remaining -= 1
            query = queries[i % len(queries)]
            i += 1
            t0 = time.perf_counter()
            url = f"{base}/api/v1/collections/{collection}/search"
            payload = {"query": query, "mode": mode, "top_k": 10}
            try:
                resp = await http.post(url, json=payload)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # A keep-alive connection the server closed as it was reused; counted, sent again.
                samples["transport_retries"].append(1.0)
                resp = await http.post(url, json=payload)
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                errors.append(f"{resp.status_code} {resp.text[:200]}")
                continue
            timings = resp.json()["timings_ms"]
            samples["client"].append(elapsed)
            samples["server_total"].append(timings["total"])
            samples["embed_query"].append(timings.get("embed_query", 0.0))
            samples["stores"].append(timings.get("vector_store", 0.0) + timings.get("fulltext_store", 0.0))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    cpu_before = process_cpu_seconds(api_pid)
    wall = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(n * 7, http) for n in range(clients)))
    wall = time.perf_counter() - wall
    samples["throughput"] = [len(samples["client"]) / wall]
    samples["api_cpu_ms_per_request"] = [(process_cpu_seconds(api_pid) - cpu_before) * 1000 / max(1, requests)]
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return samples


# The API processes compared side by side. "before": what the API did until now (each request embeds
# its query on its own thread, OpenBLAS with one thread per core); "1 BLAS thread": only the thread
# cap; "batched": the default now (queries embedded together by one thread, one BLAS thread).
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "before": {"QUERY_EMBEDDING_BATCH": "0", "EMBEDDING_THREADS": "0"},
    "1 BLAS thread": {"QUERY_EMBEDDING_BATCH": "0", "EMBEDDING_THREADS": "1"},
    "batched (default)": {"QUERY_EMBEDDING_BATCH": "64", "EMBEDDING_THREADS": "1"},
}


def api_ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, values in samples.items():
        out[f"{key}_p50"] = percentile(values, 50)
        out[f"{key}_p95"] = percentile(values, 95)
    out["n"] = len(samples["client"])
    out["transport_retries"] = len(samples["transport_retries"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--requests", type=int, default=200, help="requests per (clients, mode) cell")
    parser.add_argument("--modes", default="vector,hybrid")
    parser.add_argument("--indexing-docs", type=int, default=30, help="documents uploaded for the indexing rows")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    tuning = load_tuning()
    queries = [q.text for q in tuning.queries]
    results: list[dict[str, Any]] = []
    with (
        embedded_postgres() as server,
        redis_server() as redis_port,
        tempfile.TemporaryDirectory(prefix="aperag-bench-") as objects,
    ):
        db = new_database(server, Path(objects), **REAL_TEXT_CHUNK_ENV)
        with cached_embeddings(db.ctx.settings):
            ingest_corpus(db.ctx, "load", tuning.docs, ".txt")
        common = {**db.env, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port)}
        with contextlib.ExitStack() as stack:
            bases: dict[str, tuple[str, int]] = {}
            for name, extra in CONFIGURATIONS.items():
                port = free_port()
                api = stack.enter_context(
                    process(["serve", "--host", "127.0.0.1", "--port", str(port)], {**common, **extra}, "api")
                )
                bases[name] = (f"http://127.0.0.1:{port}", api.pid)
            for base, pid in bases.values():
                wait_until(partial(api_ready, base), 120, "the API")
                # Warm up: model loaded, connections opened (not recorded).
                asyncio.run(run_load(base, "load", queries, "hybrid", 4, 20, pid))

            def cell(clients: int, mode: str, indexing: bool) -> None:
                # The configurations run back to back for each cell, so they see the same machine.
                for name, (base, pid) in bases.items():
                    s = asyncio.run(run_load(base, "load", queries, mode, clients, args.requests, pid))
                    results.append(
                        {"config": name, "clients": clients, "mode": mode, "indexing": indexing, **summarise(s)}
                    )
                    print(f"{results[-1]}", flush=True)

            for clients in client_counts:
                for mode in modes:
                    cell(clients, mode, False)
            # Searching while indexing: a real worker indexes documents uploaded through the API.
            heldout = load_heldout()
            names = list(heldout.docs)[: args.indexing_docs]
            with process(["worker", "--concurrency", "1", "--loglevel", "WARNING"], common, "worker"):
                base = next(iter(bases.values()))[0]
                with httpx.Client(timeout=60) as http:
                    for name in names:
                        resp = http.post(
                            f"{base}/api/v1/collections/load/documents",
                            files={"file": (f"{name}.txt", heldout.docs[name].encode(), "text/plain")},
                        )
                        resp.raise_for_status()
                for mode in modes:
                    cell(max(client_counts), mode, True)
                with db.ctx.sessions() as session:
                    pending = session.scalar(
                        select(func.count()).select_from(Document).where(Document.status != DocumentStatus.READY.value)
                    )
                print(f"documents still being indexed when the indexing rows ended: {pending} of {len(names)}")
        versions = server_version(db.ctx)
    print(f"# search under load {args.label} — {machine_facts()}, {versions}")
    header = [
        "API",
        "clients",
        "mode",
        "indexing",
        "p50 ms",
        "p95 ms",
        "req/s",
        "API CPU ms/req",
        "server total p50 / p95",
        "embed p50 / p95",
        "n",
    ]
    rows = [
        [
            r["config"],
            str(r["clients"]),
            r["mode"],
            "yes" if r["indexing"] else "no",
            f"{r['client_p50']:.0f}",
            f"{r['client_p95']:.0f}",
            f"{r['throughput_p50']:.0f}",
            f"{r['api_cpu_ms_per_request_p50']:.1f}",
            f"{r['server_total_p50']:.0f} / {r['server_total_p95']:.0f}",
            f"{r['embed_query_p50']:.0f} / {r['embed_query_p95']:.0f}",
            str(int(r["n"])),
        ]
        for r in results
    ]
    print(markdown_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
