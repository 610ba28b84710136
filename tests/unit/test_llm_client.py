"""The LLM client against the scripted OpenAI-compatible server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from aperag.config import ConfigError, load_settings
from aperag.llm import (
    AsyncLLMClient,
    ChatMessage,
    LLMBadResponse,
    LLMClient,
    LLMConfig,
    LLMRequestRejected,
    LLMUnavailable,
    NotConfigured,
    RetryPolicy,
    TokenMeter,
    client_from_settings,
)
from aperag.llm.protocol import retry_after_seconds
from tests.scripted_llm import CutStream, Disconnect, Fail, Malformed, Reply, Rule, ScriptedLLM

HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "hello there")]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


class Sleeps:
    """Records the delays instead of sleeping, so backoff is asserted exactly and tests stay fast."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client(llm: ScriptedLLM, sleeps: Sleeps, *, retries: int = 3, timeout: float = 5.0) -> LLMClient:
    config = LLMConfig(
        base_url=llm.base_url,
        model="m",
        api_key="k",
        timeout_seconds=timeout,
        retry=RetryPolicy(max_retries=retries, base_delay=0.5, max_delay=10.0),
    )
    return LLMClient(config, sleep=sleeps, rng=random.Random(7))


def test_completion_returns_text_usage_and_counts_tokens(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Reply("hi, how can I help")]))
    with client(llm, Sleeps()) as c:
        answer = c.complete(HELLO, purpose="test", temperature=0.0, json_mode=True)
        c.complete(HELLO, purpose="test")
    assert answer.content == "hi, how can I help"
    assert answer.finish_reason == "stop" and answer.attempts == 1 and answer.model == "scripted-model"
    # The scripted server counts one token per word: "Be brief. hello there" and the answer's 5 words.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 5)
    assert c.meter.calls("test") == 2 and c.meter.usage("test").total_tokens == 18
    sent = llm.requests[0]
    assert sent.headers["authorization"] == "Bearer k"
    assert sent.body["response_format"] == {"type": "json_object"} and sent.body["temperature"] == 0.0
    assert "response_format" not in llm.requests[1].body


def test_5xx_and_dropped_connections_are_retried_with_jittered_backoff(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Fail(500), Disconnect(), Fail(503), Reply("ok")]))
    sleeps = Sleeps()
    answer = client(llm, sleeps).complete(HELLO)
    assert answer.content == "ok" and answer.attempts == 4
    assert llm.calls("hello") == 4
    # Full jitter: retry n waits within [0, base * 2**n].
    assert len(sleeps.delays) == 3
    for n, delay in enumerate(sleeps.delays):
        assert 0.0 <= delay <= 0.5 * 2**n


def test_429_honours_retry_after(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Fail(429, retry_after="3"), Fail(429, retry_after="3600"), Reply("ok")]))
    sleeps = Sleeps()
    assert client(llm, sleeps).complete(HELLO).content == "ok"
    # The header wins over the computed delay, capped by the policy's max_delay (10 s here).
    assert sleeps.delays == [3.0, 10.0]


def test_retries_run_out_as_llm_unavailable(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Fail(503)]))
    with pytest.raises(LLMUnavailable) as caught:
        client(llm, Sleeps(), retries=2).complete(HELLO)
    assert caught.value.status == 503 and caught.value.attempts == 3
    assert llm.calls("hello") == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_is_never_retried(llm: ScriptedLLM, status: int) -> None:
    llm.add(Rule("hello", [Fail(status, message="model not found"), Reply("never")]))
    with pytest.raises(LLMRequestRejected, match="model not found") as caught:
        client(llm, Sleeps()).complete(HELLO)
    assert caught.value.status == status and llm.calls("hello") == 1


def test_malformed_json_is_a_bad_response_not_retried(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Malformed(), Reply("never")]))
    with pytest.raises(LLMBadResponse, match="not JSON"):
        client(llm, Sleeps()).complete(HELLO)
    assert llm.calls("hello") == 1


@pytest.mark.parametrize(
    "body",
    [
        '{"choices": []}',
        '{"choices": [{"message": {"content": null}}]}',
        "[1, 2]",
        '{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}',
    ],
)
def test_well_formed_json_that_is_not_a_completion_is_a_bad_response(llm: ScriptedLLM, body: str) -> None:
    llm.add(Rule("hello", [Malformed(body)]))
    with pytest.raises(LLMBadResponse):
        client(llm, Sleeps()).complete(HELLO)


def test_a_slow_answer_times_out_and_is_retried(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Reply("late", delay=1.5), Reply("in time")]))
    sleeps = Sleeps()
    answer = client(llm, sleeps, timeout=0.5).complete(HELLO)
    assert answer.content == "in time" and answer.attempts == 2 and len(sleeps.delays) == 1


def test_a_model_that_is_always_too_slow_is_unavailable(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Reply("late", delay=1.0)]))
    with pytest.raises(LLMUnavailable, match="timed out after 2 attempt") as slow:
        client(llm, Sleeps(), retries=1, timeout=0.3).complete(HELLO)
    assert slow.value.timed_out and slow.value.status is None


def test_unreachable_endpoint_is_unavailable() -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", retry=RetryPolicy(max_retries=1))
    sleeps = Sleeps()
    with pytest.raises(LLMUnavailable, match="ConnectError") as refused:
        LLMClient(config, sleep=sleeps).complete(HELLO)
    assert len(sleeps.delays) == 1 and not refused.value.timed_out


def test_stream_yields_deltas_then_usage(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Reply("one two three four")]))
    c = client(llm, Sleeps())
    deltas = list(c.stream(HELLO, purpose="chat"))
    assert "".join(d.content for d in deltas) == "one two three four"
    assert [d.done for d in deltas] == [False] * 4 + [True]
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.usage is not None and last.usage.completion_tokens == 4
    assert llm.requests[0].body["stream"] is True
    assert c.meter.usage("chat").total_tokens == 8 and c.meter.calls("chat") == 1


def test_stream_retries_before_the_first_delta_only(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Fail(429, retry_after="0"), Fail(502), Reply("fine now")]))
    sleeps = Sleeps()
    text = "".join(d.content for d in client(llm, sleeps).stream(HELLO))
    assert text == "fine now" and sleeps.delays[0] == 0.0 and llm.calls("hello") == 3


def test_a_stream_cut_part_way_is_unavailable_and_not_repeated(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [CutStream("one two three", events=2), Reply("never repeated")]))
    received: list[str] = []
    with pytest.raises(LLMUnavailable, match="before \\[DONE\\]"):
        for delta in client(llm, Sleeps()).stream(HELLO):
            received.append(delta.content)
    assert "".join(received) == "one two" and llm.calls("hello") == 1


def test_stream_rejected_request(llm: ScriptedLLM) -> None:
    llm.add(Rule("hello", [Fail(401, message="bad key")]))
    with pytest.raises(LLMRequestRejected, match="bad key"):
        list(client(llm, Sleeps()).stream(HELLO))


async def test_async_client_completes_retries_and_streams(llm: ScriptedLLM) -> None:
    llm.add(Rule("first", [Fail(500), Reply("async answer")]))
    llm.add(Rule("second", [Fail(503), Reply("streamed async answer")]))
    meter = TokenMeter()
    config = LLMConfig(base_url=llm.base_url, model="m", retry=RetryPolicy(max_retries=2, base_delay=0.01))
    async with AsyncLLMClient(config, meter=meter) as c:
        answer = await c.complete([ChatMessage("user", "first")])
        pieces = [d async for d in c.stream([ChatMessage("user", "second")])]
        llm.add(Rule("third", [Malformed()]))
        with pytest.raises(LLMBadResponse):
            await c.complete([ChatMessage("user", "third")])
    assert answer.content == "async answer" and answer.attempts == 2
    assert "".join(p.content for p in pieces) == "streamed async answer" and pieces[-1].done
    assert meter.calls() == 2 and meter.usage().completion_tokens == 2 + 3


def test_settings_configure_the_client() -> None:
    with pytest.raises(NotConfigured):
        client_from_settings(load_settings({}))
    settings = load_settings(
        {
            "LLM_API_BASE": "http://llm:8000/v1/",
            "LLM_MODEL": "qwen",
            "LLM_API_KEY": "s",
            "LLM_TIMEOUT_SECONDS": "12.5",
            "LLM_MAX_RETRIES": "0",
            "LLM_RETRY_BACKOFF_MAX": "4",
        }
    )
    c = client_from_settings(settings)
    assert c.config.url == "http://llm:8000/v1/chat/completions" and c.config.timeout_seconds == 12.5
    assert c.config.retry.max_retries == 0 and c.config.retry.max_delay == 4.0
    for bad in ({"LLM_TIMEOUT_SECONDS": "soon"}, {"LLM_TIMEOUT_SECONDS": "0"}, {"LLM_MAX_RETRIES": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_settings(bad)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
