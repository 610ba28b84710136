"""Traces (OpenTelemetry, exported over OTLP/HTTP) and the worker's metrics across processes.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, or with the seed's
``JAEGER_ENABLED=true`` and ``JAEGER_ENDPOINT`` (mapped onto the OTLP endpoint: Jaeger 2 receives OTLP on
port 4318; a Jaeger 1 collector URL ``http://host:14268/api/traces`` becomes ``http://host:4318``).
The exporter reads the other standard ``OTEL_*`` variables itself (headers, service name via
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``). Spans are exported by a background thread in
batches: an unreachable collector costs a warning in the log, never a request (the export timeout is
short, and a full queue drops spans instead of blocking).

What is traced: API requests (a server span per request, continuing a caller's ``traceparent``),
ingestion (the upload's context travels in the Celery task's headers, so the worker's task span is a
child of the upload's: one trace from upload to indexed), store queries and writes, and embedding-model
calls (:func:`span`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("aperag")
#: The W3C trace-context headers carried in a Celery task's message.
TRACE_HEADERS = ("traceparent", "tracestate")


def otlp_endpoint(env: Mapping[str, str]) -> str | None:
    """The OTLP endpoint the environment asks for, the seed's Jaeger settings included."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        return endpoint
    if env.get("JAEGER_ENABLED", "").lower() in ("1", "true", "yes") and env.get("JAEGER_ENDPOINT"):
        jaeger = env["JAEGER_ENDPOINT"].strip()
        if not re.match(r"^https?://", jaeger):
            jaeger = f"http://{jaeger}"
        # A Jaeger 1 collector's Thrift URL: the same host's OTLP/HTTP port.
        return re.sub(r":14268(/api/traces)?/?$", ":4318", jaeger)
    return None


def setup_tracing(default_service_name: str) -> bool:
    endpoint = otlp_endpoint(os.environ)
    if endpoint is None or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # from JAEGER_*: the exporter reads it
    # An unreachable collector must not hold anything up for long (the SDK's default is 10 s per batch).
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", default_service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("OpenTelemetry tracing enabled for %s, exporting to %s", service, endpoint)
    return True


def shutdown_tracing() -> None:
    """Flush what is buffered (bounded by the export timeout)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception as exc:  # flushing must never fail a shutdown
            log.warning("could not flush traces: %s", exc)


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
) -> Iterator[trace.Span]:
    """A span around a block (a no-op without a tracer provider); ``context``: the parent (a propagated
    trace) instead of the current span."""
    with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=dict(attributes or {})) as current:
        yield current


def inject() -> dict[str, str]:
    """The current trace context as headers (for a Celery task, an outgoing request)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, Any] | None) -> otel_context.Context:
    return propagate.extract({k: str(v) for k, v in (carrier or {}).items() if k in TRACE_HEADERS})


def task_headers(request: Any) -> dict[str, str]:
    """The trace headers of a running Celery task: its message headers become attributes of the task's
    request (protocol 2), or sit in ``request.headers`` (older senders)."""
    found: dict[str, str] = {}
    nested = getattr(request, "headers", None) or {}
    for name in TRACE_HEADERS:
        value = getattr(request, name, None) or (nested.get(name) if isinstance(nested, Mapping) else None)
        if value:
            found[name] = str(value)
    return found


# --- metrics across the worker's processes --------------------------------------------------------------


def use_multiprocess_metrics() -> str:
    """Celery's prefork pool indexes in child processes, whose metrics the parent's registry never sees:
    prometheus-client's multiprocess mode keeps each process's values in files of one directory, which
    /metrics adds up. Must run before prometheus_client is imported."""
    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning("prometheus_client was imported before multiprocess mode was set up")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="aperag-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def metrics_payload() -> tuple[bytes, str]:
    """The Prometheus text of this process (or, in multiprocess mode, of all the worker's processes)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
