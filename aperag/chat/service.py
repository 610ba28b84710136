"""One grounded answer: retrieve, place the sources within the budget, ask the model, resolve citations.

Shared by the chat API (history in PostgreSQL) and the OpenAI-compatible endpoint (history sent by the
client). The model is aperag.llm's client; its typed errors become `GenerationFailed` with the HTTP
status to answer, so no model failure reaches a client as a 500.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from starlette.concurrency import run_in_threadpool

from aperag.chat.citations import Citations, resolve
from aperag.chat.prompt import Source, Turn, build_messages, recent_history, select_sources
from aperag.chat.retrieval import search_async
from aperag.context import AppContext
from aperag.db.models import Collection
from aperag.llm import (
    AsyncLLMClient,
    ChatMessage,
    LLMBadResponse,
    LLMError,
    LLMRequestRejected,
    LLMUnavailable,
    NotConfigured,
    Usage,
)
from aperag.llm.types import Role


class GenerationFailed(Exception):
    """The answer could not be generated; `status` is what the API answers (the sources are still given)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


NO_MODEL = (
    "no chat model is configured (set LLM_API_BASE and LLM_MODEL): the retrieved sources are returned,"
    " but no answer is generated"
)


def generation_failure(exc: LLMError) -> GenerationFailed:
    """The HTTP status and message for a failure of the model (never a 500: none of these is our bug)."""
    if isinstance(exc, NotConfigured):
        return GenerationFailed(503, NO_MODEL)
    if isinstance(exc, LLMUnavailable):
        if exc.status == 429:
            return GenerationFailed(429, f"the chat model is rate limiting requests; retry later ({exc})")
        if exc.timed_out:
            return GenerationFailed(504, f"the chat model did not answer in time ({exc})")
        return GenerationFailed(502, f"the chat model is unavailable ({exc})")
    if isinstance(exc, LLMRequestRejected):
        return GenerationFailed(502, f"the chat model refused the request ({exc})")
    if isinstance(exc, LLMBadResponse):
        return GenerationFailed(502, f"the chat model sent a malformed answer ({exc})")
    return GenerationFailed(502, f"the chat model failed ({exc})")


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the model is asked."""

    collection: Collection
    question: str
    sources: list[Source]
    messages: list[ChatMessage]


@dataclass(frozen=True)
class Answer:
    text: str
    citations: Citations
    usage: Usage | None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Delta:
    text: str


def _counter(ctx: AppContext) -> Any:
    tokenizer = ctx.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


async def prepare(
    ctx: AppContext,
    collection: Collection,
    question: str,
    history: Sequence[Turn],
    mode: str,
    top_k: int,
    include_graph: bool = False,
) -> Prepared:
    found = await search_async(ctx, collection, question, mode, top_k, include_graph)

    def build() -> tuple[list[Source], list[Turn]]:
        # Tokenising is CPU work: off the event loop with the rest.
        count = _counter(ctx)
        sources = select_sources(found.results, ctx.settings.chat_context_tokens, count)
        return sources, recent_history(history, ctx.settings.chat_history_tokens, count)

    sources, kept = await run_in_threadpool(build)
    messages = [ChatMessage(cast(Role, m["role"]), m["content"]) for m in build_messages(sources, kept, question)]
    return Prepared(collection, question, sources, messages)


def require_model(llm: AsyncLLMClient | None) -> AsyncLLMClient:
    if llm is None:
        raise GenerationFailed(503, NO_MODEL)
    return llm


async def answer(llm: AsyncLLMClient | None, prepared: Prepared) -> Answer:
    model = require_model(llm)
    try:
        completion = await model.complete(prepared.messages, purpose="chat")
    except LLMError as exc:
        raise generation_failure(exc) from exc
    return Answer(
        completion.content, resolve(completion.content, prepared.sources), completion.usage, completion.finish_reason
    )


async def stream_answer(llm: AsyncLLMClient | None, prepared: Prepared) -> AsyncGenerator[Delta | Answer, None]:
    """Deltas of the answer, then the whole Answer. Raises GenerationFailed (before or after deltas)."""
    model = require_model(llm)
    parts: list[str] = []
    try:
        async for delta in model.stream(prepared.messages, purpose="chat"):
            if delta.done:
                text = "".join(parts)
                yield Answer(text, resolve(text, prepared.sources), delta.usage, delta.finish_reason)
                return
            parts.append(delta.content)
            yield Delta(delta.content)
    except LLMError as exc:
        raise generation_failure(exc) from exc
    raise GenerationFailed(502, "the chat model's stream ended without a final event")


def source_json(s: Source) -> dict[str, Any]:
    return {
        "n": s.n,
        "chunk_id": s.chunk_id,
        "document_id": s.document_id,
        "filename": s.filename,
        "text": s.text,
        "score": s.score,
    }


def citation_json(s: Source) -> dict[str, Any]:
    return {"n": s.n, "chunk_id": s.chunk_id, "document_id": s.document_id, "filename": s.filename}


def usage_json(u: Usage | None) -> dict[str, int] | None:
    if u is None:
        return None
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}
