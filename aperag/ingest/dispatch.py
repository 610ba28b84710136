"""How an upload reaches a worker: a Celery queue, or an in-process thread (embedded mode)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aperag.context import AppContext

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def enqueue(self, document_id: str) -> None: ...
    def queue_depth(self) -> int: ...


class CeleryDispatcher:
    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.redis_url = redis_url
        # A producer-only app bound to this URL: the worker's module-level app reads the process
        # environment, which an embedding caller (tests, the CLI) may not have set.
        self.producer = Celery("aperag-producer", broker=redis_url)
        self.producer.conf.update(task_default_queue="celery", broker_connection_retry_on_startup=True)

    def enqueue(self, document_id: str) -> None:
        self.producer.send_task("aperag.index_document", args=[document_id], queue="celery")

    def queue_depth(self) -> int:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            return int(client.llen("celery"))
        finally:
            client.close()


class InProcessDispatcher:
    """One background thread: the embedded single-command mode has no Redis and no worker."""

    def __init__(self, ctx: AppContext, max_retries: int = 3) -> None:
        self.ctx = ctx
        self.max_retries = max_retries
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aperag-ingest")
        self._pending = 0
        self._lock = threading.Lock()

    def enqueue(self, document_id: str) -> None:
        with self._lock:
            self._pending += 1
        self.executor.submit(self._run, document_id)

    def _run(self, document_id: str) -> None:
        from aperag.ingest.pipeline import TransientIngestionError, index_document

        try:
            for attempt in range(self.max_retries + 1):
                try:
                    index_document(self.ctx, document_id, final_attempt=attempt == self.max_retries)
                    return
                except TransientIngestionError as exc:
                    delay = min(30.0, 2.0**attempt)
                    log.warning("indexing %s failed (%s); retry in %.0fs", document_id, exc, delay)
                    time.sleep(delay)
        except Exception:
            log.exception("indexing %s crashed", document_id)
        finally:
            with self._lock:
                self._pending -= 1

    def queue_depth(self) -> int:
        with self._lock:
            return self._pending

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
