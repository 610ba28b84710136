"""Chat latency through the HTTP API with the scripted model: time to first token, p50/p95.

    .venv/bin/python -m bench.app_chat [--rounds 2] [--concurrency 4]

The labelled retrieval corpus (tests/data/retrieval: 72 documents) is indexed into one collection on an
embedded PostgreSQL; the app runs under uvicorn on 127.0.0.1 and tests/scripted_llm.py plays the model,
answering every question at once with the same 60-word answer, streamed one word per event. The model
itself therefore costs nothing here: the figures are the app's own overhead (retrieval with the query
embedding, the token budget, the prompt, relaying the stream, storing the turn). A real model adds its
own time to first token and generation time on top.

Per request (milliseconds): `sources` = the first event (retrieval done); `TTFT` = the first `delta`
event; `total` = the `done` event (history stored). The 64 corpus queries, `--rounds` times, one at a
time and then `--concurrency` at a time; also non-streaming.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from aperag.api.app import create_app
from aperag.ingest.pipeline import index_document
from aperag.services import create_collection, upload_document
from bench.common import (
    REPO,
    embedded_postgres,
    machine_facts,
    markdown_table,
    new_database,
    percentile,
    server_version,
)
from tests.app.live_server import serve
from tests.scripted_llm import Reply, ScriptedLLM

KEY = "bench-key"
ANSWER = " ".join(["The sources say so [1]."] + ["word"] * 55)


def stream_once(client: httpx.Client, question: str) -> dict[str, float]:
    started = time.perf_counter()
    marks: dict[str, float] = {}
    with client.stream("POST", "/api/v1/collections/corpus/chat", json={"message": question, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
                key = {"sources": "sources", "delta": "ttft", "done": "total"}.get(name)
                if key and key not in marks:
                    marks[key] = (time.perf_counter() - started) * 1000
                if name == "error":
                    raise RuntimeError("the chat stream failed")
    return marks


def plain_once(client: httpx.Client, question: str) -> dict[str, float]:
    started = time.perf_counter()
    client.post("/api/v1/collections/corpus/chat", json={"message": question}).raise_for_status()
    return {"total": (time.perf_counter() - started) * 1000}


def run(url: str, questions: list[str], concurrency: int, streaming: bool) -> list[dict[str, float]]:
    fn = stream_once if streaming else plain_once
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        if concurrency == 1:
            return [fn(client, q) for q in questions]
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda q: fn(client, q), questions))


def summarise(label: str, results: list[dict[str, float]]) -> list[str]:
    def cell(key: str) -> str:
        values = [r[key] for r in results if key in r]
        return f"{percentile(values, 50):.0f} / {percentile(values, 95):.0f}" if values else "-"

    return [label, str(len(results)), cell("sources"), cell("ttft"), cell("total")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    corpus = REPO / "tests/data/retrieval"
    queries = [json.loads(line)["text"] for line in (corpus / "queries.jsonl").read_text().splitlines() if line]
    with ScriptedLLM(default=lambda _: Reply(ANSWER)) as llm, embedded_postgres() as pg, \
            tempfile.TemporaryDirectory() as objects:  # fmt: skip
        db = new_database(pg, Path(objects), APERAG_API_KEYS=KEY, **llm.env())
        create_collection(db.ctx, "corpus")
        t0 = time.perf_counter()
        for path in sorted((corpus / "docs").iterdir()):
            doc = upload_document(db.ctx, "corpus", path.name, None, path.read_bytes()).document
            assert index_document(db.ctx, doc.id, final_attempt=True) == "ready", path
        print(f"indexed {len(list((corpus / 'docs').iterdir()))} documents in {time.perf_counter() - t0:.0f} s")
        rows = []
        with serve(create_app(db.ctx)) as url:
            run(url, queries[:8], 1, True)  # warm-up: model loaded, connections open
            questions = queries * args.rounds
            rows.append(summarise("streaming, 1 at a time", run(url, questions, 1, True)))
            concurrent = run(url, questions, args.concurrency, True)
            rows.append(summarise(f"streaming, {args.concurrency} at a time", concurrent))
            rows.append(summarise("JSON, 1 at a time", run(url, questions, 1, False)))
        print(machine_facts(), "|", server_version(db.ctx), "|", f"{llm.calls()} model calls")
        header = ["requests", "n", "sources p50 / p95 ms", "TTFT p50 / p95 ms", "total p50 / p95 ms"]
        print(markdown_table(header, rows))
        if args.json:
            args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
