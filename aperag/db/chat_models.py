"""Conversation history of the chat API (revision 0005): one row per chat, one per message.

Kept apart from aperag.db.models so the chat feature's tables read as one unit; same metadata (Base).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from aperag.db.models import Base, new_id, utcnow


class Chat(Base):
    __tablename__ = "chats"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # Deleting a collection deletes its chats: their citations point at its chunks.
    collection_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("collections.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"

    # A sequence, not a uuid: the id orders a chat's messages, even two written in the same microsecond.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chat_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("chats.id", ondelete="CASCADE"), nullable=False, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # Assistant messages: the sources the answer cites ([{n, chunk_id, document_id, filename}]) and the
    # model's token usage, as they were when it answered (documents may change or go later).
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
