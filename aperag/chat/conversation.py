"""One turn of a stored chat: open (or continue) the chat, retrieve with its history, answer (whole or
streamed), remember the turn, and the JSON payloads of the outcome.

Shared by the chat API (aperag.api.routes.chat: JSON or server-sent events) and the web console's chat
page (aperag.console.routes.chat), so both remember turns the same way: a turn is stored only once its
answer is complete (a failed answer leaves no half in the history).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from aperag.chat import history
from aperag.chat.prompt import Turn
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
from aperag.context import AppContext
from aperag.db.models import Collection
from aperag.llm import AsyncLLMClient

# An event of a streamed turn: (name, data). Names: "sources", "delta" (many), then "done" or "error".
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class StartedTurn:
    """A question placed in its chat, with the sources and messages the model will be given."""

    ctx: AppContext
    chat_id: str
    question: str
    prepared: Prepared

    def sources_json(self) -> list[dict[str, Any]]:
        return [source_json(s) for s in self.prepared.sources]


async def start(
    ctx: AppContext,
    collection: Collection,
    question: str,
    chat_id: str | None,
    mode: str,
    top_k: int,
    include_graph: bool = False,
) -> StartedTurn:
    """Opens the chat (a new one when chat_id is None; services.NotFound when it is not this collection's),
    reads its history and retrieves the sources."""
    chat_id = await run_in_threadpool(history.open_chat, ctx, collection.id, chat_id)
    past = await run_in_threadpool(history.messages, ctx, chat_id)
    turns = [Turn(m.role, m.content) for m in past]
    prepared = await prepare(ctx, collection, question, turns, mode, top_k, include_graph)
    return StartedTurn(ctx, chat_id, question, prepared)


def done_json(turn: StartedTurn, ans: Answer) -> dict[str, Any]:
    """The outcome of a turn: the chat, the answer, what it cites (and cited without having it), the
    sources it was given and the model's token usage."""
    return {
        "chat_id": turn.chat_id,
        "answer": ans.text,
        "citations": [citation_json(s) for s in ans.citations.cited],
        "unknown_citations": ans.citations.unknown,
        "sources": turn.sources_json(),
        "usage": usage_json(ans.usage),
    }


async def remember(turn: StartedTurn, ans: Answer) -> None:
    await run_in_threadpool(
        history.append_turn,
        turn.ctx,
        turn.chat_id,
        turn.question,
        ans.text,
        [citation_json(s) for s in ans.citations.cited],
        usage_json(ans.usage),
    )


async def answer_whole(llm: AsyncLLMClient | None, turn: StartedTurn) -> dict[str, Any]:
    """The whole answer, remembered; its done_json. Raises GenerationFailed (nothing is remembered)."""
    ans = await answer(llm, turn.prepared)
    await remember(turn, ans)
    return done_json(turn, ans)


async def open_stream(llm: AsyncLLMClient | None, turn: StartedTurn) -> AsyncGenerator[Event, None]:
    """The turn's events: "sources", "delta" ({text}, many), then "done" (done_json, once remembered) or
    "error" ({status, detail}: the model failed after its first delta).

    The model is asked here, before any event: a model failing at once raises GenerationFailed, so a
    caller that has not started its response yet can answer with the failure's own status. Close the
    returned generator (aclose) when the client goes away: that closes the model's stream."""
    events = stream_answer(llm, turn.prepared)
    first = await anext(events)  # GenerationFailed propagates: the generator is finished
    return _events(turn, events, first)


async def _events(
    turn: StartedTurn, events: AsyncGenerator[Delta | Answer, None], first: Delta | Answer
) -> AsyncGenerator[Event, None]:
    try:
        yield "sources", {"chat_id": turn.chat_id, "sources": turn.sources_json()}
        item = first
        while isinstance(item, Delta):
            yield "delta", {"text": item.text}
            item = await anext(events)
        await remember(turn, item)
        yield "done", done_json(turn, item)
    except GenerationFailed as exc:
        yield "error", {"status": exc.status, "detail": exc.detail}
    finally:
        # Shielded: when the client went away the task is cancelled, and the model's stream must still
        # be closed now (it would otherwise generate for nobody until garbage collection).
        with anyio.CancelScope(shield=True):
            await events.aclose()
