"""The previous release's PostgreSQL full-text store (revision 0002, before the BM25 tables), kept
verbatim (aperag/stores/pg_fulltext_store.py at commit c9b01b8) so the compatibility tests can play
its pods: what they write to `fulltext_chunks` during a rollout, and how they query it after a
rollback. Only the module docstring and the class name differ. Do not "fix" it: it is a record.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, text

from aperag.stores import Hit, IndexedChunk
from aperag.stores.pg_connection import store_transaction

_WORD = re.compile(r"[\w]+", re.UNICODE)


def or_query(query: str) -> str:
    """Natural-language query -> an OR tsquery source.

    websearch_to_tsquery ANDs every word, so a question rarely matches any chunk. OR-ing the words
    and ranking by cover density finds chunks with most of them first.
    """
    words = [w for w in _WORD.findall(query.lower()) if len(w) > 1]
    return " | ".join(dict.fromkeys(words))


# A query term found in at least this many chunks of a collection is left out of the ranking
# (see PgFulltextStore._selective_query).
COMMON_TERM_CHUNKS = 500


def tsquery_lexeme(lexeme: str) -> str:
    """A normalised lexeme as a tsquery operand (quoted: taken verbatim, not parsed again)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


class PreviousPgFulltextStore:
    def __init__(self, url: str, language: str = "english") -> None:
        self.url = url
        self.language = language

    def _connect(self) -> AbstractContextManager[Connection]:
        return store_transaction(self.url, "postgres full-text")

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
        if not or_query(query):
            return []
        with self._connect() as conn:
            # The query's lexemes come from the same parser and dictionary as the indexed text, so they
            # always line up (hyphenated words, identifiers with underscores, dotted names...).
            lexemes = conn.execute(
                text(f"SELECT tsvector_to_array(to_tsvector('{self.language}', :q))"), {"q": query}
            ).scalar_one()
            if not lexemes:
                return []
            source = self._selective_query(conn, collection_id, list(lexemes))
            rows = self._rank(conn, collection_id, source, top_k) if source else []
        return [Hit(chunk_id=r[0], score=float(r[1])) for r in rows]

    def _selective_query(self, conn: Connection, collection_id: str, lexemes: list[str]) -> str:
        """The OR tsquery of the query's lexemes, without those found in COMMON_TERM_CHUNKS or more
        chunks of the collection.

        ts_rank_cd has no IDF, so such a term adds little but noise to the ranking, and an OR query
        containing it makes PostgreSQL rank every chunk that has it (a quarter of a 100k-chunk
        collection for a word like "data"): that made full-text latency grow linearly with the
        collection (p95 over 1 s at 100k chunks, docs/benchmarks.md). Each count stops at the
        cap, so it costs at most COMMON_TERM_CHUNKS row visits. The price: in a large collection a
        moderately common word (in 500+ chunks) no longer contributes to the full-text ranking; the
        vector side of hybrid search still sees it.
        If every matching term is that common, they are AND-ed instead (a small, precise match set).
        Below the cap nothing is dropped, so small collections rank exactly as with a plain OR.
        """
        operands = [tsquery_lexeme(x) for x in lexemes]
        if len(operands) == 1:
            return operands[0]
        # One statement, one capped count per term (each planned with its own lexeme).
        counts = ", ".join(
            f"(SELECT count(*) FROM (SELECT 1 FROM fulltext_chunks WHERE collection_id = :c "
            f"AND tsv @@ CAST(:t{i} AS tsquery) LIMIT :cap) s{i})"
            for i in range(len(operands))
        )
        params: dict[str, object] = {"c": collection_id, "cap": COMMON_TERM_CHUNKS}
        params.update({f"t{i}": op for i, op in enumerate(operands)})
        row = conn.execute(text(f"SELECT {counts}"), params).one()
        rare = [op for op, n in zip(operands, row, strict=True) if 0 < n < COMMON_TERM_CHUNKS]
        common = [op for op, n in zip(operands, row, strict=True) if n >= COMMON_TERM_CHUNKS]
        if rare:
            return " | ".join(rare)
        return " & ".join(common)

    def _rank(self, conn: Connection, collection_id: str, source: str, top_k: int) -> list[Any]:
        # Cover density ties often (e.g. every chunk holding one query word once); ts_rank, a
        # frequency-based score, breaks them, then the text itself (not the random chunk id), so equal
        # inputs always rank the same.
        return list(
            conn.execute(
                text(
                    "SELECT chunk_id, ts_rank_cd(tsv, q) AS rank, ts_rank(tsv, q) AS freq "
                    "FROM fulltext_chunks, CAST(:q AS tsquery) AS q "
                    "WHERE collection_id = :c AND tsv @@ q ORDER BY rank DESC, freq DESC, md5(text), chunk_id LIMIT :k"
                ),
                {"q": source, "c": collection_id, "k": top_k},
            ).all()
        )

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(text("SELECT 1 FROM fulltext_chunks LIMIT 1"))
