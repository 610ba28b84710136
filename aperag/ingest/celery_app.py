"""The Celery app used by `aperag worker` and `aperag beat`. Broker: Redis.

Queues: `celery` holds the ingestion tasks (what the operator's KEDA ScaledObject scales the workers on);
`aperag-periodic` the beat's maintenance task, which the workers consume too but which wakes no worker
scaled to zero (it expires after one interval: the next one does the same work)."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from aperag.config import load_settings
from aperag.context import AppContext

log = logging.getLogger(__name__)

_settings = load_settings()
#: The ingestion queue (a Redis list of this name) and the queue of the periodic maintenance task.
QUEUE = "celery"
PERIODIC_QUEUE = "aperag-periodic"

_visibility = _settings.broker_visibility_timeout_seconds
celery_app = Celery("aperag", broker=_settings.redis_url if _settings.redis_configured else "memory://")
celery_app.conf.update(
    task_default_queue=QUEUE,
    # A task whose worker died unacknowledged is restored to the queue after the visibility timeout,
    # looked for every tenth of it (at most every 10 s), by any running worker.
    broker_transport_options={
        "visibility_timeout": _visibility,
        "unacked_restore_interval": min(10, max(1, _visibility // 10)),
        "unacked_restore_throttle": 1,
    },
    # acks_late + reject_on_worker_lost: a worker killed mid-task leaves the message for another.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "reconcile-stuck-documents": {
            "task": "aperag.reconcile",
            "schedule": float(_settings.reconcile_interval_seconds),
            "options": {"queue": PERIODIC_QUEUE, "expires": float(_settings.reconcile_interval_seconds)},
        }
    },
)


@lru_cache(maxsize=1)
def worker_context() -> AppContext:
    from aperag.ingest.dispatch import CeleryDispatcher

    settings = load_settings()
    return AppContext(settings=settings, dispatcher=CeleryDispatcher(settings.redis_url))


@celery_app.task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    name="aperag.index_document", bind=True, acks_late=True, max_retries=_settings.task_max_retries
)
def index_document_task(self: Any, document_id: str) -> str:
    from opentelemetry.trace import SpanKind

    from aperag.ingest.pipeline import TransientIngestionError, index_document
    from aperag.telemetry import extract, span, task_headers

    final = self.request.retries >= self.max_retries
    # A child of the upload's span: the trace follows the document from the API into this task.
    attributes = {"aperag.document.id": document_id, "messaging.system": "celery", "celery.retries": self.request.retries}  # noqa: E501
    parent = extract(task_headers(self.request))
    with span("aperag.index_document", attributes, kind=SpanKind.CONSUMER, context=parent):
        try:
            return index_document(worker_context(), document_id, final_attempt=final)
        except TransientIngestionError as exc:
            countdown = min(_settings.task_retry_backoff_max, 2 ** (self.request.retries + 1))
            raise self.retry(exc=exc, countdown=countdown) from exc


@celery_app.task(  # type: ignore[untyped-decorator]
    name="aperag.build_graph", bind=True, acks_late=True, max_retries=_settings.task_max_retries
)
def build_graph_task(self: Any, document_id: str) -> str:
    """The document's knowledge graph, after its chunks are indexed (aperag.graph.build)."""
    from opentelemetry.trace import SpanKind

    from aperag.graph.build import GraphBusy, TransientGraphError, build_document_graph
    from aperag.telemetry import extract, span, task_headers

    final = self.request.retries >= self.max_retries
    attributes = {"aperag.document.id": document_id, "messaging.system": "celery"}
    with span("aperag.build_graph", attributes, kind=SpanKind.CONSUMER, context=extract(task_headers(self.request))):
        try:
            return build_document_graph(worker_context(), document_id, final_attempt=final)
        except GraphBusy:
            # Not a failure: the collection's slots are taken. A fresh message, so waiting does not use
            # up the retries (this one is acknowledged when the task returns).
            build_graph_task.apply_async(args=[document_id], countdown=2)
            return "busy"
        except TransientGraphError as exc:
            countdown = min(_settings.task_retry_backoff_max, 2 ** (self.request.retries + 1))
            raise self.retry(exc=exc, countdown=countdown) from exc


@celery_app.task(name="aperag.reconcile")  # type: ignore[untyped-decorator]
def reconcile_task() -> dict[str, int]:
    from aperag.ingest.pipeline import reconcile

    result = reconcile(worker_context())
    log.info("reconcile: %s", result)
    return result
