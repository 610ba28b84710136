"""Database connections under the search route: one pooled connection per search, as many kept open as
the API has worker threads (docs/benchmarks.md, "Search under load")."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.db.session import DEFAULT_POOL_SIZE, configure_pool, get_engine, shared_transaction
from aperag.ingest.dispatch import InProcessDispatcher
from aperag.stores.pg_connection import store_transaction
from tests.app.conftest import settings_from, wait_until
from tests.app.corpus import DOCS

POOL = 7


@pytest.fixture
def ctx(app_env_factory: Callable[..., dict[str, str]], embedder_warm: None) -> Iterator[AppContext]:
    # DB_POOL_SIZE also for the migration's context, which creates this database's engine first.
    context = AppContext(settings=settings_from(app_env_factory(DB_POOL_SIZE=str(POOL))))
    yield context
    configure_pool(DEFAULT_POOL_SIZE)


def _worker_threads() -> int:
    return int(anyio.to_thread.current_default_thread_limiter().total_tokens)


async def _worker_threads_on_loop() -> int:
    return _worker_threads()


def test_search_uses_one_pooled_connection_and_threads_match_the_pool(ctx: AppContext) -> None:
    dispatcher = InProcessDispatcher(ctx, max_retries=1)
    ctx.dispatcher = dispatcher
    engine = get_engine(ctx.settings.database_url)
    assert engine.pool.size() == POOL  # type: ignore[attr-defined]
    checkouts: list[Any] = []
    with TestClient(create_app(ctx)) as client:
        assert client.portal is not None
        assert client.portal.call(_worker_threads_on_loop) == POOL
        client.post("/api/v1/collections", json={"name": "kb"})
        body = DOCS["volcanoes.md"].encode()
        files = {"file": ("v.md", io.BytesIO(body), "text/markdown")}
        doc = client.post("/api/v1/collections/kb/documents", files=files)
        doc_id = doc.json()["id"]

        def ready() -> bool:
            return bool(client.get(f"/api/v1/collections/kb/documents/{doc_id}").json()["status"] == "ready")

        wait_until(ready, 120, "the document to be indexed", interval=0.2)

        def count(*args: Any) -> None:
            checkouts.append(args)

        event.listen(engine, "checkout", count)
        try:
            for mode in ("vector", "fulltext", "hybrid"):
                checkouts.clear()
                resp = client.post("/api/v1/collections/kb/search", json={"query": "shield volcano", "mode": mode})
                assert resp.status_code == 200, resp.text
                assert resp.json()["results"][0]["filename"] == "v.md"
                # Collection lookup, stores and ready-documents filter on one connection.
                assert len(checkouts) == 1, mode
        finally:
            event.remove(engine, "checkout", count)
    dispatcher.shutdown()


def test_stores_join_the_shared_transaction(ctx: AppContext) -> None:
    url = ctx.settings.database_url
    with store_transaction(url, "test") as alone:
        pass
    with shared_transaction(url) as shared:
        with store_transaction(url, "test") as inside, shared_transaction(url) as nested:
            assert inside is shared and nested is shared
        with ctx.read_session() as session:
            assert session.connection() is shared
        # Still usable: the inner blocks neither committed nor closed it.
        assert shared.exec_driver_sql("SELECT 1").scalar() == 1
    assert alone is not shared
