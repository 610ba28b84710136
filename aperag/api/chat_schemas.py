"""Request and response bodies of the chat API (aperag.api.routes.chat)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from aperag.api.schemas import _no_control_characters
from aperag.text_rules import WORD


class ChatRequest(BaseModel):
    message: str = Field(
        min_length=1, max_length=4000, pattern=r"\w", description="the question; needs a letter or digit"
    )
    chat_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="continue this chat (its history goes to the model); omitted: a new chat is started",
    )
    stream: bool = Field(default=False, description="true: server-sent events (text/event-stream)")
    mode: Literal["vector", "fulltext", "hybrid", "graph"] = Field(default="hybrid", description="retrieval mode")
    include_graph: bool = Field(default=False, description="hybrid mode: fuse the knowledge graph's ranking too")
    top_k: int | None = Field(default=None, ge=1, le=50, description="chunks retrieved (default CHAT_TOP_K)")

    @field_validator("message")
    @classmethod
    def _message_text(cls, value: str) -> str:
        # The rules of a search query: the message is one.
        if not WORD.search(value):
            raise ValueError("message must contain a letter or digit, not only whitespace or punctuation")
        return _no_control_characters(value)


class SourceOut(BaseModel):
    n: int = Field(description="the number the answer cites it by: [n]")
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float


class CitationOut(BaseModel):
    n: int
    chunk_id: str
    document_id: str
    filename: str


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatOut(BaseModel):
    chat_id: str
    answer: str
    citations: list[CitationOut] = Field(description="the sources the answer cites, in order of first mention")
    unknown_citations: list[int] = Field(
        description="numbers the answer cited that were not among its sources (dropped from citations)"
    )
    sources: list[SourceOut] = Field(description="every chunk that was in the model's context")
    usage: UsageOut | None


class ChatUnavailableOut(BaseModel):
    detail: str
    chat_id: str | None = Field(default=None, description="absent when a store, not the model, was unreachable")
    sources: list[SourceOut] = Field(default_factory=list, description="what was retrieved: usable without an answer")


class MessageOut(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    citations: list[CitationOut] | None
    usage: UsageOut | None
    created_at: datetime


class ChatSummaryOut(BaseModel):
    id: str
    collection_id: str
    created_at: datetime
    updated_at: datetime


class ChatHistoryOut(ChatSummaryOut):
    messages: list[MessageOut]
