"""The collection's chat page: the collection's chats, one conversation, and the question form.

With JavaScript (static/chat.js) a question is posted with `Accept: text/event-stream` and the answer
streams in as server-sent events: "sources", "delta" (many), then "done" or "error", the events of the
chat API (aperag.chat.conversation) with the links to the cited chunks added. Without it, the form posts
and the page comes back with the whole answer. Either way the turn is remembered in the chat's history
(hidden field `chat_id`), exactly as the chat API remembers it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from starlette.concurrency import run_in_threadpool

from aperag import services
from aperag.chat import conversation, history
from aperag.chat.citations import segments
from aperag.chat.retrieval import find_collection
from aperag.chat.service import GenerationFailed
from aperag.console import deps
from aperag.context import AppContext
from aperag.db.models import Collection
from aperag.llm import AsyncLLMClient
from aperag.text_rules import text_problem

router = APIRouter(dependencies=deps.SIGNED_IN)

MAX_QUESTION = 4000
MODE = "hybrid"
EXCERPT_CHARS = 280
# Control characters other than tab, newline and carriage return (a textarea has those), lone surrogates.

NO_MODEL_MESSAGE = (
    "No chat model is configured, so no answer can be generated. Set LLM_API_BASE (an OpenAI-compatible"
    " endpoint ending in /v1) and LLM_MODEL, and LLM_API_KEY if the model needs one, in the app's"
    " configuration (app.config of the ApeRAG resource). Until then, asking shows the sources a model"
    " would be given."
)


def _llm(request: Request) -> AsyncLLMClient | None:
    """The app's client of the chat model, opened with the app (the chat API's lifespan); None when no
    model is configured."""
    llm: AsyncLLMClient | None = getattr(request.app.state, "llm", None)
    return llm


def _failure_message(exc: GenerationFailed) -> str:
    if exc.status == 503:
        return NO_MODEL_MESSAGE
    detail = exc.detail[:1].upper() + exc.detail[1:]
    return f"No answer: {detail}. Your question is still in the box below: ask again, perhaps in a moment."


def _href(collection_id: str, document_id: str, ordinal: int | None) -> str:
    anchor = f"#chunk-{ordinal}" if ordinal is not None else ""
    return f"{deps.PREFIX}/collections/{collection_id}/documents/{document_id}{anchor}"


@dataclass(frozen=True)
class SourceView:
    n: int
    filename: str
    document_id: str
    ordinal: int | None
    href: str
    excerpt: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "n": self.n, "filename": self.filename, "document_id": self.document_id, "chunk": self.ordinal,
            "href": self.href, "excerpt": self.excerpt,
        }  # fmt: skip


@dataclass(frozen=True)
class TurnView:
    index: int
    question: str
    segments: list[tuple[str, int | None]]
    sources: list[SourceView] = field(default_factory=list)  # those the answer cites


def _source_views(ctx: AppContext, collection_id: str, items: list[dict[str, Any]]) -> list[SourceView]:
    """Sources or citations as the chat stores and streams them ({n, chunk_id, document_id, filename,
    text?}), with their links."""
    ordinals = services.chunk_ordinals(ctx, list({i["chunk_id"] for i in items}))
    views = []
    for i in items:
        ordinal = ordinals.get(i["chunk_id"])
        text = " ".join(str(i.get("text", "")).split())
        excerpt = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " …"
        href = _href(collection_id, i["document_id"], ordinal)
        views.append(SourceView(i["n"], i["filename"], i["document_id"], ordinal, href, excerpt))
    return views


def _turns(ctx: AppContext, collection_id: str, chat_id: str) -> list[TurnView]:
    stored = history.messages(ctx, chat_id)
    turns: list[TurnView] = []
    for question, reply in zip(stored[0::2], stored[1::2], strict=False):
        cited = _source_views(ctx, collection_id, reply.citations or [])
        turns.append(
            TurnView(len(turns) + 1, question.content, segments(reply.content, [s.n for s in cited]), cited)
        )
    return turns


def _page_context(ctx: AppContext, request: Request, collection: Collection, chat_id: str | None) -> dict[str, Any]:
    return {
        "collection": collection,
        "tab": "chat",
        "chats": [replace(c, updated_at=c.updated_at.astimezone(UTC)) for c in history.summaries(ctx, collection.id)],
        "chat_id": chat_id,
        "turns": _turns(ctx, collection.id, chat_id) if chat_id else [],
        "no_model": _llm(request) is None,
        "no_model_message": NO_MODEL_MESSAGE,
        "question": "",
        "error": None,
        "retrieved": [],
        "max_question": MAX_QUESTION,
    }


@router.get("/collections/{ref}/chat")
def chat_page(request: Request, ctx: deps.CtxDep, ref: str, chat: str | None = None) -> Response:
    collection = services.get_collection(ctx, ref)
    if chat:
        history.get_chat(ctx, collection.id, chat)  # services.NotFound: the 404 page
    return deps.render(request, "chat.html", _page_context(ctx, request, collection, chat or None))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False))


@router.post("/collections/{ref}/chat")
async def ask(
    request: Request,
    ctx: deps.CtxDep,
    ref: str,
    question: Annotated[str, Form()] = "",
    chat_id: Annotated[str, Form()] = "",
) -> Response:
    collection = await find_collection(ctx, ref)
    streaming = "text/event-stream" in request.headers.get("accept", "")
    question = question.strip()
    current = chat_id.strip() or None

    async def page(status: int, error: str | None, keep: str = "", retrieved: list[SourceView] | None = None) -> Response:  # noqa: E501
        context = await run_in_threadpool(_page_context, ctx, request, collection, current)
        context.update(question=keep, error=error, retrieved=retrieved or [])
        return deps.render(request, "chat.html", context, status)

    problem = "Enter a question." if not question else text_problem(question, what="question", limit=MAX_QUESTION)
    if problem is None and current is not None:
        try:
            await run_in_threadpool(history.get_chat, ctx, collection.id, current)
        except services.NotFound:
            current = None
            problem = "This conversation no longer exists (it may have been deleted): the question starts a new chat when asked again."  # noqa: E501
    if problem is not None:
        if streaming:
            return JSONResponse({"detail": problem}, status_code=400)
        return await page(400, problem, question)

    turn = await conversation.start(ctx, collection, question, current, MODE, ctx.settings.chat_top_k)
    current = turn.chat_id
    sources = await run_in_threadpool(_source_views, ctx, collection.id, turn.sources_json())
    by_n = {s.n: s for s in sources}
    llm = _llm(request)
    if not streaming:
        try:
            await conversation.answer_whole(llm, turn)
        except GenerationFailed as exc:
            return await page(exc.status, _failure_message(exc), question, sources)
        return await page(200, None)

    sources_event = {"chat_id": turn.chat_id, "sources": [s.json() for s in sources]}

    def console_event(name: str, data: dict[str, Any]) -> bytes:
        if name == "sources":
            data = sources_event
        elif name == "done":
            cited = [by_n[c["n"]].json() for c in data["citations"] if c["n"] in by_n]
            data = {"chat_id": data["chat_id"], "answer": data["answer"], "citations": cited,
                    "unknown_citations": data["unknown_citations"]}  # fmt: skip
        elif name == "error":
            data = {**data, "message": _failure_message(GenerationFailed(data["status"], data["detail"]))}
        return _sse(name, data)

    try:
        events = await conversation.open_stream(llm, turn)
    except GenerationFailed as exc:
        failed = {"status": exc.status, "detail": exc.detail}

        async def failure() -> AsyncIterator[bytes]:
            yield console_event("sources", sources_event)
            yield console_event("error", failed)

        return StreamingResponse(failure(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for name, data in events:
                yield console_event(name, data)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
