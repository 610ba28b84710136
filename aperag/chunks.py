"""One chunk of a ready document, by id or by (document, ordinal): what a citation or a search hit
points at, and its neighbours (ordinal - 1, + 1) for more context."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select

from aperag import services
from aperag.context import AppContext
from aperag.db.models import Chunk, Document, DocumentStatus

_CHUNK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class ChunkView:
    chunk_id: str
    document_id: str
    filename: str
    ordinal: int
    chunks_in_document: int
    text: str


def get_chunk(
    ctx: AppContext,
    collection_ref: str,
    chunk_id: str | None = None,
    document_id: str | None = None,
    ordinal: int | None = None,
) -> ChunkView:
    """services.InvalidInput without a chunk id or a (document id, ordinal); services.NotFound when the
    chunk is not in a ready document of the collection."""
    collection = services.get_collection(ctx, collection_ref)
    query = select(Chunk, Document.filename).join(Document, Document.id == Chunk.document_id).where(
        Chunk.collection_id == collection.id, Document.status == DocumentStatus.READY.value
    )
    if chunk_id is not None:
        if not _CHUNK_ID.fullmatch(chunk_id):
            raise services.NotFound(f"chunk {chunk_id[:100]!r} not found")
        query = query.where(Chunk.id == chunk_id)
        what = f"chunk {chunk_id!r}"
    elif document_id is not None and ordinal is not None:
        query = query.where(Chunk.document_id == document_id, Chunk.ordinal == ordinal)
        what = f"chunk {ordinal} of document {document_id[:100]!r}"
    else:
        raise services.InvalidInput("give a chunk_id, or a document_id and an ordinal")
    with ctx.sessions() as session:
        row = session.execute(query).first()
        if row is None:
            raise services.NotFound(f"{what} not found in a ready document of collection {collection_ref!r}")
        chunk, filename = row
        total = session.scalar(select(func.count()).where(Chunk.document_id == chunk.document_id)) or 0
    return ChunkView(chunk.id, chunk.document_id, filename, chunk.ordinal, int(total), chunk.text)
