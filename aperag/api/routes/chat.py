"""`POST /api/v1/collections/{c}/chat`: a grounded answer with numbered citations, as JSON or as
server-sent events, and the chats' history (docs/app.md, "Chat")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event

from aperag import services
from aperag.api.chat_schemas import ChatHistoryOut, ChatOut, ChatRequest, ChatSummaryOut, ChatUnavailableOut, MessageOut
from aperag.api.deps import AUTH, CtxDep, LLMDep, llm_lifespan
from aperag.api.schemas import ErrorOut
from aperag.chat import conversation, history
from aperag.chat.retrieval import find_collection
from aperag.chat.service import GenerationFailed

# The chat model's client lives as long as the app (deps.llm_lifespan); the OpenAI-compatible routes
# share it.
router = APIRouter(prefix="/api/v1/collections/{collection}", tags=["chat"], dependencies=AUTH, lifespan=llm_lifespan)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a request body that is not UTF-8 JSON"},
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    404: {"model": ErrorOut, "description": "unknown collection or chat"},
    422: {"model": ErrorOut, "description": "malformed request"},
}
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "the chat model is rate limiting requests"},
    502: {"model": ErrorOut, "description": "the chat model failed, refused the request or sent a malformed answer"},
    503: {
        "model": ChatUnavailableOut,
        "description": "no chat model configured (the retrieved sources are in the body), or a store unreachable",
    },
    504: {"model": ErrorOut, "description": "the chat model did not answer in time"},
}
SSE_DOC = (
    "With `stream: true`: `text/event-stream` with the events `sources` ({chat_id, sources}), `delta`"
    " ({text}, many), then `done` ({chat_id, answer, citations, unknown_citations, usage}); a model failure"
    " after the first delta is an `error` event ({status, detail}) and ends the stream."
)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False))


@router.post(
    "/chat",
    response_model=ChatOut,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the answer (JSON), or its events. " + SSE_DOC},
        **ERRORS,
        **GENERATION_ERRORS,
    },
)
async def chat(collection: str, body: ChatRequest, ctx: CtxDep, llm: LLMDep) -> Response:
    coll = await find_collection(ctx, collection)
    top_k = body.top_k or ctx.settings.chat_top_k
    turn = await conversation.start(ctx, coll, body.message, body.chat_id, body.mode, top_k, body.include_graph)
    try:
        if not body.stream:
            return JSONResponse(await conversation.answer_whole(llm, turn))
        # The model is asked before the response starts: a model failing at once gets its own status.
        events = await conversation.open_stream(llm, turn)
    except GenerationFailed as exc:
        body_out = {"detail": exc.detail, "chat_id": turn.chat_id, "sources": turn.sources_json()}
        return JSONResponse(body_out, status_code=exc.status)

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for name, data in events:
                yield _sse(name, data)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # the client went away: close the model's stream now

    # no-cache and X-Accel-Buffering: proxies (nginx ingress) must pass events on as they come.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/chats", response_model=list[ChatSummaryOut], responses=ERRORS)
def list_chats(collection: str, ctx: CtxDep) -> list[ChatSummaryOut]:
    coll = services.get_collection(ctx, collection)
    return [ChatSummaryOut.model_validate(c, from_attributes=True) for c in history.list_chats(ctx, coll.id)]


@router.get("/chats/{chat_id}", response_model=ChatHistoryOut, responses=ERRORS)
def get_chat(collection: str, chat_id: str, ctx: CtxDep) -> ChatHistoryOut:
    coll = services.get_collection(ctx, collection)
    chat = history.get_chat(ctx, coll.id, chat_id)
    return ChatHistoryOut(
        id=chat.id,
        collection_id=chat.collection_id,
        created_at=chat.created_at,
        updated_at=chat.updated_at,
        messages=[MessageOut.model_validate(m, from_attributes=True) for m in history.messages(ctx, chat.id)],
    )


@router.delete("/chats/{chat_id}", status_code=204, responses=ERRORS)
def delete_chat(collection: str, chat_id: str, ctx: CtxDep) -> Response:
    coll = services.get_collection(ctx, collection)
    history.delete_chat(ctx, coll.id, chat_id)
    return Response(status_code=204)
