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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text

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
            # APERAG_SOURCE: run the app from another checkout (e.g. `git archive <commit> aperag`), to
            # compare code versions side by side; python -m imports from the working directory first.
            cwd=env.get("APERAG_SOURCE", REPO),
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


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: a few lines of asyncio, so that 50 clients
    cost the load generator little CPU (`--client httpx` compares it with httpx's client; see
    docs/benchmarks.md, "Search under load", for why it matters on busy shared cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.reader = self.writer = None


class HttpxConnection:
    """The same through one shared httpx.AsyncClient (the load generator until issue 12's second round)."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http, self.base = http, base

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        try:
            resp = await self.http.post(self.base + path, json=payload)
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise ConnectionResetError(str(exc)) from exc
        return resp.status_code, resp.content

    async def close(self) -> None:
        pass


async def run_load(
    apis: list[tuple[str, int]],
    collection: str,
    queries: list[str],
    mode: str,
    clients: int,
    requests: int,
    client_kind: str = "raw",
) -> dict[str, list[float]]:
    """`apis`: (base URL, pid) of each API process of the configuration; client n talks to process
    n mod their number (as a load balancer spreading connections would)."""
    samples: dict[str, list[float]] = {
        "client": [],
        "server_total": [],
        "embed_query": [],
        "stores": [],
        "transport_retries": [],
    }
    remaining = requests
    errors: list[str] = []
    path = f"/api/v1/collections/{collection}/search"

    async def client(offset: int, http: httpx.AsyncClient | None) -> None:
        nonlocal remaining
        base = apis[offset % len(apis)][0]
        host, port = base.removeprefix("http://").rsplit(":", 1)
        conn = Connection(host, int(port)) if http is None else HttpxConnection(http, base)
        i = offset * 7
        try:
            while remaining > 0:
                remaining -= 1
                payload = {"query": queries[i % len(queries)], "mode": mode, "top_k": 10}
                i += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.post(path, payload)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # A keep-alive connection the server closed as it was reused; counted, sent again.
                    samples["transport_retries"].append(1.0)
                    await conn.close()
                    status, body = await conn.post(path, payload)
                t1 = time.perf_counter()
                if status != 200:
                    errors.append(f"{status} {body[:200]!r}")
                    continue
                record(samples, json.loads(body)["timings_ms"], t0, t1)
        finally:
            await conn.close()

    cpu_before = sum(process_cpu_seconds(pid) for _, pid in apis)
    client_cpu = time.process_time()
    wall = time.perf_counter()
    if client_kind == "httpx":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            await asyncio.gather(*(client(n, http) for n in range(clients)))
    else:
        await asyncio.gather(*(client(n, None) for n in range(clients)))
    wall = time.perf_counter() - wall
    samples["throughput"] = [len(samples["client"]) / wall]
    cpu = sum(process_cpu_seconds(pid) for _, pid in apis) - cpu_before
    samples["api_cpu_ms_per_request"] = [cpu * 1000 / max(1, requests)]
    samples["client_cpu_ms_per_request"] = [(time.process_time() - client_cpu) * 1000 / max(1, requests)]
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return samples


def record(samples: dict[str, list[float]], timings: dict[str, float], t0: float, t1: float) -> None:
    samples["client"].append((t1 - t0) * 1000)
    samples["server_total"].append(timings["total"])
    samples["embed_query"].append(timings.get("embed_query", 0.0))
    samples["stores"].append(timings.get("vector_store", 0.0) + timings.get("fulltext_store", 0.0))
    # Every other part the API times (waiting for a thread, each store, the ready-documents filter).
    for key, value in timings.items():
        if key not in ("total", "embed_query"):
            samples.setdefault(f"t_{key}", []).append(value)


# The API processes compared side by side. "before": what the API did until now (each request embeds
# its query on its own thread, OpenBLAS with one thread per core); "1 BLAS thread": only the thread
# cap; "batched": the default now (queries embedded together by one thread, one BLAS thread).
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "before": {"QUERY_EMBEDDING_BATCH": "0", "EMBEDDING_THREADS": "0"},
    "1 BLAS thread": {"QUERY_EMBEDDING_BATCH": "0", "EMBEDDING_THREADS": "1"},
    "batched (default)": {"QUERY_EMBEDDING_BATCH": "64", "EMBEDDING_THREADS": "1"},
}


def parse_config(spec: str) -> tuple[str, dict[str, str]]:
    """`name=KEY:VALUE,KEY:VALUE` (an API process with these env vars), or a name of CONFIGURATIONS."""
    if "=" not in spec:
        return spec, CONFIGURATIONS[spec]
    name, _, rest = spec.partition("=")
    env = dict(item.split(":", 1) for item in rest.split(",") if item)
    return name, env


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
    out["client_p99"] = percentile(samples["client"], 99)
    out["n"] = len(samples["client"])
    out["transport_retries"] = len(samples["transport_retries"])
    return out


def index_while_searching(
    db: Any,
    common: dict[str, str],
    bases: dict[str, list[tuple[str, int]]],
    cell: Callable[[int, bool], None],
    clients: int,
    docs: int,
) -> None:
    """Searching while indexing: a real worker indexes documents uploaded through the API."""
    heldout = load_heldout()
    names = list(heldout.docs)[:docs]
    with process(["worker", "--concurrency", "1", "--loglevel", "WARNING"], common, "worker"):
        base = next(iter(bases.values()))[0][0]
        with httpx.Client(timeout=60) as http:
            for name in names:
                resp = http.post(
                    f"{base}/api/v1/collections/load/documents",
                    files={"file": (f"{name}.txt", heldout.docs[name].encode(), "text/plain")},
                )
                resp.raise_for_status()
        cell(clients, True)
        with db.ctx.sessions() as session:
            pending = session.scalar(
                select(func.count()).select_from(Document).where(Document.status != DocumentStatus.READY.value)
            )
        print(f"documents still being indexed when the indexing rows ended: {pending} of {len(names)}")


def pg_sessions(db: Any) -> int:
    """Connections PostgreSQL has accepted on the benchmark's database so far (pg_stat_database counts
    each when its backend reports, at the latest when it exits): the difference over a row is the
    connections the API opened during it, i.e. its connection pool's churn, whatever the API's code."""
    with db.ctx.sessions() as session:
        return int(
            session.scalar(text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))
        )


def _spread(values: list[float]) -> str:
    """The median over rounds, with the lowest and highest when there are several."""
    mid = statistics.median(values)
    return f"{mid:.0f}" if len(values) == 1 else f"{mid:.0f} ({min(values):.0f}-{max(values):.0f})"


def _ratio(rs: list[dict[str, Any]], reference: dict[tuple[int, int, str, bool], dict[str, Any]], key: str) -> str:
    """The median over rounds of this row's `key` divided by the reference configuration's in the same
    round (paired: the two ran seconds apart), with the range over rounds."""
    ratios = [r[key] / reference[(r["round"], r["clients"], r["mode"], r["indexing"])][key] for r in rs]
    mid = statistics.median(ratios)
    return f"{mid:.2f}" if len(ratios) == 1 else f"{mid:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(results: list[dict[str, Any]]) -> str:
    """One row per (clients, mode, indexing, API): client p50 and p95 as the median over rounds (and
    their range), each paired with the first configuration's in the same round, then the median over
    rounds of each server-side part's p50 / p95. Below it, per configuration, hybrid's p95 minus
    vector's in the same round, beside the full-text query's own p95 in the hybrid runs."""
    cells: dict[tuple[int, str, bool, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["clients"], r["mode"], r["indexing"], r["config"]), []).append(r)
    first = results[0]["config"]
    reference = {(r["round"], r["clients"], r["mode"], r["indexing"]): r for r in results if r["config"] == first}
    parts = sorted({k[2:-4] for r in results for k in r if k.startswith("t_") and k.endswith("_p50")})
    header = ["clients", "mode", "indexing", "API", "p50 ms", "p95 ms", "p99 ms", "req/s"]
    header += [f"{what} / {first}" for what in ("p50", "p95", "p99", "req/s")]
    header += ["PG conns opened /100 req", "API CPU ms/req", "embed", "total", *parts, "rounds x n"]
    rows = []
    for (clients, mode, indexing, config), rs in sorted(cells.items(), key=lambda kv: kv[0][:3]):

        def both(key: str, rs: list[dict[str, Any]] = rs) -> str:
            if f"{key}_p50" not in rs[0]:
                return ""
            p50 = statistics.median(r[f"{key}_p50"] for r in rs)
            p95 = statistics.median(r[f"{key}_p95"] for r in rs)
            return f"{p50:.0f} / {p95:.0f}"

        keys = ("client_p50", "client_p95", "client_p99", "throughput_p50")
        rows.append(
            [
                str(clients),
                mode,
                "yes" if indexing else "no",
                config,
                *(_spread([r[k] for r in rs]) for k in keys),
                *(_ratio(rs, reference, k) for k in keys),
                f"{statistics.median(r['pg_connections_per_100'] for r in rs):.0f}",
                f"{statistics.median(r['api_cpu_ms_per_request_p50'] for r in rs):.1f}",
                both("embed_query"),
                both("server_total"),
                *(both(f"t_{p}") for p in parts),
                f"{len(rs)} x {int(rs[0]['n'])}",
            ]
        )
    out = markdown_table(header, rows)
    gaps = []
    for (clients, mode, indexing, config), rs in cells.items():
        vector = cells.get((clients, "vector", indexing, config))
        if mode != "hybrid" or vector is None:
            continue
        by_round = {r["round"]: r for r in vector}
        diffs = [r["client_p95"] - by_round[r["round"]]["client_p95"] for r in rs if r["round"] in by_round]
        text_p95 = statistics.median(r.get("t_fulltext_store_p95", float("nan")) for r in rs)
        gaps.append([str(clients), "yes" if indexing else "no", config, _spread(diffs), f"{text_p95:.0f}"])
    if gaps:
        header = ["clients", "indexing", "API", "hybrid p95 - vector p95, ms (same round)", "full-text store p95 ms"]
        out += "\n\n" + markdown_table(header, gaps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--requests", type=int, default=200, help="requests per (clients, mode) cell")
    parser.add_argument("--modes", default="vector,hybrid")
    parser.add_argument("--indexing-docs", type=int, default=30, help="documents uploaded for the indexing rows")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument(
        "--config",
        action="append",
        help="an API process to compare: a name from CONFIGURATIONS or name=KEY:VALUE,KEY:VALUE (repeatable;"
        " default: all of CONFIGURATIONS)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run each cell this many times, rotating the order")
    parser.add_argument("--no-indexing", action="store_true", help="skip the rows measured while indexing")
    parser.add_argument(
        "--client", default="raw", help="the load generator's HTTP client: raw, httpx or raw,httpx (see Connection)"
    )
    args = parser.parse_args()
    configs = dict(parse_config(c) for c in args.config) if args.config else CONFIGURATIONS
    client_counts = [int(c) for c in args.clients.split(",")]
    client_kinds = args.client.split(",")
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
            bases: dict[str, list[tuple[str, int]]] = {}
            for name, extra in configs.items():
                # API_PROCESSES (bench only): that many API processes, the clients spread over them.
                for _ in range(int(extra.get("API_PROCESSES", "1"))):
                    port = free_port()
                    api = stack.enter_context(
                        process(["serve", "--host", "127.0.0.1", "--port", str(port)], {**common, **extra}, "api")
                    )
                    bases.setdefault(name, []).append((f"http://127.0.0.1:{port}", api.pid))
            for apis in bases.values():
                for base, _ in apis:
                    wait_until(partial(api_ready, base), 120, "the API")
                # Warm up: model loaded, connections opened (not recorded).
                asyncio.run(run_load(apis, "load", queries, "hybrid", 4 * len(apis), 20 * len(apis)))

            def cell(clients: int, indexing: bool) -> None:
                # Every configuration and mode runs back to back in each round, so they see the same
                # machine; over rounds the order rotates, so none is always first after a pause.
                runs = [(name, kind, mode) for mode in modes for name in bases for kind in client_kinds]
                for round_no in range(args.rounds):
                    shift = round_no % len(runs)
                    for name, kind, mode in runs[shift:] + runs[:shift]:
                        sessions = pg_sessions(db)
                        s = asyncio.run(run_load(bases[name], "load", queries, mode, clients, args.requests, kind))
                        opened = pg_sessions(db) - sessions
                        results.append(
                            {
                                "config": name if len(client_kinds) == 1 else f"{name}, {kind} client",
                                "clients": clients,
                                "mode": mode,
                                "indexing": indexing,
                                "round": round_no,
                                "load_average": os.getloadavg()[0],
                                "pg_connections_per_100": opened * 100 / args.requests,
                                **summarise(s),
                            }
                        )
                        print(f"{results[-1]}", flush=True)

            for clients in client_counts:
                cell(clients, False)
            if not args.no_indexing:
                index_while_searching(db, common, bases, cell, max(client_counts), args.indexing_docs)
        versions = server_version(db.ctx)
    print(f"# search under load {args.label} — {machine_facts()}, {versions}")
    loads = [r["load_average"] for r in results]
    print(f"load average (1 min) during the rows: {min(loads):.1f}-{max(loads):.1f}")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
