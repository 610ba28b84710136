"""A client for an OpenAI-compatible `/chat/completions` endpoint: one blocking (Celery workers) and one
asyncio (FastAPI handlers) flavour with the same behaviour.

- timeout: `LLM_TIMEOUT_SECONDS` for connecting and for each read (for a stream: between two events);
- retries: 429, 5xx, 408/409/425, timeouts and connection errors are retried up to `LLM_MAX_RETRIES`
  times with exponential backoff and full jitter, honouring Retry-After; any other 4xx is not;
- a stream is retried only until its first delta was handed out (after that a retry would repeat text);
- each call's usage is recorded in a TokenMeter and in Prometheus (aperag.metrics.LLM_*).

httpx rather than the `openai` package: httpx is already a dependency of the app, and the retry, timeout
and error behaviour above is ours to test rather than the SDK's defaults to override (docs/app.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from aperag import metrics
from aperag.config import Settings
from aperag.llm import protocol
from aperag.llm.accounting import TokenMeter
from aperag.llm.errors import LLMBadResponse, LLMError, LLMRequestRejected, LLMUnavailable, NotConfigured
from aperag.llm.protocol import RetryPolicy
from aperag.llm.types import ChatMessage, Completion, StreamDelta, Usage


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str = ""
    timeout_seconds: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def config_from_settings(settings: Settings) -> LLMConfig:
    """The chat endpoint of the settings; NotConfigured when LLM_API_BASE or LLM_MODEL is empty."""
    if not settings.llm_api_base or not settings.llm_model:
        raise NotConfigured("no chat model configured (set LLM_API_BASE and LLM_MODEL)")
    return LLMConfig(
        base_url=settings.llm_api_base,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout_seconds=settings.llm_timeout_seconds,
        retry=RetryPolicy(max_retries=settings.llm_max_retries, max_delay=settings.llm_retry_backoff_max),
    )


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, LLMUnavailable):
        return "unavailable"
    if isinstance(exc, LLMRequestRejected):
        return "rejected"
    if isinstance(exc, LLMBadResponse):
        return "bad_response"
    return "error"


def _transport_error(exc: httpx.TransportError, attempts: int) -> LLMUnavailable:
    timed_out = isinstance(exc, httpx.TimeoutException)
    kind = "timed out" if timed_out else "failed"
    return LLMUnavailable(
        f"chat request {kind} after {attempts} attempt(s): {type(exc).__name__}: {exc}",
        attempts=attempts,
        timed_out=timed_out,
    )


class _Base:
    def __init__(self, config: LLMConfig, meter: TokenMeter | None, rng: random.Random | None) -> None:
        self.config = config
        self.meter = meter or TokenMeter()
        self._rng = rng or random.Random()

    def _body(
        self,
        messages: Sequence[ChatMessage],
        stream: bool,
        temperature: float | None,
        max_tokens: int | None,
        json_mode: bool,
    ) -> dict[str, Any]:
        return protocol.request_body(
            self.config.model,
            messages,
            stream=stream,
            temperature=temperature,
            max_tokens=max_tokens,
            json_mode=json_mode,
        )

    def _should_retry(self, attempt: int) -> bool:
        return attempt <= self.config.retry.max_retries

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = protocol.retry_after_seconds(response.headers.get("retry-after")) if response else None
        return self.config.retry.delay(attempt - 1, retry_after, self._rng)

    def _finish(self, purpose: str, started: float, usage: Usage | None, exc: BaseException | None) -> None:
        metrics.LLM_REQUESTS.labels(purpose, _outcome(exc)).inc()
        metrics.LLM_SECONDS.labels(purpose).observe(time.perf_counter() - started)
        if usage is not None:
            self.meter.record(purpose, usage)


class LLMClient(_Base):
    """Blocking client; thread-safe (one httpx connection pool)."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        meter: TokenMeter | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, meter, rng)
        self._sleep = sleep
        self._http = httpx.Client(timeout=config.timeout_seconds, transport=transport, headers=config.headers())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        purpose: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> Completion:
        body = self._body(messages, False, temperature, max_tokens, json_mode)
        started = time.perf_counter()
        try:
            completion = self._complete(body, purpose)
        except LLMError as exc:
            self._finish(purpose, started, None, exc)
            raise
        self._finish(purpose, started, completion.usage, None)
        return completion

    def _complete(self, body: dict[str, Any], purpose: str) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.post(self.config.url, json=body)
            except httpx.TransportError as exc:
                if not self._should_retry(attempt):
                    raise _transport_error(exc, attempt) from exc
                metrics.LLM_RETRIES.labels(purpose).inc()
                self._sleep(self._delay(attempt, None))
                continue
            if response.status_code in protocol.RETRYABLE_STATUSES and self._should_retry(attempt):
                metrics.LLM_RETRIES.labels(purpose).inc()
                self._sleep(self._delay(attempt, response))
                continue
            protocol.check_status(response.status_code, response.text, attempt)
            return protocol.parse_completion(response.text, attempt, self.config.model)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        purpose: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[StreamDelta]:
        """Deltas of the answer as they arrive; the last one has `done=True` and the usage."""
        body = self._body(messages, True, temperature, max_tokens, False)
        started = time.perf_counter()
        usage: Usage | None = None
        try:
            for delta in self._stream(body, purpose):
                if delta.done:
                    usage = delta.usage or Usage()
                yield delta
        except LLMError as exc:
            self._finish(purpose, started, None, exc)
            raise
        self._finish(purpose, started, usage, None)

    def _stream(self, body: dict[str, Any], purpose: str) -> Iterator[StreamDelta]:
        attempt = 0
        while True:
            attempt += 1
            yielded = False
            try:
                with self._http.stream("POST", self.config.url, json=body) as response:
                    if response.status_code in protocol.RETRYABLE_STATUSES and self._should_retry(attempt):
                        response.read()
                        metrics.LLM_RETRIES.labels(purpose).inc()
                        self._sleep(self._delay(attempt, response))
                        continue
                    if not 200 <= response.status_code < 300:
                        protocol.check_status(response.status_code, response.read().decode(errors="replace"), attempt)
                    parser = protocol.StreamParser()
                    for line in response.iter_lines():
                        delta = parser.feed(line)
                        if delta is not None:
                            yielded = True
                            yield delta
                        if parser.done:
                            break
                    yield parser.final()
                    return
            except httpx.TransportError as exc:
                if yielded or not self._should_retry(attempt):
                    raise _transport_error(exc, attempt) from exc
                metrics.LLM_RETRIES.labels(purpose).inc()
                self._sleep(self._delay(attempt, None))


class AsyncLLMClient(_Base):
    """The asyncio flavour, for request handlers (streaming answers to a client)."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        meter: TokenMeter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, meter, rng)
        self._http = httpx.AsyncClient(timeout=config.timeout_seconds, transport=transport, headers=config.headers())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        purpose: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> Completion:
        body = self._body(messages, False, temperature, max_tokens, json_mode)
        started = time.perf_counter()
        try:
            completion = await self._complete(body, purpose)
        except LLMError as exc:
            self._finish(purpose, started, None, exc)
            raise
        self._finish(purpose, started, completion.usage, None)
        return completion

    async def _complete(self, body: dict[str, Any], purpose: str) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post(self.config.url, json=body)
            except httpx.TransportError as exc:
                if not self._should_retry(attempt):
                    raise _transport_error(exc, attempt) from exc
                metrics.LLM_RETRIES.labels(purpose).inc()
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in protocol.RETRYABLE_STATUSES and self._should_retry(attempt):
                metrics.LLM_RETRIES.labels(purpose).inc()
                await asyncio.sleep(self._delay(attempt, response))
                continue
            protocol.check_status(response.status_code, response.text, attempt)
            return protocol.parse_completion(response.text, attempt, self.config.model)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        purpose: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Deltas of the answer as they arrive; the last one has `done=True` and the usage."""
        body = self._body(messages, True, temperature, max_tokens, False)
        started = time.perf_counter()
        usage: Usage | None = None
        try:
            async for delta in self._stream(body, purpose):
                if delta.done:
                    usage = delta.usage or Usage()
                yield delta
        except LLMError as exc:
            self._finish(purpose, started, None, exc)
            raise
        self._finish(purpose, started, usage, None)

    async def _stream(self, body: dict[str, Any], purpose: str) -> AsyncIterator[StreamDelta]:
        attempt = 0
        while True:
            attempt += 1
            yielded = False
            try:
                async with self._http.stream("POST", self.config.url, json=body) as response:
                    if response.status_code in protocol.RETRYABLE_STATUSES and self._should_retry(attempt):
                        await response.aread()
                        metrics.LLM_RETRIES.labels(purpose).inc()
                        await asyncio.sleep(self._delay(attempt, response))
                        continue
                    if not 200 <= response.status_code < 300:
                        text = (await response.aread()).decode(errors="replace")
                        protocol.check_status(response.status_code, text, attempt)
                    parser = protocol.StreamParser()
                    async for line in response.aiter_lines():
                        delta = parser.feed(line)
                        if delta is not None:
                            yielded = True
                            yield delta
                        if parser.done:
                            break
                    yield parser.final()
                    return
            except httpx.TransportError as exc:
                if yielded or not self._should_retry(attempt):
                    raise _transport_error(exc, attempt) from exc
                metrics.LLM_RETRIES.labels(purpose).inc()
                await asyncio.sleep(self._delay(attempt, None))
