"""Prometheus metrics shared by the API and the workers (docs/observability.md lists them).

The worker's metrics are counted in Celery's pool processes: ``aperag worker`` runs prometheus-client in
multiprocess mode (aperag.telemetry.use_multiprocess_metrics), which these plain counters and histograms
support as they are."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Histogram

from aperag import telemetry

HTTP_REQUESTS = Counter("aperag_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "aperag_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGESTED_DOCUMENTS = Counter("aperag_ingestion_documents_total", "Ingestion outcomes", ["result"])
INGESTED_CHUNKS = Counter("aperag_ingestion_chunks_total", "Chunks indexed")
INGESTION_SECONDS = Histogram(
    "aperag_ingestion_duration_seconds",
    "Time to index one document",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
SEARCH_SECONDS = Histogram("aperag_search_duration_seconds", "Search latency", ["mode"])
INGESTION_TASKS = Counter(
    "aperag_ingestion_tasks_total",
    "Ingestion tasks (one per queued document) by outcome: ready, failed, retry, skipped, deleted, cancelled",
    ["outcome"],
)
INGESTION_TASK_SECONDS = Histogram(
    "aperag_ingestion_task_duration_seconds",
    "Time one ingestion task took, by outcome",
    ["outcome"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
EMBEDDING_SECONDS = Histogram(
    "aperag_embedding_duration_seconds",
    "Time one call of the embedding model took (documents: a batch of chunks; query: a search query)",
    ["purpose"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMBEDDED_TEXTS = Counter("aperag_embedding_texts_total", "Texts embedded", ["purpose"])
STORE_SECONDS = Histogram(
    "aperag_store_operation_duration_seconds",
    "Vector and full-text store calls: search and upsert",
    ["store", "operation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@contextmanager
def timed_store(store: str, operation: str, backend: str, **attributes: Any) -> Iterator[None]:
    """A span and a duration sample around one call of a vector or full-text store."""
    started = time.perf_counter()
    with telemetry.span(f"{store}_store.{operation}", {"db.system": backend, **attributes}):
        yield
    STORE_SECONDS.labels(store, operation).observe(time.perf_counter() - started)

# Chat-model calls (aperag.llm): by purpose (graph_extraction, chat, ...) and outcome (ok, unavailable,
# rejected, bad_response); tokens as the endpoint reported them.
LLM_REQUESTS = Counter("aperag_llm_requests_total", "Chat-model calls by purpose and outcome", ["purpose", "outcome"])
LLM_RETRIES = Counter("aperag_llm_retries_total", "Chat-model HTTP attempts retried, by purpose", ["purpose"])
LLM_TOKENS = Counter("aperag_llm_tokens_total", "Chat-model tokens by purpose and kind (prompt, completion)",
                     ["purpose", "kind"])
LLM_SECONDS = Histogram(
    "aperag_llm_request_duration_seconds",
    "Time one chat-model call took, retries included",
    ["purpose"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
