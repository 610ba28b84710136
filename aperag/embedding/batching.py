"""Concurrent search queries embedded together, by one thread.

Under load the API ran one forward pass per request, each on its own worker thread: up to 40
numpy/OpenBLAS forward passes of one short query at a time competed for 2 cores, the GIL and
OpenBLAS's own threads, and most of the time went to that contention instead of arithmetic
(docs/benchmarks.md, "Search under load"). Here a request hands its query to one embedding thread
and waits; the thread takes every query waiting at that moment (up to `max_batch`) and embeds them in
one batched forward pass. Alone, a query is embedded at once (no waiting for company); under load a
batch forms by itself while the previous pass runs.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class QueryBatcher:
    def __init__(self, embedder: object, max_batch: int = 64) -> None:
        from aperag.embedding import Embedder

        self.embedder: Embedder = embedder  # type: ignore[assignment]
        self.max_batch = max(1, max_batch)
        self._queue: queue.SimpleQueue[tuple[str, Future[Vector]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._thread.start()

    def submit(self, query: str) -> Future[Vector]:
        """The query's vector, later: the async API awaits it without holding a thread."""
        future: Future[Vector] = Future()
        self._queue.put((query, future))
        return future

    def embed_query(self, query: str, timeout: float = 60.0) -> Vector:
        return self.submit(query).result(timeout=timeout)

    def _take_batch(self) -> list[tuple[str, Future[Vector]]]:
        batch = [self._queue.get()]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            texts = list(dict.fromkeys(q for q, _ in batch))
            try:
                vectors = self.embedder.embed_queries(texts)
            except BaseException as exc:  # every waiting request gets the error, the thread lives on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            row = {text: i for i, text in enumerate(texts)}
            for text, future in batch:
                future.set_result(vectors[row[text]])
