"""Conversation history per chat id, in PostgreSQL (tables of revision 0005)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from aperag.context import AppContext
from aperag.db.chat_models import Chat, ChatMessage
from aperag.db.models import new_id, utcnow
from aperag.services import NotFound

CHAT_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class StoredMessage:
    role: str
    content: str
    citations: list[dict[str, Any]] | None
    usage: dict[str, Any] | None
    created_at: datetime


def open_chat(ctx: AppContext, collection_id: str, chat_id: str | None) -> str:
    """The chat to continue (it must belong to the collection), or a new one when chat_id is None.

    A new chat is stored at once, before the model answers: a client whose first turn failed can retry
    with the id it was given."""
    if chat_id is None:
        chat = Chat(id=new_id(), collection_id=collection_id, created_at=utcnow(), updated_at=utcnow())
        with ctx.sessions.begin() as session:
            session.add(chat)
        return chat.id
    get_chat(ctx, collection_id, chat_id)
    return chat_id


def get_chat(ctx: AppContext, collection_id: str, chat_id: str) -> Chat:
    if not CHAT_ID.fullmatch(chat_id):
        raise NotFound(f"chat {chat_id[:100]!r} not found")
    with ctx.sessions() as session:
        chat = session.get(Chat, chat_id)
    if chat is None or chat.collection_id != collection_id:
        raise NotFound(f"chat {chat_id!r} not found in this collection")
    return chat


def list_chats(ctx: AppContext, collection_id: str) -> list[Chat]:
    with ctx.sessions() as session:
        return list(
            session.scalars(
                select(Chat).where(Chat.collection_id == collection_id).order_by(Chat.updated_at.desc())
            )
        )


def messages(ctx: AppContext, chat_id: str) -> list[StoredMessage]:
    with ctx.sessions() as session:
        rows = session.scalars(select(ChatMessage).where(ChatMessage.chat_id == chat_id).order_by(ChatMessage.id))
        return [StoredMessage(r.role, r.content, r.citations, r.usage, r.created_at) for r in rows]


def append_turn(
    ctx: AppContext,
    chat_id: str,
    question: str,
    answer: str,
    citations: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> None:
    """The question and its answer, together: a turn whose answer failed leaves no half in the history."""
    now = utcnow()
    with ctx.sessions.begin() as session:
        session.add(ChatMessage(chat_id=chat_id, role="user", content=question, created_at=now))
        session.add(
            ChatMessage(
                chat_id=chat_id, role="assistant", content=answer, citations=citations, usage=usage, created_at=now
            )
        )
        chat = session.get(Chat, chat_id)
        if chat is not None:
            chat.updated_at = now


def delete_chat(ctx: AppContext, collection_id: str, chat_id: str) -> None:
    get_chat(ctx, collection_id, chat_id)
    with ctx.sessions.begin() as session:
        session.execute(delete(Chat).where(Chat.id == chat_id))


@dataclass(frozen=True)
class ChatSummary:
    id: str
    title: str  # the chat's first question
    turns: int
    updated_at: datetime


def summaries(ctx: AppContext, collection_id: str, limit: int = 50) -> list[ChatSummary]:
    """The collection's chats that have at least one turn, the latest first, each titled by its first
    question (a chat whose first answer failed has none: there is nothing to show for it)."""
    first = (
        select(ChatMessage.content)
        .where(ChatMessage.chat_id == Chat.id, ChatMessage.role == "user")
        .order_by(ChatMessage.id)
        .limit(1)
        .scalar_subquery()
    )
    turns = (
        select(func.count())
        .where(ChatMessage.chat_id == Chat.id, ChatMessage.role == "user")
        .scalar_subquery()
    )
    query = (
        select(Chat.id, first, turns, Chat.updated_at)
        .where(Chat.collection_id == collection_id, turns > 0)
        .order_by(Chat.updated_at.desc(), Chat.id)
        .limit(limit)
    )
    with ctx.sessions() as session:
        return [ChatSummary(r[0], r[1] or "", int(r[2]), r[3]) for r in session.execute(query)]
