"""Typed failures of the LLM client, so callers decide per kind: retry later, mark the input, or fall back."""

from __future__ import annotations


class LLMError(RuntimeError):
    """Any failure of a chat-completion call."""


class NotConfigured(LLMError):
    """No chat endpoint is configured (LLM_API_BASE / LLM_MODEL unset): callers use their offline path."""


class LLMUnavailable(LLMError):
    """The endpoint could not answer: connection errors, timeouts, 429 or 5xx after every retry.

    Transient by nature; a task may retry it later."""

    def __init__(
        self, message: str, *, status: int | None = None, attempts: int = 1, timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        # The last attempt ran out of LLM_TIMEOUT_SECONDS (the chat API answers 504 rather than 502).
        self.timed_out = timed_out


class LLMRequestRejected(LLMError):
    """The endpoint refused the request itself (a 4xx other than 429: bad key, unknown model, too long).

    Retrying the same request cannot help, so the client never does."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class LLMBadResponse(LLMError):
    """The endpoint answered 2xx with something that is not an OpenAI-compatible completion
    (malformed JSON, missing fields, a broken event stream)."""
