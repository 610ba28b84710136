"""The collection's documents: the page with the upload form and the documents table (a fragment htmx
polls while something is indexing), reindex and delete, and one document's view with its chunks.

Every action is a plain form first (it works without script: a redirect back, or a page with the
outcome) that htmx enhances with hx-post and a fragment swap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from starlette.datastructures import UploadFile

from aperag import services
from aperag.console import deps
from aperag.context import AppContext
from aperag.db.models import Collection, Document, DocumentStatus
from aperag.parsing import UnparsableDocument, UnsupportedDocument

router = APIRouter(dependencies=deps.SIGNED_IN)

FINAL = frozenset({DocumentStatus.READY.value, DocumentStatus.FAILED.value})


def _filesize(n: int | None) -> str:
    if n is None:
        return ""
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _timestamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


deps.TEMPLATES.env.filters.setdefault("filesize", _filesize)
deps.TEMPLATES.env.filters.setdefault("timestamp", _timestamp)


@dataclass(frozen=True)
class UploadOutcome:
    filename: str
    ok: bool
    message: str
    document_id: str | None = None


def _base(collection: Collection) -> str:
    return f"{deps.PREFIX}/collections/{collection.id}"


def _table(ctx: AppContext, collection: Collection) -> dict[str, object]:
    documents = services.list_documents(ctx, collection.id)
    counts: dict[str, int] = {}
    for d in documents:
        counts[d.status] = counts.get(d.status, 0) + 1
    return {
        "collection": collection,
        "documents": documents,
        "counts": counts,
        "polling": any(d.status not in FINAL for d in documents),
    }


def _page(
    request: Request,
    ctx: AppContext,
    collection: Collection,
    results: list[UploadOutcome] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context = {**_table(ctx, collection), "tab": "documents", "results": results or [], "error": error,
               "max_upload_bytes": ctx.settings.max_upload_bytes}  # fmt: skip
    return deps.render(request, "collection.html", context, status_code)


@router.get("/collections/{ref}")
def collection_page(request: Request, ctx: deps.CtxDep, ref: str) -> Response:
    return _page(request, ctx, services.get_collection(ctx, ref))


@router.get("/collections/{ref}/documents")
def documents_fragment(request: Request, ctx: deps.CtxDep, ref: str) -> Response:
    """The table alone: what htmx polls (every 2 s, only while a document is not ready or failed)."""
    return deps.render(request, "_documents_table.html", _table(ctx, services.get_collection(ctx, ref)))


def _refused(filename: str, exc: Exception, limit: int) -> UploadOutcome:
    if isinstance(exc, services.TooLarge):
        reason = f"it is larger than the upload limit of {_filesize(limit)}"
    elif isinstance(exc, UnsupportedDocument):
        reason = f"this file type is not supported ({exc})"
    elif isinstance(exc, UnparsableDocument):
        reason = f"no text could be read from it ({exc})"
    elif isinstance(exc, services.InvalidInput) and "empty" in str(exc):
        reason = "the file is empty"
    else:
        reason = str(exc)
    return UploadOutcome(filename, ok=False, message=f"{filename} was not uploaded: {reason}.")


async def _upload_one(ctx: AppContext, collection: Collection, file: UploadFile) -> UploadOutcome:
    limit = ctx.settings.max_upload_bytes
    name = services.clean_filename(file.filename or "upload")
    # One byte past the limit: enough to know the file is too large without reading it all.
    data = await file.read(limit + 1)
    try:
        result = await run_in_threadpool(
            services.upload_document, ctx, collection.id, file.filename or "upload", file.content_type, data
        )
    except (services.TooLarge, services.InvalidInput, UnsupportedDocument, UnparsableDocument) as exc:
        return _refused(name, exc, limit)
    doc = result.document
    if result.created:
        message = f"{doc.filename} was uploaded; the table below shows its indexing."
        return UploadOutcome(doc.filename, ok=True, message=message, document_id=doc.id)
    return UploadOutcome(
        name, ok=True, document_id=doc.id,
        message=f"{name} is already in this collection (as {doc.filename}); it was not added again.",
    )  # fmt: skip


@router.post("/collections/{ref}/documents")
async def upload(request: Request, ctx: deps.CtxDep, ref: str) -> Response:
    """Each file is uploaded on its own: a refused file gets its message, the others are kept."""
    collection = await run_in_threadpool(services.get_collection, ctx, ref)
    form = await request.form()
    try:
        # A form sent with no file chosen carries one empty part without a name.
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile) and (f.filename or f.size)]
        results = [await _upload_one(ctx, collection, f) for f in files]
    finally:
        await form.close()  # the spooled temporary files
    error = None if files else "Choose one or more files to upload."
    status = 200 if any(r.ok for r in results) else 400
    if deps.is_htmx(request):
        context = {**await run_in_threadpool(_table, ctx, collection), "results": results, "error": error,
                   "oob": True}  # fmt: skip
        return deps.render(request, "_upload_results.html", context, status)
    return await run_in_threadpool(_page, request, ctx, collection, results, error, status)


def _document(ctx: AppContext, ref: str, document_id: str) -> tuple[Collection, Document]:
    collection = services.get_collection(ctx, ref)
    return collection, services.get_document(ctx, collection.id, document_id)


def _after_action(request: Request, ctx: AppContext, collection: Collection, notice: str) -> Response:
    if deps.is_htmx(request):
        return deps.render(request, "_documents_table.html", {**_table(ctx, collection), "notice": notice})
    return RedirectResponse(_base(collection), status_code=303)


@router.post("/collections/{ref}/documents/{document_id}/reindex")
def reindex(request: Request, ctx: deps.CtxDep, ref: str, document_id: str) -> Response:
    collection, doc = _document(ctx, ref, document_id)
    services.reindex_document(ctx, doc.id)
    return _after_action(request, ctx, collection, f"{doc.filename} is being indexed again.")


@router.get("/collections/{ref}/documents/{document_id}/delete")
def delete_confirmation(request: Request, ctx: deps.CtxDep, ref: str, document_id: str) -> Response:
    """The confirmation without script (with script, the Delete button asks with hx-confirm)."""
    collection, doc = _document(ctx, ref, document_id)
    return deps.render(request, "document_delete.html", {"collection": collection, "document": doc, "tab": "documents"})


@router.post("/collections/{ref}/documents/{document_id}/delete")
def delete(request: Request, ctx: deps.CtxDep, ref: str, document_id: str) -> Response:
    collection, doc = _document(ctx, ref, document_id)
    services.delete_document(ctx, collection.id, doc.id)
    return _after_action(request, ctx, collection, f"{doc.filename} was deleted.")


@router.get("/collections/{ref}/documents/{document_id}")
def document_page(request: Request, ctx: deps.CtxDep, ref: str, document_id: str) -> Response:
    collection, doc = _document(ctx, ref, document_id)
    chunks = services.list_chunks(ctx, collection.id, doc.id)
    context = {"collection": collection, "document": doc, "chunks": chunks, "tab": "documents"}
    return deps.render(request, "document.html", context)
