"""Traces and metrics of the real processes: ``aperag serve`` and ``aperag worker`` (prefork pool) with a
real Redis broker and PostgreSQL, exporting OTLP/HTTP to a collector on 127.0.0.1.

The collector is an OTLP/HTTP receiver in this file, decoding requests with opentelemetry-proto (the
OTLP protocol's own message classes, from PyPI): Jaeger all-in-one does not fit the test budget
(e2e/controlplane/README.md gives the figures), and what is checked here is what any OTLP collector
receives. One trace follows an upload from the API through the Celery task (context in the task's
headers) to the embedding-model call and the store writes; a search traces its model call and store
queries; an unreachable collector costs nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import wait_until
from tests.app.corpus import DOCS
from tests.app.test_worker_e2e import free_port


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces (protobuf), as a collector or Jaeger serves it."""

    port: int
    spans: list[Span] = field(default_factory=list)
    requests: int = 0

    def traces(self) -> dict[str, list[Span]]:
        out: dict[str, list[Span]] = {}
        for s in list(self.spans):
            out.setdefault(s.trace_id, []).append(s)
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector(free_port())
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with lock:
                found.requests += 1
                for resource_spans in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for s in scope.spans:
                            found.spans.append(Span(
                                attrs.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                                s.parent_span_id.hex(), s.kind,
                                {a.key: _value(a.value) for a in s.attributes},
                            ))  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", found.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready: Callable[[str], bool], what: str) -> Iterator[Path]:
    """``python -m aperag.cli ARGS`` until the block ends (SIGTERM); yields its log file."""
    log = Path(tempfile.mkstemp(prefix="aperag-telemetry-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aperag.cli", *args], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: proc.poll() is not None or ready(log.read_text(errors="replace")), 120, what)
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(f"{args[0]} did not stop within 30 s of SIGTERM") from None
        finally:
            log.unlink(missing_ok=True)


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        payload = resp.read()
        return json.loads(payload) if resp.headers.get("Content-Type", "").startswith("application/json") else payload


def upload(base: str, name: str, text: str) -> Any:
    boundary = "aperagtelemetry"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n").encode()  # fmt: skip
    return call("POST", f"{base}/api/v1/collections/kb/documents", body,
                {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


@pytest.fixture
def env(app_env_factory: Callable[..., dict[str, str]], redis_port: int) -> dict[str, str]:
    return app_env_factory(
        REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port), REDIS_DB="5", APERAG_HOST="127.0.0.1",
        APERAG_PORT=str(free_port()), HEALTH_PORT=str(free_port()), HF_HUB_OFFLINE="1",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )  # fmt: skip


def test_one_trace_follows_an_upload_from_the_api_through_the_worker(
    env: dict[str, str], collector: Collector, embedder_warm: None
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}"}
    # The worker with the seed's settings (JAEGER_*), the API with the standard OTEL_* ones.
    jaeger = {"JAEGER_ENABLED": "true", "JAEGER_ENDPOINT": f"http://127.0.0.1:{collector.port}"}
    base = f"http://127.0.0.1:{env['APERAG_PORT']}"
    worker_args = ["worker", "--concurrency", "1", "--loglevel", "INFO"]
    with process(worker_args, {**env, **jaeger}, lambda log: "ready." in log, "worker ready"), \
         process(["serve"], {**env, **otel}, lambda log: "Uvicorn running" in log, "API ready"):  # fmt: skip
        call("POST", f"{base}/api/v1/collections", json.dumps({"name": "kb"}).encode(),
             {"Content-Type": "application/json"})  # fmt: skip
        name, text = next(iter(DOCS.items()))
        document = upload(base, name, text)

        def indexed() -> bool:
            status = call("GET", f"{base}/api/v1/collections/kb/documents/{document['id']}")["status"]
            assert status != "failed"
            return bool(status == "ready")

        wait_until(indexed, 120, "the worker indexed the upload", interval=0.3)
        query = json.dumps({"query": "tide", "mode": "hybrid"}).encode()
        call("POST", f"{base}/api/v1/collections/kb/search", query, {"Content-Type": "application/json"})

        def upload_trace() -> list[Span] | None:
            for spans in collector.traces().values():
                names = {s.name for s in spans}
                if {"POST /api/v1/collections/{collection}/documents", "aperag.index_document",
                        "vector_store.upsert", "fulltext_store.upsert", "embedding.embed"} <= names:  # fmt: skip
                    return spans
            return None

        wait_until(lambda: upload_trace() is not None, 30, "the upload's trace at the collector")
        spans = upload_trace()
        assert spans is not None
        by_id = {s.span_id: s for s in spans}
        api = next(s for s in spans if s.name == "POST /api/v1/collections/{collection}/documents")
        task = next(s for s in spans if s.name == "aperag.index_document")
        assert (api.service, task.service) == ("aperag-api", "aperag-worker")
        assert api.kind == 2 and task.kind == 5  # SERVER, CONSUMER
        assert api.attributes["http.response.status_code"] == 201
        assert api.attributes["http.route"] == "/api/v1/collections/{collection}/documents"
        assert task.attributes["aperag.document.id"] == document["id"]

        def ancestors(s: Span) -> list[str]:
            chain = []
            while s.parent_id in by_id:
                s = by_id[s.parent_id]
                chain.append(s.name)
            return chain

        # The task continues the upload's request (its context came in the Celery message's headers).
        assert api.name in ancestors(task), [(s.name, s.span_id, s.parent_id) for s in spans]
        for child in ("embedding.embed", "vector_store.upsert", "fulltext_store.upsert", "ingest.parse"):
            span = next(s for s in spans if s.name == child)
            assert span.service == "aperag-worker" and "aperag.index_document" in ancestors(span), child
        assert next(s for s in spans if s.name == "vector_store.upsert").attributes["db.system"] == "pgvector"

        def search_trace() -> list[Span] | None:
            for spans in collector.traces().values():
                if any(s.name == "POST /api/v1/collections/{collection}/search" for s in spans):
                    return spans
            return None

        wait_until(lambda: search_trace() is not None, 30, "the search's trace")
        found = {s.name for s in search_trace() or []}
        assert {"embedding.embed_query", "vector_store.search", "fulltext_store.search"} <= found

        # The metrics of the same work: the API's /metrics and the worker's (its pool process counted it).
        api_metrics = call("GET", f"{base}/metrics").decode()
        assert metric(api_metrics, "aperag_search_duration_seconds_count", mode="hybrid") == 1
        assert metric(api_metrics, "aperag_embedding_duration_seconds_count", purpose="query") == 1
        assert metric(api_metrics, "aperag_http_request_duration_seconds_count",
                      route="/api/v1/collections/{collection}/documents") >= 1  # fmt: skip
        stores = "aperag_store_operation_duration_seconds_count"
        assert metric(api_metrics, stores, store="vector", operation="search") == 1
        worker_metrics = call("GET", f"http://127.0.0.1:{env['HEALTH_PORT']}/metrics").decode()
        assert metric(worker_metrics, "aperag_ingestion_tasks_total", outcome="ready") == 1
        assert metric(worker_metrics, "aperag_ingestion_task_duration_seconds_count", outcome="ready") == 1
        assert metric(worker_metrics, "aperag_embedding_duration_seconds_count", purpose="documents") >= 1
        assert metric(worker_metrics, "aperag_store_operation_duration_seconds_count", store="fulltext",
                      operation="upsert") >= 1  # fmt: skip


def test_an_unreachable_collector_never_breaks_the_app(env: dict[str, str], embedder_warm: None) -> None:
    dead = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    base = f"http://127.0.0.1:{env['APERAG_PORT']}"
    with process(["serve"], {**env, **dead, "REDIS_HOST": ""}, lambda log: "Uvicorn running" in log, "API") as log:
        call("POST", f"{base}/api/v1/collections", json.dumps({"name": "kb"}).encode(),
             {"Content-Type": "application/json"})  # fmt: skip
        started = time.monotonic()
        for _ in range(20):
            assert call("GET", f"{base}/api/v1/collections/kb")["name"] == "kb"
        assert time.monotonic() - started < 10, "requests waited for the collector"
        def export_failed() -> bool:
            text = log.read_text(errors="replace")
            return "Failed to export" in text or "Transient error" in text

        wait_until(export_failed, 30, "the export failure logged")
    # process() asserted that the API stopped within 30 s of SIGTERM, buffered spans and all
