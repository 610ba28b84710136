"""The OpenAI-compatible endpoint with the official `openai` client, unchanged, against the live app."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.app.chat_stack import KEY, Stack, llm, stack
from tests.scripted_llm import CutStream, Fail, Reply, Rule

__all__ = ["llm", "stack"]


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    # No client retries: each failure below must surface as it is.
    with openai.OpenAI(base_url=stack.url + "/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_models_are_the_collections(client: openai.OpenAI) -> None:
    assert "kb" in [m.id for m in client.models.list()]


def test_completion_with_citations(stack: Stack, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="kb",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is a volcano?"},
            {"role": "assistant", "content": "A rupture in the crust."},
            {"role": "user", "content": "Which volcanoes have gentle slopes?"},
        ],
    )
    answer = completion.choices[0].message.content
    assert answer and answer.startswith("The first source says so [1].")
    assert completion.choices[0].finish_reason == "stop" and completion.model == "kb"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    extra = completion.model_extra or {}
    sources = {s["n"]: s for s in extra["sources"]}
    assert sources[1]["document_id"] == stack.ids["volcanoes.md"]
    assert [c["chunk_id"] for c in extra["citations"]] == [sources[c["n"]]["chunk_id"] for c in extra["citations"]]
    # The client's history reached the model, its system message did not (ours says: sources only).
    sent = next(r for r in stack.llm.requests if "Which volcanoes have gentle slopes?" in r.text).body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "You are terse." not in sent[0]["content"] and sent[2]["content"] == "A rupture in the crust."


def test_streaming_completion(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="kb@fulltext",
            messages=[{"role": "user", "content": "How is sourdough leavened?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("The first source says so [1].") and len(chunks) >= 5
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert (finish[0].model_extra or {})["citations"][0]["filename"] == "sourdough.txt"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_errors_are_the_clients_own_exceptions(stack: Stack, client: openai.OpenAI) -> None:
    user = [{"role": "user", "content": "sourdough"}]
    with pytest.raises(openai.NotFoundError, match="names no collection"):
        client.chat.completions.create(model="no-such-collection", messages=user)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="unknown retrieval mode"):
        client.chat.completions.create(model="kb@graphs", messages=user)  # type: ignore[arg-type]
    for model in ("kb@graph", "kb@hybrid+graph"):  # accepted; what the graph finds depends on its build
        client.chat.completions.create(model=model, messages=user)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="user message"):
        client.chat.completions.create(model="kb", messages=[{"role": "system", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="letter or digit"):
        client.chat.completions.create(model="kb", messages=[{"role": "user", "content": " ?! "}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.url + "/v1", api_key="wrong", max_retries=0).models.list()

    stack.llm.add(Rule("openai rate limited", [Fail(429)]))
    with pytest.raises(openai.RateLimitError, match="rate limiting"):
        client.chat.completions.create(model="kb", messages=[{"role": "user", "content": "openai rate limited"}])
    stack.llm.add(Rule("openai slow model", [Reply("late", delay=4)]))
    with pytest.raises(openai.InternalServerError, match="in time") as slow:
        client.chat.completions.create(
            model="kb", messages=[{"role": "user", "content": "openai slow model"}], stream=True
        )
    assert slow.value.status_code == 504
    # A failure after the first token: the stream carries OpenAI's error event, which the client raises.
    stack.llm.add(Rule("openai cut stream", [CutStream("The Sicilian Defence [1] is", events=2)]))
    stream = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "openai cut stream"}], stream=True
    )
    with pytest.raises(openai.APIError, match="chat model"):
        for _ in stream:
            pass
