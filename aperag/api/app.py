"""FastAPI application factory. The API never migrates the database (the operator's Job does)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt
from fastapi import Depends, FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError

from aperag import metrics, services, telemetry
from aperag.api.routes import chat, mcp, openai_compat
from aperag.api.schemas import (
    CollectionCreate,
    CollectionOut,
    DocumentOut,
    ErrorOut,
    GraphEntityOut,
    GraphRelationOut,
    ReadyOut,
    SearchGraphOut,
    SearchHit,
    SearchOut,
    SearchRequest,
    UploadOut,
)
from aperag.console.assets import VENDOR_DIR
from aperag.context import AppContext
from aperag.db.models import Collection, Document
from aperag.db.session import get_engine, pool_size, shared_transaction
from aperag.embedding import get_embedder, loaded_embedder, query_batcher
from aperag.migrate import SchemaCheck
from aperag.parsing import UnparsableDocument, UnsupportedDocument
from aperag.search import SearchResponse, needs_embedding, search
from aperag.stores import StoreUnavailable

log = logging.getLogger(__name__)
# Module level: route signatures are resolved against module globals (postponed annotations).
_bearer = HTTPBearer(auto_error=False)

_ERRORS: dict[type[Exception], int] = {
    services.NotFound: 404,
    services.Conflict: 409,
    services.InvalidInput: 400,
    services.TooLarge: 413,
    UnsupportedDocument: 415,
    UnparsableDocument: 422,
    StoreUnavailable: 503,
}


_ERROR_DESCRIPTIONS = {
    400: "invalid input (an empty file, a bad collection name, a body that is not UTF-8 JSON)",
    401: "missing or invalid API key",
    404: "unknown collection or document",
    409: "a collection with that name exists",
    413: "the file is larger than MAX_UPLOAD_BYTES",
    415: "unsupported file type",
    422: "malformed request, or a file with no readable text or over a parse budget",
    503: "the database or a store is unreachable",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all with an ErrorOut body)."""
    return {code: {"model": ErrorOut, "description": _ERROR_DESCRIPTIONS[code]} for code in (401, 422, 503, *codes)}


class _QueueDepthCollector(Collector):
    """Reads the queue length at scrape time, so the gauge is never stale."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("aperag_ingestion_queue_depth", "Documents waiting for a worker")
        try:
            if self.ctx.dispatcher is not None:
                gauge.add_metric([], float(self.ctx.dispatcher.queue_depth()))
        except Exception as exc:  # a scrape must not fail because Redis is briefly away
            log.debug("queue depth unavailable: %s", exc)
        yield gauge


def _doc_out(doc: Document) -> DocumentOut:
    return DocumentOut.model_validate(doc, from_attributes=True)


def _limit_worker_threads(threads: int) -> None:
    """Run the API's blocking work (sync routes, the search's database hop) on at most `threads` threads
    instead of anyio's default 40: as many as the connections the pool keeps open (DB_POOL_SIZE), so a
    thread never waits for a connection nor makes the pool open one for the moment; requests beyond that
    wait for a thread on the event loop, holding nothing. Must run on the event loop (the lifespan)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads


def _collection_out(ctx: AppContext, c: Collection) -> CollectionOut:
    return CollectionOut(
        id=c.id,
        name=c.name,
        description=c.description,
        created_at=c.created_at,
        documents=services.document_counts(ctx, c.id),
    )


def create_app(ctx: AppContext, on_shutdown: list[Callable[[], None]] | None = None) -> FastAPI:
    queue_collector = _QueueDepthCollector(ctx)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        REGISTRY.register(queue_collector)
        _limit_worker_threads(pool_size())
        try:
            yield
        finally:
            REGISTRY.unregister(queue_collector)
            # Runs before uvicorn re-raises SIGTERM, unlike code after uvicorn.run().
            for hook in on_shutdown or []:
                hook()

    # /docs is served below with Swagger UI's files from this app, not FastAPI's default CDN: a cluster
    # without internet access still gets its API docs, and the page makes no third-party request.
    app = FastAPI(
        title="ApeRAG",
        version="0.1.0",
        description="Retrieval over your documents.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx

    # async: a plain def dependency would cost every request a hop to the thread pool.
    async def require_key(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not ctx.settings.auth_enabled:
            return
        token = creds.credentials if creds is not None else ""
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in ctx.settings.api_keys):
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_key)]

    for exc_type, status in _ERRORS.items():

        def handler(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(exc_type, handler)

    def invalid_value(_: Request, exc: Exception) -> JSONResponse:
        # The database refused a value (out of range, a character it cannot store): bad input that
        # got past validation. Say so rather than fail with a 500.
        log.warning("database rejected a request value: %s", exc)
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        return JSONResponse({"detail": f"invalid value: {reason}"}, status_code=422)

    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its traceback; the client still gets a JSON answer on an
        # intact connection.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": "the database is unreachable; try again later"}, status_code=503)

    app.add_exception_handler(DataError, invalid_value)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(Exception, unexpected)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        # A server span per request, continuing the caller's trace (W3C traceparent), named by route.
        parent = telemetry.extract(request.headers)
        attributes = {"http.request.method": request.method, "url.path": request.url.path}
        with telemetry.span(request.method, attributes, kind=trace.SpanKind.SERVER, context=parent) as current:
            response = await call_next(request)
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            current.update_name(f"{request.method} {template}")
            current.set_attribute("http.route", template)
            current.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                current.set_status(trace.StatusCode.ERROR)
        metrics.HTTP_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(request.method, template).observe(time.perf_counter() - started)
        return response

    app.mount("/docs/assets", StaticFiles(directory=VENDOR_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="ApeRAG API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="data:,",  # no favicon request at all,
        )

    @app.get("/health/live", tags=["health"])
    def live() -> dict[str, str]:
        return {"status": "ok"}

    # Ready only when the schema is not behind this release (docs/app.md, readiness contract).
    schema_check = SchemaCheck(lambda: get_engine(ctx.settings.database_url))

    @app.get("/health/ready", response_model=ReadyOut, tags=["health"])
    def ready(response: Response) -> ReadyOut:
        checks: dict[str, str] = {}

        def check(name: str, fn: Callable[[], object]) -> None:
            try:
                fn()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {exc}"[:300]

        def database() -> None:
            with ctx.sessions() as session:
                session.execute(text("SELECT 1 FROM collections LIMIT 1"))

        check("database", database)
        check("schema", schema_check)
        if ctx.dispatcher is not None and ctx.settings.redis_configured:
            check("redis", ctx.dispatcher.queue_depth)
        check("vector_store", ctx.vector_store.ping)
        check("fulltext_store", ctx.fulltext_store.ping)
        check("object_store", ctx.object_store.ping)
        ok = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ok else 503
        return ReadyOut(ready=ok, checks=checks)

    @app.get(
        "/metrics", tags=["health"], response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
    )  # fmt: skip
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/api/v1/collections", status_code=201, response_model=CollectionOut, dependencies=auth,
        responses=_errors(400, 409),
    )  # fmt: skip
    def create_collection(body: CollectionCreate) -> CollectionOut:
        return _collection_out(ctx, services.create_collection(ctx, body.name, body.description))

    @app.get("/api/v1/collections", response_model=list[CollectionOut], dependencies=auth, responses=_errors())
    def list_collections() -> list[CollectionOut]:
        return [_collection_out(ctx, c) for c in services.list_collections(ctx)]

    @app.get(
        "/api/v1/collections/{collection}", response_model=CollectionOut, dependencies=auth, responses=_errors(404)
    )
    def get_collection(collection: str) -> CollectionOut:
        return _collection_out(ctx, services.get_collection(ctx, collection))

    @app.delete("/api/v1/collections/{collection}", status_code=204, dependencies=auth, responses=_errors(404))
    def delete_collection(collection: str) -> Response:
        services.delete_collection(ctx, collection)
        return Response(status_code=204)

    @app.post(
        "/api/v1/collections/{collection}/documents", response_model=UploadOut, dependencies=auth,
        responses={
            201: {"model": UploadOut, "description": "a new document, queued for indexing"},
            **_errors(400, 404, 413, 415),
        },
    )  # fmt: skip
    async def upload(collection: str, response: Response, file: Annotated[UploadFile, File()]) -> UploadOut:
        # Read one byte past the limit: enough to know the file is too large without buffering it all.
        data = await file.read(ctx.settings.max_upload_bytes + 1)
        result = await run_in_threadpool(
            services.upload_document, ctx, collection, file.filename or "upload", file.content_type, data
        )
        response.status_code = 201 if result.created else 200
        return UploadOut(**_doc_out(result.document).model_dump(), duplicate=not result.created)

    @app.get(
        "/api/v1/collections/{collection}/documents", response_model=list[DocumentOut], dependencies=auth,
        responses=_errors(404),
    )  # fmt: skip
    def list_documents(collection: str) -> list[DocumentOut]:
        return [_doc_out(d) for d in services.list_documents(ctx, collection)]

    @app.get(
        "/api/v1/collections/{collection}/documents/{document_id}",
        response_model=DocumentOut,
        dependencies=auth,
        responses=_errors(404),
    )
    def get_document(collection: str, document_id: str) -> DocumentOut:
        return _doc_out(services.get_document(ctx, collection, document_id))

    @app.delete(
        "/api/v1/collections/{collection}/documents/{document_id}", status_code=204, dependencies=auth,
        responses=_errors(404),
    )  # fmt: skip
    def delete_document(collection: str, document_id: str) -> Response:
        services.delete_document(ctx, collection, document_id)
        return Response(status_code=204)

    @app.post(
        "/api/v1/collections/{collection}/documents/{document_id}/reindex",
        status_code=202,
        response_model=DocumentOut,
        dependencies=auth,
        responses=_errors(404),
    )
    def reindex(collection: str, document_id: str) -> DocumentOut:
        doc = services.get_document(ctx, collection, document_id)
        return _doc_out(services.reindex_document(ctx, doc.id))

    async def _submit_query(query: str) -> Future[npt.NDArray[np.float32]] | None:
        """Hand the query to the embedding batcher; None when batching is off (then search() embeds
        it on its worker thread)."""
        embedder = loaded_embedder(ctx.settings)
        if embedder is None:  # first search of the process: load the model off the event loop
            embedder = await run_in_threadpool(get_embedder, ctx.settings)
        batcher = query_batcher(embedder, ctx.settings.query_embedding_batch)
        return batcher.submit(query) if batcher is not None else None

    @app.post(
        "/api/v1/collections/{collection}/search", response_model=SearchOut, dependencies=auth,
        responses=_errors(400, 404),
    )  # fmt: skip
    async def search_collection(collection: str, body: SearchRequest) -> SearchOut:
        # Async on purpose: the query's embedding is awaited on the event loop while the batching
        # thread computes it, so a request holds a worker thread only for its database work, and all
        # concurrent queries reach the batcher at once (docs/benchmarks.md, "Search under load").
        started = time.perf_counter()
        pending = await _submit_query(body.query) if needs_embedding(body.mode) else None
        vector = None
        if pending is not None:
            model = {"aperag.embedding.backend": ctx.settings.embedding_backend,
                     "aperag.embedding.model": ctx.settings.embedding_model}  # fmt: skip
            with telemetry.span("embedding.embed_query", model):
                vector = await asyncio.wrap_future(pending)
            embedded_ms = (time.perf_counter() - started) * 1000
            metrics.EMBEDDING_SECONDS.labels("query").observe(embedded_ms / 1000)
            metrics.EMBEDDED_TEXTS.labels("query").inc()

        queued = time.perf_counter()

        def lookup_and_search() -> SearchResponse:
            # One hop to the thread pool, one pooled connection and transaction for all the database
            # work of the request (collection lookup, stores, ready-documents filter).
            waited_ms = (time.perf_counter() - queued) * 1000
            if vector is None and needs_embedding(body.mode):
                # Not batched (QUERY_EMBEDDING_BATCH=0): search() embeds the query on this thread
                # first, which must not hold a connection meanwhile; the lookup takes its own.
                c = services.get_collection(ctx, collection)
                found = search(ctx, c.id, body.query, body.mode, body.top_k, include_graph=body.include_graph)
            else:
                with shared_transaction(ctx.settings.database_url):
                    c = services.get_collection(ctx, collection)
                    found = search(ctx, c.id, body.query, body.mode, body.top_k, vector, body.include_graph)
            # Time waiting for a worker thread: under load, the queue in front of the database work.
            found.timings_ms["thread_wait"] = waited_ms
            return found

        found = await run_in_threadpool(lookup_and_search)
        if pending is not None:
            found.timings_ms["embed_query"] = embedded_ms
            found.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return SearchOut(
            mode=body.mode,
            results=[SearchHit(**r.__dict__) for r in found.results],
            timings_ms=found.timings_ms,
            graph=(
                SearchGraphOut(
                    entities=[GraphEntityOut(**e.__dict__) for e in found.graph.entities],
                    relations=[GraphRelationOut(**r.__dict__) for r in found.graph.relations],
                )
                if found.graph is not None
                else None
            ),
        )

    # Route modules: chat and its history, the OpenAI-compatible API, the MCP server (docs/app.md).
    app.include_router(chat.router)
    app.include_router(openai_compat.router)
    app.include_router(mcp.build_router(ctx))
    from aperag.api.routes import graph as graph_routes

    app.include_router(graph_routes.router, dependencies=auth)
    # Last: it wraps the error handlers registered above so console paths get pages, not JSON.
    from aperag import console

    console.mount(app, ctx.settings.console_enabled)
    return app
