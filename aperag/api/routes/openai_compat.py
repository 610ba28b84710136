"""An OpenAI-compatible chat API over the collections, so existing OpenAI clients work unchanged:
`base_url=<api>/v1`, `api_key=<an APERAG_API_KEYS key>`, `model=<collection>` (docs/app.md, "OpenAI-compatible
API").

The model name selects the collection: its name or id, optionally with `@<mode>` for the retrieval mode
(`docs@fulltext`; hybrid by default). `@` cannot occur in a collection name, so the split is unambiguous.
The client keeps the history (as with OpenAI): earlier messages go to the model, the last user message is
the question. Answers carry a `citations` field beside the standard ones, which OpenAI clients keep
(the python client: `completion.model_extra["citations"]`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from aperag import services
from aperag.api.deps import AUTH, CtxDep, LLMDep
from aperag.api.schemas import ErrorOut
from aperag.chat.prompt import Turn
from aperag.chat.retrieval import find_collection
from aperag.chat.service import (
    Answer,
    Delta,
    GenerationFailed,
    Prepared,
    answer,
    citation_json,
    prepare,
    source_json,
    stream_answer,
    usage_json,
)
from aperag.db.models import new_id
from aperag.search import MODES
from aperag.text_rules import UNSTORABLE, WORD

router = APIRouter(prefix="/v1", tags=["openai-compatible"], dependencies=AUTH)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... are accepted and ignored

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class CompletionRequest(BaseModel):
    # temperature, max_tokens, stream_options, user, ... are accepted; the answer uses the server's settings.
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, max_length=250, description="a collection's name or id, optionally `@<mode>` or `@hybrid+graph`"
    )
    messages: list[Message] = Field(min_length=1, max_length=200)
    stream: bool = False


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorBody


class BadRequestOut(BaseModel):
    """A 400: OpenAI's shape from this API, or FastAPI's `detail` for a body that cannot be parsed."""

    error: OpenAIErrorBody | None = None
    detail: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": BadRequestOut, "description": "no usable question, or a body that is not UTF-8 JSON"},
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    404: {"model": OpenAIErrorOut, "description": "the model names no collection"},
    422: {"model": ErrorOut, "description": "malformed request"},
    429: {"model": OpenAIErrorOut, "description": "the chat model is rate limiting requests"},
    502: {"model": OpenAIErrorOut, "description": "the chat model failed or sent a malformed answer"},
    503: {"model": OpenAIErrorOut, "description": "no chat model configured (`context` holds the retrieved sources)"},
    504: {"model": OpenAIErrorOut, "description": "the chat model did not answer in time"},
}
_TYPES = {
    400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"
}  # fmt: skip


def _error(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    kind = _TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}, **extra}, status_code=status)


def _split_model(model: str) -> tuple[str, str, bool]:
    """(collection, mode, include_graph) of `name`, `name@mode` or `name@hybrid+graph` (hybrid fused with
    the knowledge graph's ranking)."""
    name, _, suffix = model.partition("@")
    if suffix == "hybrid+graph":
        return name, "hybrid", True
    return name, suffix or "hybrid", False


def _question_and_history(messages: list[Message]) -> tuple[str, list[Turn]]:
    """The last user message is the question; earlier user/assistant messages are the history (system
    messages are the client's instructions, replaced by ours: answer from the sources only)."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise ValueError("messages must contain a user message (the question)")
    question = messages[last].text().strip()
    if not WORD.search(question) or UNSTORABLE.search(question):
        raise ValueError("the last user message must be text with a letter or digit and no control characters")
    turns = [Turn(m.role, m.text()) for m in messages[:last] if m.role in ("user", "assistant") and m.text()]
    return question[:4000], turns


def _extra(prepared: Prepared, ans: Answer) -> dict[str, Any]:
    return {
        "citations": [citation_json(s) for s in ans.citations.cited],
        "sources": [source_json(s) for s in prepared.sources],
    }


@router.get("/models", responses={401: ERRORS[401]})
def list_models(ctx: CtxDep) -> dict[str, Any]:
    """Every collection, as a model (`<name>`; add `@vector`, `@fulltext`, `@graph` or `@hybrid+graph`)."""
    return {
        "object": "list",
        "data": [
            {"id": c.name, "object": "model", "created": int(c.created_at.timestamp()), "owned_by": "aperag"}
            for c in services.list_collections(ctx)
        ],
    }


@router.post(
    "/chat/completions",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "a chat.completion, or its chunks (stream)"},
        **ERRORS,
    },
)
async def chat_completions(body: CompletionRequest, ctx: CtxDep, llm: LLMDep) -> Response:
    name, mode, include_graph = _split_model(body.model)
    if mode not in MODES:
        return _error(404, f"model {body.model!r}: unknown retrieval mode {mode!r} (one of {', '.join(MODES)})",
                      "model_not_found")  # fmt: skip
    try:
        question, turns = _question_and_history(body.messages)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        coll = await find_collection(ctx, name)
    except services.NotFound:
        return _error(404, f"model {body.model!r} names no collection (GET /v1/models lists them)", "model_not_found")
    prepared = await prepare(ctx, coll, question, turns, mode, ctx.settings.chat_top_k, include_graph)
    completion_id = "chatcmpl-" + new_id()
    created = int(time.time())
    try:
        if not body.stream:
            ans = await answer(llm, prepared)
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": ans.finish_reason or "stop"}],
                "usage": usage_json(ans.usage), **_extra(prepared, ans),
            })  # fmt: skip
        events = stream_answer(llm, prepared)
        first = await anext(events)
    except GenerationFailed as exc:
        return _error(exc.status, exc.detail, context=[source_json(s) for s in prepared.sources])

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        payload = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra,
        }  # fmt: skip
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    options = (body.model_extra or {}).get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            item = first
            while isinstance(item, Delta):
                yield chunk({"content": item.text})
                item = await anext(events)
            yield chunk({}, item.finish_reason or "stop", **_extra(prepared, item))
            if include_usage:
                payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": body.model, "choices": [], "usage": usage_json(item.usage)}  # fmt: skip
                yield f"data: {json.dumps(payload)}\n\n".encode()
        except GenerationFailed as exc:
            # OpenAI's own form of a failure mid-stream: its clients raise it as an APIError.
            error = {"error": {"message": exc.detail, "type": "server_error", "code": str(exc.status)}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        finally:
            # Shielded: when the client went away the task is cancelled, and the model's stream must
            # still be closed now (it would otherwise generate for nobody until garbage collection).
            with anyio.CancelScope(shield=True):
                await events.aclose()
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

