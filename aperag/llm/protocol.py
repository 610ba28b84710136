"""The OpenAI chat-completions wire format and the retry policy, as pure functions (no I/O), shared by
the blocking and the asyncio client."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aperag.llm.errors import LLMBadResponse, LLMRequestRejected, LLMUnavailable
from aperag.llm.types import ChatMessage, Completion, StreamDelta, Usage

# Statuses worth another attempt: rate limiting and the server's own failures. Any other 4xx means
# the request itself is wrong, and the same request would fail again.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
    attempt n waits uniform(0, min(max_delay, base * 2**n)), so many workers throttled together do not
    come back in step. A Retry-After header wins over the computed delay, capped at `max_delay`."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**retry)))


def request_body(
    model: str,
    messages: Sequence[ChatMessage],
    *,
    stream: bool,
    temperature: float | None,
    max_tokens: int | None,
    json_mode: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [m.as_json() for m in messages], "stream": stream}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    if stream:
        # Asks the endpoint for a last event with the usage (OpenAI, vLLM); others ignore it.
        body["stream_options"] = {"include_usage": True}
    return body


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def check_status(status: int, body: str, attempts: int) -> None:
    """Raise the typed error for a non-2xx status (the caller has decided not to retry it)."""
    if 200 <= status < 300:
        return
    if status in RETRYABLE_STATUSES:
        raise LLMUnavailable(
            f"chat endpoint answered {status} after {attempts} attempt(s): {_excerpt(body)}",
            status=status,
            attempts=attempts,
        )
    raise LLMRequestRejected(f"chat endpoint rejected the request ({status}): {_excerpt(body)}", status=status)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt, completion = raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        raise LLMBadResponse(f"usage holds non-integer token counts: {_excerpt(json.dumps(raw))}")
    return Usage(prompt, completion)


def _load_json(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LLMBadResponse(f"{what} is not JSON ({exc}): {_excerpt(text)}") from exc
    if not isinstance(data, dict):
        raise LLMBadResponse(f"{what} is not a JSON object: {_excerpt(text)}")
    return data


def parse_completion(text: str, attempts: int, fallback_model: str) -> Completion:
    data = _load_json(text, "the completion")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMBadResponse(f"the completion has no choices: {_excerpt(text)}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        # null content happens with tool calls or a refusal; this client asks for neither.
        raise LLMBadResponse(f"the completion's first choice has no text content: {_excerpt(text)}")
    finish = choices[0].get("finish_reason")
    model = data.get("model")
    return Completion(
        content=content,
        finish_reason=finish if isinstance(finish, str) else None,
        usage=_usage(data.get("usage")),
        model=model if isinstance(model, str) else fallback_model,
        attempts=attempts,
    )


class StreamParser:
    """Turns the lines of a `text/event-stream` completion into deltas.

    Only `data:` fields matter to OpenAI-compatible streams; comments (`:`) and other fields are skipped.
    The stream ends with `data: [DONE]`; the usage comes in an event whose `choices` is empty."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, line: str) -> StreamDelta | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        event = _load_json(payload, "a stream event")
        if "error" in event:
            raise LLMUnavailable(f"the stream reported an error: {_excerpt(payload)}")
        if event.get("usage") is not None:
            self.usage = _usage(event["usage"])
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise LLMBadResponse(f"a stream event has no choices: {_excerpt(payload)}")
        if not choices:
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            raise LLMBadResponse(f"a stream event has a malformed choice: {_excerpt(payload)}")
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise LLMBadResponse(f"a stream event's content is not text: {_excerpt(payload)}")
        return StreamDelta(content=content) if content else None

    def final(self) -> StreamDelta:
        if not self.done and self.finish_reason is None:
            # The connection closed mid-answer: the endpoint's failure, not a malformed answer.
            raise LLMUnavailable("the stream ended before [DONE] or a finish reason")
        return StreamDelta(done=True, finish_reason=self.finish_reason, usage=self.usage)
