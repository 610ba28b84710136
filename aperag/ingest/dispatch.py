"""How an upload reaches a worker: a Celery queue, or an in-process thread (embedded mode)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aperag.context import AppContext

log = logging.getLogger(__name__)
# In-process queue items that are graph jobs rather than documents to index.
GRAPH_PREFIX = "graph:"


class Dispatcher(Protocol):
    def enqueue(self, document_id: str) -> None: ...
    def queue_depth(self) -> int: ...


@runtime_checkable
class GraphDispatcher(Protocol):
    """A dispatcher that also runs graph-building tasks (aperag.graph.build)."""

    def enqueue_graph(self, document_id: str) -> None: ...


class CeleryDispatcher:
    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.redis_url = redis_url
        # A producer-only app bound to this URL: the worker's module-level app reads the process
        # environment, which an embedding caller (tests, the CLI) may not have set.
        self.producer = Celery("aperag-producer", broker=redis_url)
        self.producer.conf.update(task_default_queue="celery", broker_connection_retry_on_startup=True)

    def enqueue(self, document_id: str) -> None:
        from aperag.telemetry import inject

        # The trace context of the upload rides in the message: the worker's task span continues it.
        self.producer.send_task("aperag.index_document", args=[document_id], queue="celery", headers=inject())

    def enqueue_graph(self, document_id: str) -> None:
        from aperag.telemetry import inject

        self.producer.send_task("aperag.build_graph", args=[document_id], queue="celery", headers=inject())

    def queue_depth(self) -> int:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            return int(client.llen("celery"))
        finally:
            client.close()


class InProcessDispatcher:
    """One background thread: the embedded single-command mode has no Redis and no worker.

    The thread is a daemon and every wait in it watches the stop event, so shutdown is bounded: `stop`
    stops taking work, lets the running batch finish within a grace period (the pipeline checks the
    event between documents and between forward passes, and gives a cancelled batch back to
    `pending`), and otherwise abandons it. Whatever is left `pending`/`indexing` is recovered at the
    next start (aperag.ingest.recovery).
    """

    def __init__(self, ctx: AppContext, max_retries: int = 3) -> None:
        self.ctx = ctx
        self.max_retries = max_retries
        self._queue: queue.Queue[str] = queue.Queue()
        #: The trace context each queued document was uploaded in (its indexing continues that trace).
        self._contexts: dict[str, dict[str, str]] = {}
        self._tracked: set[str] = set()
        # Documents whose graph job is queued or running here: the reconciler's graph backfill skips them.
        self._graph_tracked: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aperag-ingest", daemon=True)
        self._thread.start()

    def enqueue(self, document_id: str) -> None:
        with self._lock:
            if self._stop.is_set() or document_id in self._tracked:
                return
            self._tracked.add(document_id)
            from aperag.telemetry import inject

            self._contexts[document_id] = inject()
        self._queue.put(document_id)

    def enqueue_graph(self, document_id: str) -> None:
        with self._lock:
            if self._stop.is_set() or document_id in self._graph_tracked:
                return
            self._graph_tracked.add(document_id)
        self._queue.put(GRAPH_PREFIX + document_id)

    def graph_tracked(self) -> set[str]:
        """Documents whose graph job is queued or running here."""
        with self._lock:
            return set(self._graph_tracked)

    def tracked(self) -> set[str]:
        """Documents queued or running here (the periodic recovery leaves them alone)."""
        with self._lock:
            return set(self._tracked)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                document_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if document_id.startswith(GRAPH_PREFIX):
                graph_document = document_id[len(GRAPH_PREFIX) :]
                try:
                    self._build_graph(graph_document)
                finally:
                    with self._lock:
                        self._graph_tracked.discard(graph_document)
                continue
            with self._lock:
                carrier = self._contexts.pop(document_id, {})
            try:
                from opentelemetry.trace import SpanKind

                from aperag.telemetry import extract, span

                attributes = {"aperag.document.id": document_id}
                with span("aperag.index_document", attributes, kind=SpanKind.CONSUMER, context=extract(carrier)):
                    self._run(document_id)
            finally:
                with self._lock:
                    self._tracked.discard(document_id)

    def _run(self, document_id: str) -> None:
        from aperag.ingest.pipeline import IngestionCancelled, TransientIngestionError, index_document

        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                return
            try:
                index_document(
                    self.ctx, document_id, final_attempt=attempt == self.max_retries, cancel=self._stop
                )
                return
            except IngestionCancelled:
                return
            except TransientIngestionError as exc:
                delay = min(30.0, 2.0**attempt)
                log.warning("indexing %s failed (%s); retry in %.0fs", document_id, exc, delay)
                self._stop.wait(delay)
            except Exception:
                # index_document records failures itself; this is a last resort so the thread lives on.
                log.exception("indexing %s crashed", document_id)
                return

    def _build_graph(self, document_id: str) -> None:
        from aperag.graph.build import GraphBusy, TransientGraphError, build_document_graph

        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                return
            try:
                build_document_graph(self.ctx, document_id, final_attempt=attempt == self.max_retries)
                return
            except (GraphBusy, TransientGraphError) as exc:
                delay = min(30.0, 2.0**attempt)
                log.warning("graph of %s: %s; retry in %.0fs", document_id, exc, delay)
                self._stop.wait(delay)
            except Exception:
                log.exception("building the graph of %s crashed", document_id)
                return

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._tracked)

    def stop(self, grace_seconds: float = 10.0) -> bool:
        """Stop taking work and wait up to `grace_seconds` for the running batch. True if it ended."""
        self._stop.set()
        self._thread.join(timeout=grace_seconds)
        finished = not self._thread.is_alive()
        if not finished:
            log.warning("indexing did not stop within %.0fs; abandoning it (recovered at next start)", grace_seconds)
        return finished

    def shutdown(self) -> None:
        self.stop(grace_seconds=10.0)
