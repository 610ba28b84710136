"""Search from async code (chat, the OpenAI-compatible endpoint, MCP), as the search route does it:
the query's embedding is awaited on the event loop while the batching thread computes it, and the
database work takes one hop to the thread pool."""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Collection
from aperag.embedding import get_embedder, loaded_embedder, query_batcher
from aperag.search import SearchResponse, needs_embedding, search


async def search_async(
    ctx: AppContext, collection: Collection, query: str, mode: str, top_k: int, include_graph: bool = False
) -> SearchResponse:
    vector = None
    if needs_embedding(mode):  # the graph mode matches entities by the query's embedding too
        embedder = loaded_embedder(ctx.settings)
        if embedder is None:  # first search of the process: load the model off the event loop
            embedder = await run_in_threadpool(get_embedder, ctx.settings)
        batcher = query_batcher(embedder, ctx.settings.query_embedding_batch)
        if batcher is not None:
            vector = await asyncio.wrap_future(batcher.submit(query))
    # With batching off (QUERY_EMBEDDING_BATCH=0) search() embeds the query on its worker thread.
    return await run_in_threadpool(search, ctx, collection.id, query, mode, top_k, vector, include_graph)


async def find_collection(ctx: AppContext, ref: str) -> Collection:
    """By id or name; services.NotFound (a 404) when there is none."""
    return await run_in_threadpool(services.get_collection, ctx, ref)
