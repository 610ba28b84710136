"""Several small documents indexed in one batch, and every way a batch can end: ready, a damaged
companion, a store outage, a bug, a shutdown. Real PostgreSQL, real model."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import text

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Document
from aperag.ingest.dispatch import InProcessDispatcher
from aperag.ingest.pipeline import IngestionCancelled, TransientIngestionError, index_document
from aperag.ingest.recovery import InProcessRecovery
from aperag.search import search
from aperag.stores import StoreUnavailable
from tests.app.conftest import settings_from, wait_until

FACTS = {
    "axolotl.txt": "The axolotl is a salamander that regrows lost limbs.",
    "okapi.txt": "The okapi is a giraffid with zebra-striped legs living in the Congo.",
    "quokka.txt": "The quokka is a small marsupial on Rottnest Island.",
    "narwhal.txt": "The narwhal is a whale whose tusk is an elongated tooth.",
    "pangolin.txt": "The pangolin is covered in keratin scales and eats ants.",
}


class Recorder:
    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def enqueue(self, document_id: str) -> None:
        self.enqueued.append(document_id)

    def queue_depth(self) -> int:
        return len(self.enqueued)


@pytest.fixture
def make_ctx(app_env_factory: Callable[..., dict[str, str]], embedder_warm: None) -> Callable[..., AppContext]:
    def make(**env: str) -> AppContext:
        ctx = AppContext(settings=settings_from(app_env_factory(**env)))
        ctx.dispatcher = Recorder()
        return ctx

    return make


def _upload(ctx: AppContext, collection: str, docs: dict[str, str]) -> dict[str, str]:
    services.create_collection(ctx, collection)
    return {
        name: services.upload_document(ctx, collection, name, None, body.encode()).document.id
        for name, body in docs.items()
    }


def _doc(ctx: AppContext, document_id: str) -> Document:
    with ctx.sessions() as session:
        found = session.get(Document, document_id)
    assert found is not None
    return found


class _BrokenStore:
    """A real store whose upsert fails with `error`, as an outage (or a bug) would."""

    def __init__(self, inner: object, error: Exception) -> None:
        self.inner = inner
        self.error = error

    def upsert(self, *args: object) -> None:
        raise self.error

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_one_task_indexes_its_pending_neighbours_in_one_batch(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    elsewhere = _upload(ctx, "elsewhere", {"okapi.txt": FACTS["okapi.txt"] + " Elsewhere."})
    assert index_document(ctx, ids["axolotl.txt"], final_attempt=False) == "ready"
    for name, doc_id in ids.items():
        doc = _doc(ctx, doc_id)
        assert (doc.status, doc.chunk_count, doc.attempts) == ("ready", 1, 1), name
    # Another collection's pending document is not taken.
    assert _doc(ctx, elsewhere["okapi.txt"]).status == "pending"
    # The neighbours' own tasks find them done.
    assert index_document(ctx, ids["okapi.txt"], final_attempt=False) == "ready"
    collection = services.get_collection(ctx, "zoo")
    for query, expected in [("zebra-striped legs", "okapi.txt"), ("keratin scales ants", "pangolin.txt")]:
        top = search(ctx, collection.id, query, "hybrid", 1).results[0]
        assert top.document_id == ids[expected], query


def test_batch_size_one_indexes_only_the_task_document(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx(INGEST_BATCH_DOCUMENTS="1")
    ids = _upload(ctx, "zoo", FACTS)
    assert index_document(ctx, ids["axolotl.txt"], final_attempt=False) == "ready"
    assert [_doc(ctx, i).status for i in ids.values()] == ["ready"] + ["pending"] * (len(ids) - 1)


def test_a_damaged_companion_fails_alone(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    # The stored bytes of one neighbour turn into binary after its upload was accepted.
    ctx.object_store.put(_doc(ctx, ids["quokka.txt"]).object_key, bytes(range(256)) * 4)
    assert index_document(ctx, ids["axolotl.txt"], final_attempt=False) == "ready"
    quokka = _doc(ctx, ids["quokka.txt"])
    assert quokka.status == "failed" and "binary" in (quokka.error or "")
    assert sorted(_doc(ctx, i).status for i in ids.values()) == ["failed"] + ["ready"] * (len(ids) - 1)


def test_store_outage_returns_companions_to_the_queue(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    recorder = Recorder()
    ctx.dispatcher = recorder
    real = ctx.vector_store
    ctx.__dict__["vector_store"] = _BrokenStore(real, StoreUnavailable("vector store went away"))
    primary = ids["axolotl.txt"]
    with pytest.raises(TransientIngestionError):
        index_document(ctx, primary, final_attempt=False)
    assert _doc(ctx, primary).status == "pending" and "retrying" in (_doc(ctx, primary).error or "")
    others = [i for i in ids.values() if i != primary]
    for doc_id in others:
        doc = _doc(ctx, doc_id)
        assert (doc.status, doc.error) == ("pending", None)
    assert sorted(recorder.enqueued) == sorted(others)
    ctx.__dict__["vector_store"] = real
    assert index_document(ctx, primary, final_attempt=False) == "ready"
    assert all(_doc(ctx, i).status == "ready" for i in ids.values())


def test_an_unexpected_error_fails_the_batch_with_its_reason(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    ctx.__dict__["fulltext_store"] = _BrokenStore(ctx.fulltext_store, ValueError("a value the store refuses"))
    assert index_document(ctx, ids["axolotl.txt"], final_attempt=False) == "failed"
    for doc_id in ids.values():
        doc = _doc(ctx, doc_id)
        assert doc.status == "failed", doc.status
        assert doc.error == "internal error: ValueError: a value the store refuses"


def test_cancel_gives_the_batch_back(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    stop = threading.Event()
    stop.set()
    with pytest.raises(IngestionCancelled):
        index_document(ctx, ids["axolotl.txt"], final_attempt=False, cancel=stop)
    assert {_doc(ctx, i).status for i in ids.values()} == {"pending"}


def test_embedded_recovery_requeues_what_a_killed_run_left(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    ids = _upload(ctx, "zoo", FACTS)
    # What a SIGKILL mid-batch leaves: some documents `indexing`, the rest `pending`, nothing queued.
    with ctx.sessions.begin() as session:
        session.execute(
            text("UPDATE documents SET status = 'indexing', attempts = 1 WHERE id = ANY(:ids)"),
            {"ids": [ids["axolotl.txt"], ids["okapi.txt"]]},
        )
    dispatcher = InProcessDispatcher(ctx, max_retries=1)
    ctx.dispatcher = dispatcher
    recovery = InProcessRecovery(ctx, dispatcher, sole_owner=True)
    try:
        # Not ready yet: no graph to queue.
        assert recovery.recover_now() == {"requeued": len(ids), "failed": 0, "graph_requeued": 0, "fulltext_synced": 0}

        def all_ready() -> bool:
            statuses = {_doc(ctx, i).status for i in ids.values()}
            assert "failed" not in statuses
            return statuses == {"ready"}

        wait_until(all_ready, 120, "recovered documents to be indexed")
        # Each ready document's graph is queued by its indexing and built by the same thread.
        wait_until(lambda: {_doc(ctx, i).graph_status for i in ids.values()} == {"ready"}, 120, "graphs to be built")
        assert recovery.recover_now() == {"requeued": 0, "failed": 0, "graph_requeued": 0, "fulltext_synced": 0}
    finally:
        recovery.stop()
        assert dispatcher.stop(grace_seconds=30)
