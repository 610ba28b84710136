"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from aperag.text_rules import UNSTORABLE, WORD


def _no_control_characters(value: str) -> str:
    found = UNSTORABLE.search(value)
    if found:
        raise ValueError(f"must not contain control characters or lone surrogates (found {found.group()!r})")
    return value


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)

    _check_text = field_validator("name", "description")(_no_control_characters)


class CollectionOut(BaseModel):
    id: str
    name: str
    description: str
    created_at: datetime
    documents: dict[str, int] = Field(default_factory=dict, description="document count per status")


class DocumentOut(BaseModel):
    id: str
    collection_id: str
    filename: str
    content_type: str
    size_bytes: int
    status: Literal["pending", "indexing", "ready", "failed"]
    error: str | None
    chunk_count: int
    attempts: int
    graph_status: str | None = Field(
        default=None,
        description="knowledge graph of the document: null (not built yet), pending, building, ready,"
        " partial (some chunks could not be extracted), failed, disabled",
    )
    graph_failed_chunks: int = Field(default=0, description="chunks whose graph extraction failed")
    graph_error: str | None = None
    created_at: datetime
    updated_at: datetime


class UploadOut(DocumentOut):
    duplicate: bool = Field(description="true when the same content was already in the collection")


class SearchRequest(BaseModel):
    query: str = Field(
        min_length=1, max_length=4000, pattern=r"\w", description="text to search for; needs a letter or digit"
    )
    mode: Literal["vector", "fulltext", "hybrid", "graph"] = "hybrid"
    top_k: int = Field(default=10, ge=1, le=100)
    include_graph: bool = Field(
        default=False, description="hybrid mode: fuse the graph's ranking as a third input (docs/app.md, Search)"
    )

    @field_validator("query")
    @classmethod
    def _query_text(cls, value: str) -> str:
        # A blank (or punctuation-only) query matches nothing in full-text search and an arbitrary
        # neighbourhood in vector search: refuse it rather than return noise.
        if not WORD.search(value):
            raise ValueError("query must contain a letter or digit, not only whitespace or punctuation")
        return _no_control_characters(value)


class SearchHit(BaseModel):
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    vector_rank: int | None
    fulltext_rank: int | None
    graph_rank: int | None = None


class GraphEntityOut(BaseModel):
    name: str
    type: str
    score: float = Field(description="1 for a name the query contains, else the embedding similarity")


class GraphRelationOut(BaseModel):
    source: str
    target: str
    description: str
    keywords: str
    score: float


class SearchGraphOut(BaseModel):
    entities: list[GraphEntityOut]
    relations: list[GraphRelationOut]


class SearchOut(BaseModel):
    mode: str
    results: list[SearchHit]
    timings_ms: dict[str, float]
    graph: SearchGraphOut | None = Field(
        default=None,
        description="graph mode, or hybrid with include_graph: the entities and relations the query matched,"
        " best first",
    )


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what was wrong: a sentence, or FastAPI's list of validation errors for a malformed request"
    )
