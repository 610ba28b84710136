"""The values the LLM client takes and returns (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def as_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, as the endpoint reported them (zeros when it reported none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str | None
    usage: Usage
    model: str
    # HTTP requests this call took (1 = no retry).
    attempts: int = 1


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed answer. The last item of a stream has `done=True`, the finish reason and
    the usage (when the endpoint sent it), and no content."""

    content: str = ""
    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
