"""Chat over a collection against the real stack: PostgreSQL, the bundled embedder, the app served by
uvicorn, and tests/scripted_llm.py as the model; clients are real HTTP clients (httpx)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.app.chat_stack import AUTH, KEY, Stack, llm, sse_events, stack
from tests.scripted_llm import CutStream, Disconnect, Fail, Malformed, Reply, Rule, Step

__all__ = ["llm", "stack"]  # module-scoped fixtures: one live app for this module


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=30) as client:
        yield client





def test_answer_cites_only_chunks_that_were_in_its_context(stack: Stack, http: httpx.Client) -> None:
    resp = http.post("/api/v1/collections/kb/chat", json={"message": "How do shield volcanoes erupt?"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    sources = {s["n"]: s for s in body["sources"]}
    assert sources and list(sources) == list(range(1, len(sources) + 1))
    # The best source is the volcano document, and the model saw every source's text.
    assert sources[1]["document_id"] == stack.ids["volcanoes.md"]
    prompt = next(r for r in stack.llm.requests if "shield volcanoes erupt" in r.text)
    for s in sources.values():
        assert s["text"] in prompt.body["messages"][0]["content"]
    # Citations: the numbers the answer used, resolved to those sources; [99] was never given.
    cited = [c["n"] for c in body["citations"]]
    assert cited == sorted(set(cited), key=cited.index) and cited[0] == 1 and set(cited) <= set(sources)
    for c in body["citations"]:
        assert c["chunk_id"] == sources[c["n"]]["chunk_id"] and c["document_id"] in stack.ids.values()
    assert body["unknown_citations"] == [99]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert body["answer"].startswith("The first source says so [1].")


def test_history_is_kept_per_chat(stack: Stack, http: httpx.Client) -> None:
    first = http.post("/api/v1/collections/kb/chat", json={"message": "What leavens sourdough bread?"}).json()
    chat_id = first["chat_id"]
    second = http.post(
        "/api/v1/collections/kb/chat", json={"message": "How long should it ferment?", "chat_id": chat_id}
    )
    assert second.status_code == 200 and second.json()["chat_id"] == chat_id
    # The model saw the first turn (question and answer) before the new question.
    prompt = next(r for r in stack.llm.requests if "How long should it ferment?" in r.text).body["messages"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[1]["content"] == "What leavens sourdough bread?" and prompt[2]["content"] == first["answer"]

    stored = http.get(f"/api/v1/collections/kb/chats/{chat_id}").json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "What leavens sourdough bread?"),
        ("assistant", first["answer"]),
        ("user", "How long should it ferment?"),
        ("assistant", second.json()["answer"]),
    ]
    assert stored["messages"][1]["citations"] == first["citations"]
    assert chat_id in [c["id"] for c in http.get("/api/v1/collections/kb/chats").json()]

    # A new chat starts empty; a chat belongs to its collection; bad ids are clear 4xx.
    fresh = http.post("/api/v1/collections/kb/chat", json={"message": "How long should it ferment?"}).json()
    assert fresh["chat_id"] != chat_id
    http.post("/api/v1/collections", json={"name": "other"})
    assert http.get(f"/api/v1/collections/other/chats/{chat_id}").status_code == 404
    assert http.post("/api/v1/collections/other/chat", json={"message": "hi", "chat_id": chat_id}).status_code == 404
    assert http.post("/api/v1/collections/kb/chat", json={"message": "hi", "chat_id": "nope"}).status_code == 422
    assert http.post("/api/v1/collections/kb/chat", json={"message": " ?! "}).status_code == 422
    assert http.post("/api/v1/collections/missing/chat", json={"message": "hi"}).status_code == 404
    assert http.delete(f"/api/v1/collections/kb/chats/{chat_id}").status_code == 204
    assert http.get(f"/api/v1/collections/kb/chats/{chat_id}").status_code == 404


def test_streaming_answer_over_a_real_http_connection(stack: Stack, http: httpx.Client) -> None:
    question = "Which opening begins 1.e4 c5?"
    with http.stream("POST", "/api/v1/collections/kb/chat", json={"message": question, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("delta") >= 5, names
    assert set(names[1:-1]) == {"delta"}
    sources = {s["n"]: s for s in events[0][1]["sources"]}
    done = events[-1][1]
    assert done["chat_id"] == events[0][1]["chat_id"]
    assert "".join(data["text"] for name, data in events if name == "delta") == done["answer"]
    assert done["citations"] and all(c["chunk_id"] == sources[c["n"]]["chunk_id"] for c in done["citations"])
    assert sources[1]["document_id"] == stack.ids["chess.html"]
    # The streamed turn is in the history like any other.
    stored = http.get(f"/api/v1/collections/kb/chats/{done['chat_id']}").json()["messages"]
    assert [m["content"] for m in stored] == [question, done["answer"]]


# (model's answer, status, words in the detail as JSON, as a stream). A 200 that is not an event stream
# reads as a stream that ended without [DONE]: the client calls that the endpoint's failure.
FAILURES = [
    pytest.param(Fail(429, retry_after="1"), 429, ("rate limiting", "rate limiting"), id="429"),
    pytest.param(Fail(500), 502, ("unavailable", "unavailable"), id="500"),
    pytest.param(Fail(401), 502, ("refused", "refused"), id="401"),
    pytest.param(Malformed(), 502, ("malformed", "unavailable"), id="malformed"),
    pytest.param(Disconnect(), 502, ("unavailable", "unavailable"), id="disconnect"),
    pytest.param(Reply("too late", delay=4), 504, ("in time", "in time"), id="slow"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("step", "status", "words"), FAILURES)
def test_model_failures_are_clear_errors_with_the_sources(
    stack: Stack,
    http: httpx.Client,
    step: Step,
    status: int,
    words: tuple[str, str],
    stream: bool,
    request: pytest.FixtureRequest,
) -> None:
    question = f"chess failure {request.node.callspec.id}"  # unique: the rule answers this test only
    stack.llm.add(Rule(question, [step]))
    resp = http.post("/api/v1/collections/kb/chat", json={"message": question, "stream": stream})
    # Before the first token the stream has not started: the failure gets its own status, as JSON.
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert words[stream] in body["detail"] and "chat model" in body["detail"], body["detail"]
    assert body["sources"] and body["chat_id"]
    # Nothing half-done went into the history.
    assert http.get(f"/api/v1/collections/kb/chats/{body['chat_id']}").json()["messages"] == []


def test_a_stream_cut_by_the_model_ends_with_an_error_event(stack: Stack, http: httpx.Client) -> None:
    question = "chess stream cut part-way"
    stack.llm.add(Rule(question, [CutStream("The Sicilian Defence is popular [1] among", events=3)]))
    with http.stream("POST", "/api/v1/collections/kb/chat", json={"message": question, "stream": True}) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[1:4] == ["delta"] * 3 and names[-1] == "error", names
    assert events[-1][1]["status"] == 502 and "chat model" in events[-1][1]["detail"]
    chat_id = events[0][1]["chat_id"]
    assert http.get(f"/api/v1/collections/kb/chats/{chat_id}").json()["messages"] == []


def test_every_new_route_requires_the_api_key(stack: Stack) -> None:
    calls = [
        ("POST", "/api/v1/collections/kb/chat", {"message": "hi"}),
        ("GET", "/api/v1/collections/kb/chats", None),
        ("GET", "/api/v1/collections/kb/chats/" + "0" * 32, None),
        ("DELETE", "/api/v1/collections/kb/chats/" + "0" * 32, None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "kb", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for method, path, body in calls:
            resp = httpx.request(method, stack.url + path, json=body, headers=headers, timeout=30)
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
