"""The MCP server at `/mcp` (Streamable HTTP), behind the API's own Bearer keys (docs/app.md, "MCP").

Tools: `list_collections`, `search` (any mode) and `fetch_chunk`. Built with the protocol's official
Python SDK (PyPI `mcp`, its `MCPServer`): the reference implementation, maintained with the
specification, with a client for the tests; `fastmcp` is a larger framework on top of the same SDK,
with nothing these three tools need.

Stateless and JSON responses: every POST is answered on its own, so any API replica can serve any
request (no session affinity behind the Service), and nothing is held open between calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aperag import services
from aperag.api.deps import key_is_valid
from aperag.chat.retrieval import find_collection, search_async
from aperag.chunks import get_chunk
from aperag.config import Settings
from aperag.context import AppContext
from aperag.stores import StoreUnavailable
from aperag.text_rules import WORD

_ANTICIPATED = (services.NotFound, services.InvalidInput, StoreUnavailable)


class CollectionInfo(BaseModel):
    id: str
    name: str
    description: str
    documents: dict[str, int] = Field(description="document count per status")


class Collections(BaseModel):
    collections: list[CollectionInfo]


class Hit(BaseModel):
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float


class SearchResults(BaseModel):
    collection: str
    mode: str
    results: list[Hit]


class ChunkOut(BaseModel):
    chunk_id: str
    document_id: str
    filename: str
    ordinal: int = Field(description="position in the document, from 0")
    chunks_in_document: int
    text: str


def build_server(ctx: AppContext) -> MCPServer:
    server: MCPServer = MCPServer(
        name="aperag",
        instructions=(
            "Search the user's document collections. list_collections names them; search returns ranked"
            " chunks; fetch_chunk reads a chunk, or its neighbours by ordinal, for more context."
        ),
    )

    @server.tool()
    def list_collections() -> Collections:
        """The document collections, with their document counts per status."""
        return Collections(
            collections=[
                CollectionInfo(
                    id=c.id, name=c.name, description=c.description, documents=services.document_counts(ctx, c.id)
                )
                for c in services.list_collections(ctx)
            ]
        )

    @server.tool()
    async def search(
        collection: Annotated[str, Field(description="a collection's name or id")],
        query: Annotated[str, Field(min_length=1, max_length=4000)],
        mode: Literal["vector", "fulltext", "hybrid", "graph"] = "hybrid",
        top_k: Annotated[int, Field(ge=1, le=50)] = 5,
        include_graph: Annotated[bool, Field(description="hybrid: fuse the knowledge graph's ranking too")] = False,
    ) -> SearchResults:
        """Search a collection: vector (semantic), fulltext (BM25 keywords), hybrid (both, fused) or graph
        (chunks that mention the knowledge graph's entities matching the query)."""
        if not WORD.search(query):
            raise ToolError("query must contain a letter or digit")
        try:
            found_collection = await find_collection(ctx, collection)
            found = await search_async(ctx, found_collection, query, mode, top_k, include_graph)
        except _ANTICIPATED as exc:
            raise ToolError(str(exc)) from exc
        hits = [Hit(chunk_id=r.chunk_id, document_id=r.document_id, filename=r.filename, text=r.text,
                    score=r.score) for r in found.results]  # fmt: skip
        return SearchResults(collection=found_collection.name, mode=mode, results=hits)

    @server.tool()
    def fetch_chunk(
        collection: Annotated[str, Field(description="a collection's name or id")],
        chunk_id: Annotated[str | None, Field(description="a chunk id from search")] = None,
        document_id: Annotated[str | None, Field(description="with ordinal, instead of chunk_id")] = None,
        ordinal: Annotated[int | None, Field(ge=0, description="the chunk's position in the document")] = None,
    ) -> ChunkOut:
        """A document's chunk, by its id or by (document_id, ordinal): ordinal +/- 1 are its neighbours."""
        try:
            view = get_chunk(ctx, collection, chunk_id, document_id, ordinal)
        except _ANTICIPATED as exc:
            raise ToolError(str(exc)) from exc
        return ChunkOut(**view.__dict__)

    return server


class _RequireKey:
    """The API's Bearer key check, in front of the MCP transport (an ASGI app, not a FastAPI route)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and key_is_valid(self.settings, token.strip())
        if self.settings.auth_enabled and not valid:
            response = JSONResponse(
                {"detail": "missing or invalid API key"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_router(ctx: AppContext) -> APIRouter:
    """A router with the `/mcp` route and the lifespan that runs the MCP session manager (one per app:
    the SDK's manager runs once)."""
    server = build_server(ctx)
    # Host/Origin checks off: the server is reached through Services and Ingresses under any host name,
    # and the Bearer key is what admits a caller (browsers cannot send it cross-origin without CORS).
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with manager.run():
            yield

    router = APIRouter(lifespan=lifespan)
    router.add_route(
        "/mcp",
        _RequireKey(StreamableHTTPASGIApp(manager), ctx.settings),  # type: ignore[arg-type]
        methods=["GET", "POST", "DELETE"],
        include_in_schema=False,
    )
    return router
