"""Vectors in PostgreSQL with pgvector (HNSW, cosine)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, text

from aperag.stores import Hit, IndexedChunk
from aperag.stores.pg_connection import store_transaction


def vector_literal(vector: npt.NDArray[np.float32]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


class PgVectorStore:
    def __init__(self, url: str, dimension: int) -> None:
        self.url = url
        self.dimension = dimension

    def _connect(self) -> AbstractContextManager[Connection]:
        return store_transaction(self.url, "pgvector")

    def ensure_schema(self) -> None:
        with self._connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS vector_chunks ("
                    f" chunk_id varchar(36) PRIMARY KEY, document_id varchar(32) NOT NULL,"
                    f" collection_id varchar(32) NOT NULL, embedding vector({int(self.dimension)}) NOT NULL)"
                )
            )
            conn.execute(
                text("CREATE INDEX IF NOT EXISTS ix_vector_chunks_document ON vector_chunks (document_id)")
            )
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_vector_chunks_collection ON vector_chunks (collection_id)"
                )
            )
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_vector_chunks_hnsw ON vector_chunks "
                    "USING hnsw (embedding vector_cosine_ops)"
                )
            )

    def upsert(self, chunks: list[IndexedChunk], vectors: npt.NDArray[np.float32]) -> None:
        if not chunks:
            return
        rows = [
            {"c": ch.chunk_id, "d": ch.document_id, "col": ch.collection_id, "v": vector_literal(vec)}
            for ch, vec in zip(chunks, vectors, strict=True)
        ]
        with self._connect() as conn:
            conn.execute(
                text(
                    "INSERT INTO vector_chunks (chunk_id, document_id, collection_id, embedding) "
                    "VALUES (:c, :d, :col, CAST(:v AS vector)) "
                    "ON CONFLICT (chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding"
                ),
                rows,
            )

    def delete_document(self, document_id: str) -> None:
        with self._connect() as conn:
            conn.execute(text("DELETE FROM vector_chunks WHERE document_id = :d"), {"d": document_id})

    def delete_collection(self, collection_id: str) -> None:
        with self._connect() as conn:
            conn.execute(text("DELETE FROM vector_chunks WHERE collection_id = :c"), {"c": collection_id})

    def search(self, collection_id: str, vector: npt.NDArray[np.float32], top_k: int) -> list[Hit]:
        with self._connect() as conn:
            # The collection filter is applied after the HNSW scan; iterative scan keeps going until
            # enough rows of this collection are found instead of returning too few.
            # Both settings in one round trip, local to the transaction (which a search shares).
            conn.execute(
                text(
                    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                    " set_config('hnsw.ef_search', :ef, true)"
                ),
                {"ef": str(max(40, top_k * 2))},
            )
            rows = conn.execute(
                text(
                    "SELECT chunk_id, embedding <=> CAST(:q AS vector) AS distance FROM vector_chunks "
                    "WHERE collection_id = :c ORDER BY distance LIMIT :k"
                ),
                {"q": vector_literal(vector), "c": collection_id, "k": top_k},
            ).all()
        # relaxed_order may return rows slightly out of order; re-sort the final page.
        hits = [Hit(chunk_id=r[0], score=1.0 - float(r[1])) for r in rows]
        return sorted(hits, key=lambda h: -h.score)

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(text("SELECT 1 FROM vector_chunks LIMIT 1"))
