"""Collection and document operations shared by the API and the CLI."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from aperag.context import AppContext
from aperag.db.models import Chunk, Collection, Document, DocumentStatus, new_id, utcnow
from aperag.ingest.pipeline import remove_document_chunks
from aperag.parsing import ParseLimits, detect_content_type, extract_text

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Ids are uuid4().hex (aperag.db.models.new_id).
_ID = re.compile(r"[0-9a-f]{32}")
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# In a description: control characters other than tab, newline and carriage return, and lone surrogates.
_UNSTORABLE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
MAX_DESCRIPTION = 2000


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


class InvalidInput(ValueError):
    pass


class TooLarge(ValueError):
    pass


def create_collection(ctx: AppContext, name: str, description: str = "") -> Collection:
    if not _NAME.fullmatch(name):
        raise InvalidInput("collection name must be 1-200 characters of letters, digits, '.', '_' or '-'")
    collection = Collection(id=new_id(), name=name, description=description, created_at=utcnow())
    try:
        with ctx.sessions.begin() as session:
            session.add(collection)
    except IntegrityError as exc:
        raise Conflict(f"collection {name!r} already exists") from exc
    return collection


def list_collections(ctx: AppContext) -> list[Collection]:
    with ctx.sessions() as session:
        return list(session.scalars(select(Collection).order_by(Collection.created_at)))


def get_collection(ctx: AppContext, ref: str) -> Collection:
    """By id or by name: the CLI takes names, the API returns ids; both work everywhere."""
    if not _NAME.fullmatch(ref):
        # Not a possible name or id (e.g. a NUL from a `%00` in the path): nothing to look up.
        raise NotFound(f"collection {ref[:200]!r} not found")
    with ctx.read_session() as session:
        # One query: the collection with that id, else the one with that name (a search's lookup
        # shares its connection, aperag.db.session.shared_transaction).
        found = session.scalars(
            select(Collection)
            .where(or_(Collection.id == ref, Collection.name == ref))
            .order_by((Collection.id == ref).desc())
            .limit(1)
        ).first()
    if found is None:
        raise NotFound(f"collection {ref!r} not found")
    return found


def update_collection_description(ctx: AppContext, ref: str, description: str) -> Collection:
    """InvalidInput for a description over MAX_DESCRIPTION characters or with control characters."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidInput(f"a description is at most {MAX_DESCRIPTION} characters (this one has {len(description)})")
    if _UNSTORABLE_TEXT.search(description):
        raise InvalidInput("a description cannot contain control characters")
    collection = get_collection(ctx, ref)
    with ctx.sessions.begin() as session:
        obj = session.get(Collection, collection.id)
        if obj is None:
            raise NotFound(f"collection {ref!r} not found")
        obj.description = description
    collection.description = description
    return collection


def delete_collection(ctx: AppContext, ref: str) -> None:
    collection = get_collection(ctx, ref)
    with ctx.sessions() as session:
        keys = list(
            session.scalars(select(Document.object_key).where(Document.collection_id == collection.id))
        )
    ctx.vector_store.delete_collection(collection.id)
    ctx.fulltext_store.delete_collection(collection.id)
    with ctx.sessions.begin() as session:
        obj = session.get(Collection, collection.id)
        if obj is not None:
            session.delete(obj)
    for key in keys:
        ctx.object_store.delete(key)


def document_counts(ctx: AppContext, collection_id: str) -> dict[str, int]:
    with ctx.sessions() as session:
        rows = session.execute(
            select(Document.status, func.count())
            .where(Document.collection_id == collection_id)
            .group_by(Document.status)
        ).all()
    return {r[0]: int(r[1]) for r in rows}


def clean_filename(filename: str) -> str:
    """The name as stored and shown: control characters and surrogates (which PostgreSQL text cannot
    hold) dropped, any directory part removed, at most 500 characters."""
    name = _UNSTORABLE.sub("", filename).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:500] or "upload"


@dataclass(frozen=True)
class UploadResult:
    document: Document
    created: bool


def upload_document(
    ctx: AppContext, collection_ref: str, filename: str, declared_type: str | None, data: bytes
) -> UploadResult:
    collection = get_collection(ctx, collection_ref)
    filename = clean_filename(filename)
    if len(data) > ctx.settings.max_upload_bytes:
        raise TooLarge(
            f"file is {len(data)} bytes; the limit is {ctx.settings.max_upload_bytes} (MAX_UPLOAD_BYTES)"
        )
    if not data:
        raise InvalidInput("document is empty")
    content_type = detect_content_type(filename, declared_type)
    # Parse now so that an unreadable or text-less file is a 4xx at upload, not a failure later.
    extract_text(data, content_type, ParseLimits.from_settings(ctx.settings))
    digest = hashlib.sha256(data).hexdigest()
    with ctx.sessions() as session:
        existing = session.scalar(
            select(Document).where(Document.collection_id == collection.id, Document.content_hash == digest)
        )
    if existing is not None:
        if existing.status == DocumentStatus.FAILED.value:
            return UploadResult(reindex_document(ctx, existing.id), created=False)
        return UploadResult(existing, created=False)
    document_id = new_id()
    object_key = f"{collection.id}/{document_id}/{digest}"
    ctx.object_store.put(object_key, data)
    doc = Document(
        id=document_id,
        collection_id=collection.id,
        filename=filename[:500],
        content_type=content_type,
        content_hash=digest,
        size_bytes=len(data),
        object_key=object_key,
        status=DocumentStatus.PENDING.value,
        attempts=0,
        chunk_count=0,
        status_changed_at=utcnow(),
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    try:
        with ctx.sessions.begin() as session:
            session.add(doc)
    except IntegrityError:
        # A concurrent upload of the same bytes won the race: use its document.
        ctx.object_store.delete(object_key)
        with ctx.sessions() as session:
            winner = session.scalar(
                select(Document).where(
                    Document.collection_id == collection.id, Document.content_hash == digest
                )
            )
        if winner is None:
            raise
        return UploadResult(winner, created=False)
    if ctx.dispatcher is not None:
        ctx.dispatcher.enqueue(document_id)
    return UploadResult(doc, created=True)


def list_documents(ctx: AppContext, collection_ref: str) -> list[Document]:
    collection = get_collection(ctx, collection_ref)
    with ctx.sessions() as session:
        return list(
            session.scalars(
                select(Document).where(Document.collection_id == collection.id).order_by(Document.created_at)
            )
        )


def get_document(ctx: AppContext, collection_ref: str, document_id: str) -> Document:
    collection = get_collection(ctx, collection_ref)
    if not _ID.fullmatch(document_id):
        raise NotFound(f"document {document_id[:100]!r} not found in collection {collection_ref!r}")
    with ctx.sessions() as session:
        doc = session.get(Document, document_id)
    if doc is None or doc.collection_id != collection.id:
        raise NotFound(f"document {document_id!r} not found in collection {collection_ref!r}")
    return doc


def delete_document(ctx: AppContext, collection_ref: str, document_id: str) -> None:
    doc = get_document(ctx, collection_ref, document_id)
    remove_document_chunks(ctx, doc.id)
    with ctx.sessions.begin() as session:
        obj = session.get(Document, doc.id)
        if obj is not None:
            session.delete(obj)
    ctx.object_store.delete(doc.object_key)


def reindex_document(ctx: AppContext, document_id: str) -> Document:
    with ctx.sessions.begin() as session:
        doc = session.get(Document, document_id)
        if doc is None:
            raise NotFound(f"document {document_id!r} not found")
        doc.status = DocumentStatus.PENDING.value
        doc.error = None
        doc.attempts = 0
        doc.status_changed_at = utcnow()
    if ctx.dispatcher is not None:
        ctx.dispatcher.enqueue(document_id)
    return doc


def list_chunks(ctx: AppContext, collection_ref: str, document_id: str) -> list[Chunk]:
    """The document's chunks in order (none until it has been indexed)."""
    doc = get_document(ctx, collection_ref, document_id)
    with ctx.sessions() as session:
        return list(session.scalars(select(Chunk).where(Chunk.document_id == doc.id).order_by(Chunk.ordinal)))


def chunk_ordinals(ctx: AppContext, chunk_ids: list[str]) -> dict[str, int]:
    """Each chunk's position in its document (what a link to the chunk needs), by chunk id."""
    if not chunk_ids:
        return {}
    with ctx.sessions() as session:
        rows = session.execute(select(Chunk.id, Chunk.ordinal).where(Chunk.id.in_(chunk_ids))).all()
    return {r[0]: int(r[1]) for r in rows}
