"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


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
    created_at: datetime
    updated_at: datetime


class UploadOut(DocumentOut):
    duplicate: bool = Field(description="true when the same content was already in the collection")


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    mode: Literal["vector", "fulltext", "hybrid"] = "hybrid"
    top_k: int = Field(default=10, ge=1, le=100)


class SearchHit(BaseModel):
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    vector_rank: int | None
    fulltext_rank: int | None


class SearchOut(BaseModel):
    mode: str
    results: list[SearchHit]
    timings_ms: dict[str, float]


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]
