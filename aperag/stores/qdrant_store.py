"""Vectors in Qdrant: a server (QDRANT_URL) or qdrant-client's local mode (QDRANT_PATH)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from aperag.config import Settings
from aperag.stores import Hit, IndexedChunk, StoreUnavailable


class QdrantVectorStore:
    def __init__(self, client: QdrantClient, collection: str, dimension: int) -> None:
        self.client = client
        self.collection = collection
        self.dimension = dimension

    @classmethod
    def from_settings(cls, settings: Settings) -> QdrantVectorStore:
        if settings.qdrant_url:
            client = QdrantClient(
                url=settings.qdrant_url, api_key=settings.qdrant_api_key or None, timeout=30
            )
        elif settings.qdrant_path == ":memory:":
            client = QdrantClient(":memory:")
        else:
            client = QdrantClient(path=settings.qdrant_path)
        return cls(client, settings.qdrant_collection, settings.embedding_dimension)

    def ensure_schema(self) -> None:
        try:
            if not self.client.collection_exists(self.collection):
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=self.dimension, distance=models.Distance.COSINE),
                )
                for field in ("collection_id", "document_id"):
                    self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        except (ResponseHandlingException, ConnectionError) as exc:
            raise StoreUnavailable(f"qdrant: {exc}") from exc

    def upsert(self, chunks: list[IndexedChunk], vectors: npt.NDArray[np.float32]) -> None:
        if not chunks:
            return
        points = [
            models.PointStruct(
                id=c.chunk_id,
                vector=v.tolist(),
                payload={"collection_id": c.collection_id, "document_id": c.document_id},
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]
        try:
            self.client.upsert(self.collection, points=points, wait=True)
        except (ResponseHandlingException, ConnectionError) as exc:
            raise StoreUnavailable(f"qdrant: {exc}") from exc

    def _delete(self, key: str, value: str) -> None:
        selector = models.FilterSelector(
            filter=models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])
        )
        try:
            self.client.delete(self.collection, points_selector=selector, wait=True)
        except (ResponseHandlingException, ConnectionError) as exc:
            raise StoreUnavailable(f"qdrant: {exc}") from exc

    def delete_document(self, document_id: str) -> None:
        self._delete("document_id", document_id)

    def delete_collection(self, collection_id: str) -> None:
        self._delete("collection_id", collection_id)

    def search(self, collection_id: str, vector: npt.NDArray[np.float32], top_k: int) -> list[Hit]:
        flt = models.Filter(
            must=[models.FieldCondition(key="collection_id", match=models.MatchValue(value=collection_id))]
        )
        try:
            result = self.client.query_points(
                self.collection, query=vector.tolist(), query_filter=flt, limit=top_k
            ).points
        except (ResponseHandlingException, ConnectionError) as exc:
            raise StoreUnavailable(f"qdrant: {exc}") from exc
        return [Hit(chunk_id=str(p.id), score=float(p.score)) for p in result]

    def ping(self) -> None:
        try:
            self.client.get_collections()
        except (ResponseHandlingException, ConnectionError) as exc:
            raise StoreUnavailable(f"qdrant: {exc}") from exc
