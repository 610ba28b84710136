"""Prometheus metrics shared by the API and the workers."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
