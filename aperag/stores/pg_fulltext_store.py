"""Full-text search in PostgreSQL (tsvector + GIN, ts_rank_cd)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from aperag.db.session import get_engine
from aperag.stores import Hit, IndexedChunk, StoreUnavailable

_WORD = re.compile(r"[\w]+", re.UNICODE)


def or_query(query: str) -> str:
    """Natural-language query -> an OR tsquery source.

    websearch_to_tsquery ANDs every word, so a question rarely matches any chunk. OR-ing the words
    and ranking by cover density finds chunks with most of them first.
    """
    words = [w for w in _WORD.findall(query.lower()) if len(w) > 1]
    return " | ".join(dict.fromkeys(words))


class PgFulltextStore:
    def __init__(self, url: str, language: str = "english") -> None:
        self.url = url
        self.language = language

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with get_engine(self.url).begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailable(f"postgres full-text: {exc.orig}") from exc

    def ensure_schema(self) -> None:
        with self._connect() as conn:
            conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS fulltext_chunks ("
                    " chunk_id varchar(36) PRIMARY KEY, document_id varchar(32) NOT NULL,"
                    " collection_id varchar(32) NOT NULL, text text NOT NULL,"
                    f" tsv tsvector GENERATED ALWAYS AS (to_tsvector('{self.language}', text)) STORED)"
                )
            )
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_document ON fulltext_chunks (document_id)"
                )
            )
            conn.execute(
                text("CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_tsv ON fulltext_chunks USING gin (tsv)")
            )
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_fulltext_chunks_collection "
                    "ON fulltext_chunks (collection_id)"
                )
            )

    def upsert(self, chunks: list[IndexedChunk]) -> None:
        if not chunks:
            return
        rows = [{"c": c.chunk_id, "d": c.document_id, "col": c.collection_id, "t": c.text} for c in chunks]
        with self._connect() as conn:
            conn.execute(
                text(
                    "INSERT INTO fulltext_chunks (chunk_id, document_id, collection_id, text) "
                    "VALUES (:c, :d, :col, :t) ON CONFLICT (chunk_id) DO UPDATE SET text = EXCLUDED.text"
                ),
                rows,
            )

    def delete_document(self, document_id: str) -> None:
        with self._connect() as conn:
            conn.execute(text("DELETE FROM fulltext_chunks WHERE document_id = :d"), {"d": document_id})

    def delete_collection(self, collection_id: str) -> None:
        with self._connect() as conn:
            conn.execute(text("DELETE FROM fulltext_chunks WHERE collection_id = :c"), {"c": collection_id})

    def search(self, collection_id: str, query: str, top_k: int) -> list[Hit]:
        source = or_query(query)
        if not source:
            return []
        with self._connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT chunk_id, ts_rank_cd(tsv, q) AS rank "
                    f"FROM fulltext_chunks, to_tsquery('{self.language}', :q) AS q "
                    f"WHERE collection_id = :c AND tsv @@ q ORDER BY rank DESC, chunk_id LIMIT :k"
                ),
                {"q": source, "c": collection_id, "k": top_k},
            ).all()
        return [Hit(chunk_id=r[0], score=float(r[1])) for r in rows]

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(text("SELECT 1 FROM fulltext_chunks LIMIT 1"))
