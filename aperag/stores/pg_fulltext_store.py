"""Full-text search in PostgreSQL ranked by BM25, from per-collection term statistics kept at ingestion.

PostgreSQL's own ranking (`ts_rank_cd`) has no IDF and no length normalisation: on real text a query
word found in half the collection counts as much as an identifier found in one chunk
(docs/benchmarks.md). So this store keeps its own inverted index in four tables (created by Alembic
revision 0003), written in the same transaction as the chunk:

- `fts_chunks`: one row per chunk (a bigint number, its length in terms);
- `fts_terms`: per collection and term, the document frequency `df` (chunks containing it);
- `fts_postings`: per term and chunk, the term frequency `tf` (and the chunk length, so scoring needs
  no join);
- `fts_collections`: per collection, the chunk count and total length (for IDF and the average length).

Scoring is Okapi BM25 (k1 = 1.2, b = 0.75, Lucene's IDF `ln(1 + (N - df + 0.5) / (df + 0.5))`).
Terms come from `aperag.stores.lexical` (stemming, identifiers, CJK bigrams).

Query cost is bounded, and the ranking exact whenever that is cheap to guarantee:

1. up to EXHAUSTIVE_POSTINGS postings for all query terms together: one aggregate over all of them;
2. otherwise MaxScore (Turtle & Flood 1995): a term adds at most `idf * (k1 + 1)` to a chunk. The
   chunks containing the rarest terms (up to POSTINGS_BUDGET postings) are scored with *all* query
   terms; if the k-th best score is above the most the remaining common terms could add together,
   no other chunk can enter the top k: exact, and the long posting lists were never scanned;
3. otherwise (every term is common, e.g. a question of everyday words in a large collection) each
   term contributes only its POSTINGS_PER_TERM highest-impact postings (highest term frequency,
   shortest chunk first), read in that order from an index; the best RESCORE_POOL chunks of that
   partial sum are then scored with every term. The order among candidates is exact BM25; which
   chunks become candidates is the (bounded) approximation.

Compatibility with the previous release (docs/app.md, "Full-text tables across releases"): every write
also goes, in the same transaction, to the tsvector table `fulltext_chunks` that release reads and
writes, so its pods keep finding every document during a rollout and after a rollback. Rows its pods
write there are queued in `fts_pending` by a trigger and indexed by `sync` (run by the reconciler and
by `migrate upgrade`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Connection, text

from aperag.stores import FulltextHits, Hit, IndexedChunk
from aperag.stores.lexical import analyze, query_terms
from aperag.stores.pg_connection import store_transaction

K1 = 1.2
B = 0.75
# Up to this many postings in all, a query is scored exhaustively (one aggregate, exact).
EXHAUSTIVE_POSTINGS = 20_000
# Postings of the rarest terms whose chunks MaxScore scores with all terms.
POSTINGS_BUDGET = 5_000
# Otherwise each term contributes its this-many highest-impact postings (bounded cost).
POSTINGS_PER_TERM = 4_000
# ... and the best this-many chunks of that partial sum are scored again with all terms.
RESCORE_POOL = 200
# The tsvector table of the previous release: written alongside the BM25 tables until the contract
# release drops it (docs/app.md).
LEGACY_TABLE = "fulltext_chunks"
# Chunk ids written to LEGACY_TABLE by code that does not maintain the BM25 tables (filled by a trigger).
PENDING_TABLE = "fts_pending"
# Set for the transaction by this store's writes: the trigger then does not queue them.
DUAL_WRITE_SETTING = "aperag.fts_dual_write"
# Transaction-level advisory lock ("ftsmig" in ASCII): writes take it shared, `sync` alone, so a chunk
# being indexed from the queue is never written by this release at the same time.
_SYNC_LOCK = 0x6674736D6967
# `sync` indexes the queue in transactions of this many chunks, at most SYNC_MAX_BATCHES per call.
SYNC_BATCH = 500
SYNC_MAX_BATCHES = 200
# Rows read at a time from LEGACY_TABLE when the upgrade indexes it (it may not fit in memory).
BACKFILL_BATCH = 1000


@dataclass(frozen=True)
class _Term:
    id: int
    df: int
    idf: float

    @property
    def max_score(self) -> float:
        return self.idf * (K1 + 1)


def idf(chunks: int, df: int) -> float:
    return math.log(1.0 + (chunks - df + 0.5) / (df + 0.5))


def insert_chunks(conn: Connection, chunks: list[IndexedChunk]) -> None:
    """Add chunks (not yet in the index) to the BM25 tables and their statistics."""
    if not chunks:
        return
    freqs = [Counter(analyze(c.text)) for c in chunks]
    lengths = [sum(f.values()) for f in freqs]
    numbers: dict[str, int] = dict(
        conn.execute(
            text(
                "INSERT INTO fts_chunks (chunk_id, document_id, collection_id, length) "
                "SELECT * FROM unnest(CAST(:c AS varchar[]), CAST(:d AS varchar[]), CAST(:col AS varchar[]),"
                " CAST(:n AS integer[])) RETURNING chunk_id, id"
            ),
            {
                "c": [c.chunk_id for c in chunks],
                "d": [c.document_id for c in chunks],
                "col": [c.collection_id for c in chunks],
                "n": lengths,
            },
        ).all()
    )
    by_collection: dict[str, list[int]] = defaultdict(list)
    for i, chunk in enumerate(chunks):
        by_collection[chunk.collection_id].append(i)
    for collection_id in sorted(by_collection):
        members = by_collection[collection_id]
        df: Counter[str] = Counter()
        for i in members:
            df.update(freqs[i].keys())
        terms = sorted(df)
        # Sorted, so concurrent writers lock the rows of shared terms in the same order.
        term_ids: dict[str, int] = dict(
            conn.execute(
                text(
                    "INSERT INTO fts_terms (collection_id, term, df) "
                    "SELECT :col, t, n FROM unnest(CAST(:t AS text[]), CAST(:n AS integer[])) AS u(t, n) "
                    "ORDER BY t "
                    "ON CONFLICT (collection_id, term) DO UPDATE SET df = fts_terms.df + EXCLUDED.df "
                    "RETURNING term, id"
                ),
                {"col": collection_id, "t": terms, "n": [df[t] for t in terms]},
            ).all()
        )
        posting_terms: list[int] = []
        posting_chunks: list[int] = []
        posting_tf: list[int] = []
        posting_len: list[int] = []
        for i in members:
            for term, tf in freqs[i].items():
                posting_terms.append(term_ids[term])
                posting_chunks.append(numbers[chunks[i].chunk_id])
                posting_tf.append(tf)
                posting_len.append(lengths[i])
        conn.execute(
            text(
                "INSERT INTO fts_postings (term_id, chunk_no, tf, length) "
                "SELECT * FROM unnest(CAST(:t AS bigint[]), CAST(:c AS bigint[]), CAST(:f AS integer[]),"
                " CAST(:n AS integer[]))"
            ),
            {"t": posting_terms, "c": posting_chunks, "f": posting_tf, "n": posting_len},
        )
        conn.execute(
            text(
                "INSERT INTO fts_collections (collection_id, chunks, total_length) VALUES (:col, :n, :len) "
                "ON CONFLICT (collection_id) DO UPDATE SET chunks = fts_collections.chunks + EXCLUDED.chunks,"
                " total_length = fts_collections.total_length + EXCLUDED.total_length"
            ),
            {"col": collection_id, "n": len(members), "len": sum(lengths[i] for i in members)},
        )


def delete_chunks_where(conn: Connection, condition: str, value: object) -> None:
    """Delete the chunks matching `condition` on fts_chunks and take them out of the statistics."""
    gone = conn.execute(
        text(f"DELETE FROM fts_chunks WHERE {condition} RETURNING id, collection_id, length"), {"v": value}
    ).all()
    if not gone:
        return
    removed_terms = Counter(
        row[0]
        for row in conn.execute(
            text("DELETE FROM fts_postings WHERE chunk_no = ANY(:c) RETURNING term_id"),
            {"c": [row[0] for row in gone]},
        )
    )
    ids = list(removed_terms)
    # Lock in the order writers use (collection, term) so a concurrent insert cannot deadlock us.
    conn.execute(
        text("SELECT 1 FROM fts_terms WHERE id = ANY(:ids) ORDER BY collection_id, term FOR UPDATE"),
        {"ids": ids},
    )
    conn.execute(
        text(
            "UPDATE fts_terms SET df = fts_terms.df - u.n "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:n AS integer[])) AS u(id, n) WHERE fts_terms.id = u.id"
        ),
        {"ids": ids, "n": [removed_terms[i] for i in ids]},
    )
    conn.execute(text("DELETE FROM fts_terms WHERE id = ANY(:ids) AND df <= 0"), {"ids": ids})
    per_collection: dict[str, tuple[int, int]] = {}
    for _, collection_id, length in gone:
        n, total = per_collection.get(collection_id, (0, 0))
        per_collection[collection_id] = (n + 1, total + length)
    for collection_id in sorted(per_collection):
        n, total = per_collection[collection_id]
        conn.execute(
            text(
                "UPDATE fts_collections SET chunks = chunks - :n, total_length = total_length - :len "
                "WHERE collection_id = :col"
            ),
            {"col": collection_id, "n": n, "len": total},
        )


def _begin_write(conn: Connection) -> None:
    """This store's writes: the trigger on the tsvector table must not queue them (they write the BM25
    tables themselves), and they wait while `sync` indexes the queue."""
    conn.execute(
        text("SELECT set_config(:s, 'on', true), pg_advisory_xact_lock_shared(:k)"),
        {"s": DUAL_WRITE_SETTING, "k": _SYNC_LOCK},
    )


def write_legacy(conn: Connection, chunks: list[IndexedChunk]) -> None:
    """The chunks in the previous release's tsvector table, as it wrote them (its generated column
    computes the tsvector)."""
    conn.execute(
        text(
            f"INSERT INTO {LEGACY_TABLE} (chunk_id, document_id, collection_id, text) "
            "SELECT * FROM unnest(CAST(:c AS varchar[]), CAST(:d AS varchar[]), CAST(:col AS varchar[]),"
            " CAST(:t AS text[])) ON CONFLICT (chunk_id) DO UPDATE SET text = EXCLUDED.text"
        ),
        {
            "c": [c.chunk_id for c in chunks],
            "d": [c.document_id for c in chunks],
            "col": [c.collection_id for c in chunks],
            "t": [c.text for c in chunks],
        },
    )


def index_legacy_rows(conn: Connection) -> int:
    """Index into the BM25 tables every row of the tsvector table they do not hold yet; returns how
    many. Revision 0003 runs it in the migration's transaction (the upgrade from the previous release)."""
    # A server-side cursor: the table may not fit in memory. Its snapshot is taken once, so the rows
    # inserted meanwhile do not disturb it.
    result = conn.execute(
        text(
            f"SELECT l.chunk_id, l.document_id, l.collection_id, l.text FROM {LEGACY_TABLE} l"
            " WHERE NOT EXISTS (SELECT 1 FROM fts_chunks f WHERE f.chunk_id = l.chunk_id) ORDER BY l.chunk_id"
        ).execution_options(stream_results=True, max_row_buffer=BACKFILL_BATCH)
    )
    done = 0
    batch: list[IndexedChunk] = []
    for row in result:
        batch.append(IndexedChunk(row[0], row[1], row[2], row[3]))
        if len(batch) == BACKFILL_BATCH:
            insert_chunks(conn, batch)
            done += len(batch)
            batch = []
    insert_chunks(conn, batch)
    return done + len(batch)


class PgFulltextStore:
    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> AbstractContextManager[Connection]:
        return store_transaction(self.url, "postgres full-text")

    # -- schema -----------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """The tables are Alembic's (revision 0003); what is left for `migrate upgrade` is to index the
        rows the previous release's pods wrote to the tsvector table since (`sync`)."""
        self.sync()

    # -- writes -----------------------------------------------------------------------------------

    def upsert(self, chunks: list[IndexedChunk]) -> None:
        if not chunks:
            return
        with self._connect() as conn:
            _begin_write(conn)
            write_legacy(conn, chunks)
            # Writing a chunk id again replaces it (and its contribution to the statistics).
            delete_chunks_where(conn, "chunk_id = ANY(:v)", [c.chunk_id for c in chunks])
            insert_chunks(conn, chunks)

    def delete_document(self, document_id: str) -> None:
        with self._connect() as conn:
            _begin_write(conn)
            conn.execute(text(f"DELETE FROM {LEGACY_TABLE} WHERE document_id = :d"), {"d": document_id})
            delete_chunks_where(conn, "document_id = :v", document_id)

    def delete_collection(self, collection_id: str) -> None:
        with self._connect() as conn:
            _begin_write(conn)
            conn.execute(text(f"DELETE FROM {LEGACY_TABLE} WHERE collection_id = :c"), {"c": collection_id})
            conn.execute(
                text("DELETE FROM fts_postings WHERE term_id IN (SELECT id FROM fts_terms WHERE collection_id = :c)"),
                {"c": collection_id},
            )
            for table in ("fts_terms", "fts_chunks", "fts_collections"):
                conn.execute(text(f"DELETE FROM {table} WHERE collection_id = :c"), {"c": collection_id})

    def sync(self) -> int:
        """Index the chunks queued in `fts_pending` (written, changed or deleted in the tsvector table by
        the previous release's pods) as that table now has them; returns how many were brought up to
        date. Costs one query when the queue is empty."""
        done = 0
        for _ in range(SYNC_MAX_BATCHES):
            with self._connect() as conn:
                if not conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {PENDING_TABLE})")).scalar():
                    break
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SYNC_LOCK})
                ids = list(
                    conn.execute(
                        text(
                            f"DELETE FROM {PENDING_TABLE} WHERE chunk_id IN (SELECT chunk_id FROM {PENDING_TABLE}"
                            " ORDER BY chunk_id LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING chunk_id"
                        ),
                        {"n": SYNC_BATCH},
                    ).scalars()
                )
                if not ids:
                    break
                # A row that a previous-release transaction is changing right now is left alone and
                # queued again: reading its old version would index text (or a chunk) about to be gone,
                # and that write's trigger may already have found the chunk queued (ON CONFLICT DO
                # NOTHING on the row this transaction consumed), so nothing would queue it afterwards.
                # SKIP LOCKED, not a wait: those writers may be waiting for this transaction (the trigger's
                # insert into the queue), and waiting for them would deadlock.
                present = set(
                    conn.execute(
                        text(f"SELECT chunk_id FROM {LEGACY_TABLE} WHERE chunk_id = ANY(:ids)"), {"ids": ids}
                    ).scalars()
                )
                rows = conn.execute(
                    text(
                        f"SELECT chunk_id, document_id, collection_id, text FROM {LEGACY_TABLE}"
                        " WHERE chunk_id = ANY(:ids) ORDER BY chunk_id FOR SHARE SKIP LOCKED"
                    ),
                    {"ids": ids},
                ).all()
                busy = present - {r[0] for r in rows}
                if busy:
                    conn.execute(
                        text(f"INSERT INTO {PENDING_TABLE} (chunk_id) SELECT unnest(CAST(:ids AS text[]))"
                             " ON CONFLICT DO NOTHING"),
                        {"ids": sorted(busy)},
                    )  # fmt: skip
                settled = [i for i in ids if i not in busy]
                delete_chunks_where(conn, "chunk_id = ANY(:v)", settled)
                insert_chunks(conn, [IndexedChunk(r[0], r[1], r[2], r[3]) for r in rows])
                done += len(settled)
                if len(busy) == len(ids):
                    break  # only rows in flight: the next sync (the reconciler's next pass) takes them
        return done

    # -- search -----------------------------------------------------------------------------------

    def search(self, collection_id: str, query: str, top_k: int) -> FulltextHits:
        wanted = query_terms(query)
        if not wanted:
            return FulltextHits([], 0.0)
        with self._connect() as conn:
            # The collection's statistics and the query's terms in one round trip: one row per term
            # found, or one row with NULL term columns when none is.
            rows = conn.execute(
                text(
                    "SELECT s.chunks, s.total_length, t.id, t.df FROM fts_collections s"
                    " LEFT JOIN fts_terms t ON t.collection_id = s.collection_id AND t.term = ANY(:t) AND t.df > 0"
                    " WHERE s.collection_id = :c"
                ),
                {"c": collection_id, "t": wanted},
            ).all()
            if not rows or rows[0][0] <= 0:
                return FulltextHits([], 0.0)
            chunks, total_length = int(rows[0][0]), int(rows[0][1])
            terms = sorted(
                (_Term(int(r[2]), int(r[3]), idf(chunks, int(r[3]))) for r in rows if r[2] is not None),
                key=lambda t: t.df,
            )
            if not terms:
                return FulltextHits([], 0.0)
            avg_length = max(total_length / chunks, 1.0)
            hits = self._rank(conn, terms, avg_length, top_k)
        return FulltextHits(hits, sum(t.max_score for t in terms))

    def _rank(self, conn: Connection, terms: list[_Term], avg_length: float, top_k: int) -> list[Hit]:
        """Exact BM25 top k when that is cheap to prove; otherwise bounded cost (module docstring)."""
        if sum(t.df for t in terms) <= EXHAUSTIVE_POSTINGS:
            return self._aggregate(conn, terms, {t.id: t.df for t in terms}, avg_length, top_k)
        scanned = 0
        while scanned < len(terms) and sum(t.df for t in terms[: scanned + 1]) <= POSTINGS_BUDGET:
            scanned += 1
        if scanned:
            hits = self._score(conn, terms, terms[:scanned], avg_length, top_k)
            threshold = hits[-1].score if len(hits) >= top_k else 0.0
            if sum(t.max_score for t in terms[scanned:]) <= threshold:
                return hits  # MaxScore: no chunk without a scanned term can reach the top k
        limits = {t.id: min(t.df, POSTINGS_PER_TERM) for t in terms}
        return self._aggregate(conn, terms, limits, avg_length, top_k)

    def _aggregate(
        self, conn: Connection, terms: list[_Term], limits: dict[int, int], avg_length: float, top_k: int
    ) -> list[Hit]:
        """BM25 summed over each term's postings - all of them, or its `limits[term]` highest term
        frequencies (shortest chunks first among equals), read in that order from ix_fts_postings_impact.
        With truncated lists, the best RESCORE_POOL chunks of that partial sum are scored again with
        every term, so the final order among them is exact BM25."""
        truncated = any(limits[t.id] < t.df for t in terms)
        partial = (
            "SELECT p.chunk_no, sum(w.idf * p.tf * (:k1 + 1) / (p.tf + :k1 * (1 - :b + :b * p.length / :avg)))"
            " AS score FROM w CROSS JOIN LATERAL (SELECT chunk_no, tf, length FROM fts_postings"
            "  WHERE term_id = w.term_id ORDER BY tf DESC, length LIMIT w.lim) p"
            " GROUP BY p.chunk_no ORDER BY score DESC, p.chunk_no LIMIT :pool"
        )
        rescored = (
            "SELECT p.chunk_no, sum(w.idf * p.tf * (:k1 + 1) / (p.tf + :k1 * (1 - :b + :b * p.length / :avg)))"
            " AS score FROM pool JOIN fts_postings p ON p.chunk_no = pool.chunk_no AND p.term_id = ANY(:ids)"
            " JOIN w ON w.term_id = p.term_id GROUP BY p.chunk_no ORDER BY score DESC, p.chunk_no LIMIT :k"
        )
        rows = conn.execute(
            text(
                "WITH w AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:idf AS float8[]),"
                "  CAST(:lim AS integer[])) AS w(term_id, idf, lim)),"
                f" pool AS ({partial}),"
                f" top AS ({rescored if truncated else 'SELECT * FROM pool'})"
                " SELECT c.chunk_id, top.score FROM top JOIN fts_chunks c ON c.id = top.chunk_no"
                " ORDER BY top.score DESC, top.chunk_no"
            ),
            {
                "ids": [t.id for t in terms],
                "idf": [t.idf for t in terms],
                "lim": [limits[t.id] for t in terms],
                "k1": K1,
                "b": B,
                "avg": avg_length,
                "k": top_k,
                "pool": max(RESCORE_POOL, top_k) if truncated else top_k,
            },
        ).all()
        return [Hit(chunk_id=r[0], score=float(r[1])) for r in rows]

    def _score(
        self, conn: Connection, terms: list[_Term], scanned: Iterable[_Term], avg_length: float, top_k: int
    ) -> list[Hit]:
        """BM25 with all `terms` of the chunks containing at least one `scanned` term."""
        rows = conn.execute(
            text(
                "WITH w AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:idf AS float8[])) AS w(term_id, idf)),"
                " candidates AS (SELECT DISTINCT chunk_no FROM fts_postings WHERE term_id = ANY(:scanned)),"
                " top AS ("
                "  SELECT p.chunk_no, sum(w.idf * p.tf * (:k1 + 1) / (p.tf + :k1 * (1 - :b + :b * p.length / :avg)))"
                "   AS score"
                "  FROM candidates JOIN fts_postings p ON p.chunk_no = candidates.chunk_no AND p.term_id = ANY(:ids)"
                "  JOIN w ON w.term_id = p.term_id GROUP BY p.chunk_no ORDER BY score DESC, p.chunk_no LIMIT :k)"
                " SELECT c.chunk_id, top.score FROM top JOIN fts_chunks c ON c.id = top.chunk_no"
                " ORDER BY top.score DESC, top.chunk_no"
            ),
            {
                "ids": [t.id for t in terms],
                "idf": [t.idf for t in terms],
                "scanned": [t.id for t in scanned],
                "k1": K1,
                "b": B,
                "avg": avg_length,
                "k": top_k,
            },
        ).all()
        return [Hit(chunk_id=r[0], score=float(r[1])) for r in rows]

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(text("SELECT 1 FROM fts_collections LIMIT 1"))
