"""Stores behind small interfaces: vectors, full text, objects. Picked by settings in `build_*`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from aperag.config import Settings


class StoreUnavailable(RuntimeError):
    """A store could not be reached. Ingestion retries with backoff on this; readiness reports it."""


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str
    document_id: str
    collection_id: str
    text: str


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    score: float


@dataclass(frozen=True)
class FulltextHits:
    """A full-text ranking. `max_score`: the highest score any chunk could reach for this query (for
    BM25, the sum over the query's terms of idf * (k1 + 1)), which makes scores comparable across
    queries; None when the engine does not expose it (Elasticsearch)."""

    hits: list[Hit]
    max_score: float | None


class VectorStore(Protocol):
    def ensure_schema(self) -> None: ...
    def upsert(self, chunks: list[IndexedChunk], vectors: npt.NDArray[np.float32]) -> None: ...
    def delete_document(self, document_id: str) -> None: ...
    def delete_collection(self, collection_id: str) -> None: ...
    def search(self, collection_id: str, vector: npt.NDArray[np.float32], top_k: int) -> list[Hit]: ...
    def ping(self) -> None: ...


class FulltextStore(Protocol):
    def ensure_schema(self) -> None: ...
    def upsert(self, chunks: list[IndexedChunk]) -> None: ...
    def delete_document(self, document_id: str) -> None: ...
    def delete_collection(self, collection_id: str) -> None: ...
    def search(self, collection_id: str, query: str, top_k: int) -> FulltextHits: ...
    def ping(self) -> None: ...
    def sync(self) -> int:
        """Index what another release wrote where this one does not read (the PostgreSQL store: the
        previous release's tsvector rows); returns how many chunks were brought up to date."""
        ...


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def ping(self) -> None: ...


def build_vector_store(settings: Settings) -> VectorStore:
    if settings.vector_db_type == "qdrant":
        from aperag.stores.qdrant_store import QdrantVectorStore

        return QdrantVectorStore.from_settings(settings)
    from aperag.stores.pgvector_store import PgVectorStore

    return PgVectorStore(settings.database_url, settings.embedding_dimension)


def build_fulltext_store(settings: Settings) -> FulltextStore:
    if settings.fulltext_type == "elasticsearch":
        from aperag.stores.es_store import ElasticsearchFulltextStore

        return ElasticsearchFulltextStore.from_settings(settings)
    from aperag.stores.pg_fulltext_store import PgFulltextStore

    return PgFulltextStore(settings.database_url)


def build_object_store(settings: Settings) -> ObjectStore:
    if settings.object_store_type == "s3":
        from aperag.stores.s3_store import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    from aperag.stores.local_store import LocalObjectStore

    return LocalObjectStore(settings.object_store_root)
