"""The full-text tables across releases, against real PostgreSQL.

The previous release is revision 0002 with the tsvector table `fulltext_chunks`, played by its own store
code (tests/app/previous_release.py); this release is revision 0003, whose BM25 tables are written in
the same transaction as `fulltext_chunks`, plus 0004 (the knowledge graph: new tables and nullable or
defaulted columns only, so nothing here changes with it; its own up/down test is in test_graph.py).
Covered: the upgrade with the previous release's data; a
rollout, during which the previous release's pods keep writing; documents this release indexes, as the
previous release queries them; the rollback by `migrate downgrade 0002` with this release's code, then
the upgrade again; both releases writing at once while the reconciler indexes the queue; a database
the unreleased code between the two releases had touched.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from aperag import migrate, services
from aperag.context import AppContext
from aperag.db.models import chunk_id, new_id
from aperag.ingest.pipeline import index_document, reconcile
from aperag.search import search
from aperag.stores import FulltextStore, IndexedChunk
from aperag.stores.pg_fulltext_store import PgFulltextStore
from aperag.stores.pgvector_store import PgVectorStore
from tests.app.conftest import settings_from, wait_until
from tests.app.corpus import DOCS, QUERIES
from tests.app.migration_fixtures import failing_release
from tests.app.previous_release import PreviousPgFulltextStore

PREVIOUS = "0002"
# The BM25 tables came with 0003; the release's head may be a later revision (0005: chat history), which
# an upgrade from the previous release also applies and a downgrade to it also undoes.
BM25 = "0003"
HEAD = migrate.heads()[0]
# Words no other chunk holds: each chunk of the test documents carries one, so a query for it must
# return exactly that chunk first.
WORDS = (
    "axolotl", "bandicoot", "capybara", "dugong", "echidna", "fossa", "gharial", "hoatzin", "ibex", "jerboa",
    "kinkajou", "lemming", "margay", "numbat", "okapi", "pangolin", "quetzal", "serval", "tapir", "uakari",
    "vicuna", "wombat", "xerus", "yapok", "zorilla", "aardwolf", "binturong", "caracal", "dingo", "eland",
)
FILLER = [
    "Shield volcanoes have gentle slopes built from fluid basalt flows.",
    "A long cold fermentation develops a tangy flavour and an open crumb.",
    "The Queen's Gambit offers a pawn to gain control of the centre.",
]

Rows = set[tuple[Any, ...]]


def _sql(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """The migration Job's command, as a process; returns its report (the last line of stdout)."""
    result = subprocess.run(
        [sys.executable, "-m", "aperag.cli", *args],
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def previous_release_database(app_env_factory: Callable[..., dict[str, str]]) -> dict[str, str]:
    """A database as the previous release's `migrate upgrade` leaves it: its revisions, then its
    store schemas."""
    env = app_env_factory(migrate=False)
    settings = settings_from(env)
    migrate.upgrade(settings.database_url, PREVIOUS)
    PgVectorStore(settings.database_url, settings.embedding_dimension).ensure_schema()
    PreviousPgFulltextStore(settings.database_url).ensure_schema()
    return env


def upgrade_in_process(env: dict[str, str]) -> None:
    """What `aperag migrate upgrade` does (the CLI is run as a process where the report matters)."""
    settings = settings_from(env)
    migrate.upgrade(settings.database_url)
    AppContext(settings=settings).ensure_store_schemas()


@dataclass
class Doc:
    id: str
    collection_id: str
    chunks: list[IndexedChunk]

    def word(self, ordinal: int) -> str:
        return self.chunks[ordinal].text.split()[1]


class Writer:
    """Writes documents as a release does: metadata rows (documents ready, chunks) and full-text rows
    through that release's store. Both releases share the metadata schema (revisions 0001-0002)."""

    def __init__(self, url: str, store: FulltextStore | PreviousPgFulltextStore, words: Iterable[str]) -> None:
        self.url = url
        self.store = store
        self.words = iter(words)

    def collection(self, name: str) -> str:
        collection_id = new_id()
        _sql(self.url, "INSERT INTO collections (id, name) VALUES (:i, :n)", {"i": collection_id, "n": name})
        return collection_id

    def document(self, collection_id: str, chunks: int = 2) -> Doc:
        doc_id = new_id()
        texts = [f"The {next(self.words)} appears here. {FILLER[i % len(FILLER)]}" for i in range(chunks)]
        indexed = [IndexedChunk(chunk_id(doc_id, i), doc_id, collection_id, t) for i, t in enumerate(texts)]
        _sql(
            self.url,
            "INSERT INTO documents (id, collection_id, filename, content_type, content_hash, size_bytes,"
            " object_key, status, chunk_count) VALUES (:i, :c, :f, 'text/plain', :i, 1, :i, 'ready', :n)",
            {"i": doc_id, "c": collection_id, "f": f"{doc_id}.txt", "n": chunks},
        )
        for ordinal, chunk in enumerate(indexed):
            _sql(
                self.url,
                "INSERT INTO chunks (id, document_id, collection_id, ordinal, text, token_count, start_char,"
                " end_char) VALUES (:i, :d, :c, :o, :t, 1, 0, 1)",
                {"i": chunk.chunk_id, "d": doc_id, "c": collection_id, "o": ordinal, "t": chunk.text},
            )
        self.store.upsert(indexed)
        return Doc(doc_id, collection_id, indexed)

    def delete_document(self, doc: Doc) -> None:
        self.store.delete_document(doc.id)
        _sql(self.url, "DELETE FROM documents WHERE id = :i", {"i": doc.id})

    def rewrite_chunk(self, doc: Doc, ordinal: int) -> Doc:
        """The same chunk id with another text (a re-index under other chunking settings)."""
        old = doc.chunks[ordinal]
        new = IndexedChunk(old.chunk_id, old.document_id, old.collection_id, f"The {next(self.words)} replaced it.")
        _sql(self.url, "UPDATE chunks SET text = :t WHERE id = :i", {"t": new.text, "i": new.chunk_id})
        self.store.upsert([new])
        chunks = list(doc.chunks)
        chunks[ordinal] = new
        return Doc(doc.id, doc.collection_id, chunks)


def legacy_rows(url: str) -> Rows:
    return set(_sql(url, "SELECT chunk_id, document_id, collection_id, text FROM fulltext_chunks"))


def chunk_rows(url: str) -> Rows:
    """Every chunk of every document, as the metadata tables hold it."""
    return set(_sql(url, "SELECT id, document_id, collection_id, text FROM chunks"))


def bm25_content(url: str) -> dict[str, Rows]:
    """The BM25 index without its surrogate keys: comparable between two databases."""
    return {
        "collections": set(
            _sql(url, "SELECT collection_id, chunks, total_length FROM fts_collections WHERE chunks > 0")
        ),
        "terms": set(_sql(url, "SELECT collection_id, term, df FROM fts_terms")),
        "chunks": set(_sql(url, "SELECT chunk_id, document_id, collection_id, length FROM fts_chunks")),
        "postings": set(
            _sql(
                url,
                "SELECT c.chunk_id, t.term, p.tf, p.length FROM fts_postings p"
                " JOIN fts_chunks c ON c.id = p.chunk_no JOIN fts_terms t ON t.id = p.term_id",
            )
        ),
    }


def fresh_bm25(app_env_factory: Callable[..., dict[str, str]], rows: Rows) -> dict[str, Rows]:
    """The BM25 index this release builds from scratch for `rows` (chunk, document, collection, text)."""
    url = settings_from(app_env_factory()).database_url
    PgFulltextStore(url).upsert([IndexedChunk(*row) for row in sorted(rows)])
    return bm25_content(url)


def pending(url: str) -> int:
    return int(_sql(url, "SELECT count(*) FROM fts_pending")[0][0])


def schema_fingerprint(url: str) -> dict[str, Rows]:
    """Everything the schema consists of in the public schema, by name: tables and their columns,
    indexes, constraints, triggers, functions, sequences, and the recorded revision."""
    return {
        "columns": set(
            _sql(
                url,
                "SELECT table_name, column_name, data_type, is_nullable, column_default, generation_expression"
                " FROM information_schema.columns WHERE table_schema = 'public'",
            )
        ),
        "indexes": set(_sql(url, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")),
        "constraints": set(
            _sql(
                url,
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = 'public'::regnamespace",
            )
        ),
        "triggers": set(_sql(url, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal")),
        "functions": set(_sql(url, "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")),
        "sequences": set(_sql(url, "SELECT sequence_name FROM information_schema.sequences")),
        "revision": set(_sql(url, "SELECT version_num FROM alembic_version")),
    }


def assert_found_by_this_release(ctx: AppContext, docs: Iterable[Doc]) -> None:
    """Each chunk comes first, through the app's search (ready documents only), for its own word."""
    for doc in docs:
        for ordinal, chunk in enumerate(doc.chunks):
            results = search(ctx, doc.collection_id, doc.word(ordinal), "fulltext", 3).results
            assert results and results[0].chunk_id == chunk.chunk_id, (doc.word(ordinal), results)


def assert_found_by_the_previous_release(url: str, docs: Iterable[Doc]) -> None:
    previous = PreviousPgFulltextStore(url)
    for doc in docs:
        for ordinal, chunk in enumerate(doc.chunks):
            hits = previous.search(doc.collection_id, doc.word(ordinal), 3)
            assert [h.chunk_id for h in hits] == [chunk.chunk_id], doc.word(ordinal)


def not_found(url: str, collection_id: str, word: str) -> bool:
    """Neither release's full-text store returns anything for `word`."""
    return (
        PgFulltextStore(url).search(collection_id, word, 3).hits == []
        and PreviousPgFulltextStore(url).search(collection_id, word, 3) == []
    )


# -- upgrade -------------------------------------------------------------------------------------------


def test_upgrade_keeps_every_document_of_the_previous_release_searchable(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    old = Writer(url, PreviousPgFulltextStore(url), WORDS)
    kb, other = old.collection("kb"), old.collection("other")
    docs = [old.document(kb), old.document(kb, chunks=3), old.document(other)]
    before = legacy_rows(url)

    report = _cli(env, "migrate", "upgrade")
    assert (report["before"], report["current"], report["changed"]) == ([PREVIOUS], [HEAD], True)
    # Expanded, not contracted: the previous release's table and its rows are all still there, so its
    # pods keep answering during the rollout.
    assert legacy_rows(url) == before and len(before) == 2 + 3 + 2
    assert_found_by_the_previous_release(url, docs)
    # ... and this release finds every one of them, from BM25 tables equal to indexing them afresh.
    assert_found_by_this_release(AppContext(settings=settings_from(env)), docs)
    assert bm25_content(url) == fresh_bm25(app_env_factory, before)
    assert pending(url) == 0


def test_an_upgrade_that_fails_after_0003_leaves_the_previous_release_untouched(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """The backfill is part of the run's one transaction: a later revision of the same run failing
    undoes it with everything else (nothing for the operator to downgrade)."""
    expected_schema = schema_fingerprint(settings_from(previous_release_database(app_env_factory)).database_url)
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    old = Writer(url, PreviousPgFulltextStore(url), WORDS)
    docs = [old.document(old.collection("kb"))]
    before = legacy_rows(url)
    result = subprocess.run(
        [sys.executable, "-m", "aperag.cli", "migrate", "upgrade"],
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env,
             migrate.EXTRA_DIR_ENV: str(failing_release(tmp_path / "extra"))},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1 and report["reason"] == "MigrationFailed"
    assert (report["before"], report["current"], report["changed"]) == ([PREVIOUS], [PREVIOUS], False)
    assert schema_fingerprint(url) == expected_schema and legacy_rows(url) == before
    assert_found_by_the_previous_release(url, docs)


# -- rollout: the previous release's pods keep writing ---------------------------------------------


def test_what_the_previous_release_writes_during_the_rollout_is_indexed_by_the_reconciler(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    old = Writer(url, PreviousPgFulltextStore(url), WORDS)
    kb, other = old.collection("kb"), old.collection("other")
    kept, deleted, rewritten, elsewhere = old.document(kb), old.document(kb), old.document(kb), old.document(other)
    upgrade_in_process(env)
    ctx = AppContext(settings=settings_from(env))

    # An old pod, after the migration: a new document, a deletion, a chunk re-written with another text,
    # a whole collection deleted.
    added = old.document(kb)
    old.delete_document(deleted)
    replaced_word = rewritten.word(1)
    rewritten = old.rewrite_chunk(rewritten, 1)
    old.store.delete_collection(other)
    # This release has not caught up yet: it misses the new document and still has the deleted ones.
    assert PgFulltextStore(url).search(kb, added.word(0), 3).hits == []
    assert PgFulltextStore(url).search(other, elsewhere.word(0), 3).hits
    assert pending(url) == 2 + 2 + 1 + 2  # the chunk ids touched, each once

    assert reconcile(ctx)["fulltext_synced"] == 7
    assert_found_by_this_release(ctx, [kept, added, rewritten])
    assert not_found(url, kb, deleted.word(0)) and not_found(url, kb, replaced_word)
    assert not_found(url, other, elsewhere.word(0))
    assert bm25_content(url) == fresh_bm25(app_env_factory, legacy_rows(url))
    assert pending(url) == 0 and reconcile(ctx)["fulltext_synced"] == 0
    # This release's own writes are never queued: they write both tables themselves.
    new = Writer(url, PgFulltextStore(url), WORDS[20:])
    new.delete_document(new.rewrite_chunk(new.document(kb), 0))
    assert pending(url) == 0


def test_documents_this_release_indexes_are_found_by_the_previous_release(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    """Through the real pipeline: the rows of `fulltext_chunks` are what the previous release's query
    needs (its generated tsvector), for new, re-indexed and deleted documents."""
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    upgrade_in_process(env)
    ctx = AppContext(settings=settings_from(env))
    services.create_collection(ctx, "kb")
    collection = services.get_collection(ctx, "kb")
    ids = {}
    for name, body in DOCS.items():
        doc = services.upload_document(ctx, "kb", name, None, body.encode()).document
        assert index_document(ctx, doc.id, final_attempt=False) == "ready"
        ids[name] = doc.id
    services.reindex_document(ctx, ids["chess.html"])
    assert index_document(ctx, ids["chess.html"], final_attempt=False) == "ready"
    previous = PreviousPgFulltextStore(url)

    def top_document(query: str) -> str | None:
        hits = previous.search(collection.id, query, 3)
        if not hits:
            return None
        rows = _sql(url, "SELECT document_id FROM chunks WHERE id = :i", {"i": hits[0].chunk_id})
        return str(rows[0][0]) if rows else None

    for query, expected in QUERIES:
        assert top_document(query) == ids[expected], query
    assert legacy_rows(url) == chunk_rows(url)  # one row per chunk, none left over by the re-index
    services.delete_document(ctx, "kb", ids["volcanoes.md"])
    assert top_document("magma lava basalt") is None
    assert legacy_rows(url) == chunk_rows(url) and pending(url) == 0


# -- rollback ------------------------------------------------------------------------------------------


def test_downgrade_with_this_release_gives_the_previous_release_its_schema_and_every_document(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    expected = schema_fingerprint(settings_from(previous_release_database(app_env_factory)).database_url)
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    old = Writer(url, PreviousPgFulltextStore(url), WORDS)
    kb = old.collection("kb")
    docs = [old.document(kb), old.document(kb)]
    upgrade_in_process(env)
    new = Writer(url, PgFulltextStore(url), WORDS[10:])
    docs += [new.document(kb), new.document(kb, chunks=3)]
    docs[0] = new.rewrite_chunk(docs[0], 0)  # this release re-indexes an old document
    new.delete_document(docs.pop(1))
    docs.append(old.document(kb))  # an old pod writes during the rollout; not synced before the rollback

    report = _cli(env, "migrate", "downgrade", PREVIOUS)
    assert (report["before"], report["current"], report["changed"]) == ([HEAD], [PREVIOUS], True)
    # Exactly the schema the previous release's `migrate upgrade` creates, nothing more or less ...
    assert schema_fingerprint(url) == expected
    # ... with every document's chunks, whichever release wrote them, and nothing of the deleted one.
    assert legacy_rows(url) == chunk_rows(url) and len(chunk_rows(url)) == 2 + 2 + 3 + 2
    assert_found_by_the_previous_release(url, docs)

    # The previous release runs again (its writes go to fulltext_chunks only), then the upgrade is retried.
    docs.append(old.document(kb))
    report = _cli(env, "migrate", "upgrade")
    assert (report["before"], report["current"]) == ([PREVIOUS], [HEAD])
    assert_found_by_this_release(AppContext(settings=settings_from(env)), docs)
    assert bm25_content(url) == fresh_bm25(app_env_factory, legacy_rows(url))


# -- both releases at once -----------------------------------------------------------------------------


def test_a_write_of_the_previous_release_in_flight_during_the_migration_is_not_lost(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    """An old pod's transaction has written to `fulltext_chunks` but not committed when the migration
    starts: the migration waits for it (its locks on the table), so the backfill sees the row."""
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    old = Writer(url, PreviousPgFulltextStore(url), WORDS)
    kb = old.collection("kb")
    doc = old.document(kb)
    engine = create_engine(url)
    errors: list[BaseException] = []
    try:
        with engine.connect() as pod:
            pod.execute(
                text("UPDATE fulltext_chunks SET text = :t WHERE chunk_id = :i"),
                {"t": "The narwhal rewrote it.", "i": doc.chunks[0].chunk_id},
            )

            def run() -> None:
                try:
                    migrate.upgrade(url)
                except BaseException as exc:
                    errors.append(exc)

            migration = threading.Thread(target=run)
            migration.start()
            wait_until(
                lambda: bool(
                    _sql(
                        url,
                        "SELECT 1 FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    )
                ),
                60,
                "the migration waits for the old pod's transaction",
            )
            pod.commit()
            migration.join(timeout=300)
    finally:
        engine.dispose()
    assert not errors, errors
    assert [h.chunk_id for h in PgFulltextStore(url).search(kb, "narwhal", 3).hits] == [doc.chunks[0].chunk_id]
    assert bm25_content(url) == fresh_bm25(app_env_factory, legacy_rows(url))


def test_both_releases_writing_while_the_migration_and_the_reconciler_run_lose_nothing(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    """Old pods write before, during and after the migration; this release writes and indexes the queue
    at the same time. A document is written by one process at a time (the per-document advisory lock
    of ingestion), here by a Python lock per document; everything else is concurrent. Afterwards the
    BM25 tables must equal indexing `fulltext_chunks` afresh, and that table every document's chunks."""
    env = previous_release_database(app_env_factory)
    url = settings_from(env).database_url
    words = [f"{w}{i}" for i in range(40) for w in WORDS]
    old = Writer(url, PreviousPgFulltextStore(url), words[::2])
    new = Writer(url, PgFulltextStore(url), words[1::2])
    kb = old.collection("kb")
    docs = [old.document(kb) for _ in range(12)]
    locks = [threading.Lock() for _ in docs]
    upgraded = threading.Event()
    errors: list[BaseException] = []

    def work(writer: Writer, seed: int, operations: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(operations):
                slot = rng.randrange(len(docs))
                with locks[slot]:
                    action = rng.random()
                    if action < 0.5:
                        docs[slot] = writer.rewrite_chunk(docs[slot], rng.randrange(2))
                    else:
                        writer.delete_document(docs[slot])
                        docs[slot] = writer.document(kb)
        except BaseException as exc:
            errors.append(exc)

    def sync_until(done: threading.Event) -> None:
        try:
            while not done.is_set():
                PgFulltextStore(url).sync()
        except BaseException as exc:
            errors.append(exc)

    old_pods = threading.Thread(target=lambda: (work(old, 1, 20), upgraded.wait(), work(old, 2, 40)))
    old_pods.start()
    upgrade_in_process(env)  # while the old pods write
    upgraded.set()
    finished = threading.Event()
    reconciler = threading.Thread(target=sync_until, args=(finished,))
    new_pods = threading.Thread(target=work, args=(new, 3, 40))
    reconciler.start()
    new_pods.start()
    for thread in (old_pods, new_pods):
        thread.join(timeout=300)
    finished.set()
    reconciler.join(timeout=300)
    assert not errors, errors
    PgFulltextStore(url).sync()

    assert legacy_rows(url) == chunk_rows(url) == {
        (c.chunk_id, c.document_id, c.collection_id, c.text) for d in docs for c in d.chunks
    }
    assert bm25_content(url) == fresh_bm25(app_env_factory, legacy_rows(url))
    assert_found_by_this_release(AppContext(settings=settings_from(env)), docs)
    assert_found_by_the_previous_release(url, docs)


# -- a database the unreleased code touched ------------------------------------------------------------


def test_a_database_whose_tsvector_table_was_dropped_gets_it_back_from_the_chunks(
    app_env_factory: Callable[..., dict[str, str]],
) -> None:
    """The code merged between the two releases (never released) dropped `fulltext_chunks` after moving
    its rows into the BM25 tables it created itself, at revision 0002. Revision 0003 accepts such a
    database: it keeps the BM25 tables and refills `fulltext_chunks` from `chunks`."""
    env = app_env_factory()
    url = settings_from(env).database_url
    # That code knew no revision after 0003's tables: nothing of later revisions exists in such a database.
    migrate.downgrade(url, BM25)
    new = Writer(url, PgFulltextStore(url), WORDS)
    kb = new.collection("kb")
    docs = [new.document(kb), new.document(kb)]
    index = bm25_content(url)
    # That code predates the graph (revision 0004): its database has none of it.
    migrate.downgrade(url, "0003")
    for statement in (
        "DROP TRIGGER fulltext_chunks_pending ON fulltext_chunks",
        "DROP FUNCTION fts_note_legacy_write()",
        "DROP TABLE fts_pending",
        "DROP TABLE fulltext_chunks",
        f"UPDATE alembic_version SET version_num = '{PREVIOUS}'",
    ):
        _sql(url, statement)
    upgrade_in_process(env)
    assert legacy_rows(url) == chunk_rows(url) and len(chunk_rows(url)) == 4
    assert bm25_content(url) == index and pending(url) == 0
    assert_found_by_the_previous_release(url, docs)
