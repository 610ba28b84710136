"""The chat page on the real app (real PostgreSQL, the bundled embedder) with tests/scripted_llm.py as the
model: the streamed answer (server-sent events, what static/chat.js reads), the plain form post without
JavaScript, the history, no model, model failures, bad input and the CSRF check."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aperag.chat.citations import segments
from aperag.context import AppContext
from aperag.db.models import Chunk
from tests.app.chat_stack import grounded, sse_events
from tests.app.console.conftest import csrf_of, sign_in
from tests.app.corpus import DOCS
from tests.app.live_server import seed
from tests.scripted_llm import CutStream, Fail, Reply, Rule, ScriptedLLM

_CHAT_ID = re.compile(r'name="chat_id" value="([0-9a-f]*)"')


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(default=grounded) as server:
        yield server


class Page:
    """A signed-in console over a fresh database with the test corpus in collection "kb"."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
        # Indexed here, synchronously: not also by the app's in-process dispatcher (a race for the same task).
        dispatcher, self.ctx.dispatcher = self.ctx.dispatcher, None
        try:
            self.ids = seed(self.ctx, "kb", {name: body.encode() for name, body in DOCS.items()})
        finally:
            self.ctx.dispatcher = dispatcher
        sign_in(client)
        page = client.get("/console/").text
        found = re.search(r'href="/console/collections/([0-9a-f]{32})"', page)
        assert found
        self.collection_id = found.group(1)
        self.url = f"/console/collections/{self.collection_id}/chat"

    def token(self) -> str:
        return csrf_of(self.client.get(self.url).text)

    def post(self, question: str, chat_id: str = "", **headers: str) -> httpx.Response:
        data = {"question": question, "chat_id": chat_id, "csrf_token": self.token()}
        return self.client.post(self.url, data=data, headers=headers)

    def stream(self, question: str, chat_id: str = "") -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
        headers = {"Accept": "text/event-stream", "X-CSRF-Token": self.token()}
        data = {"question": question, "chat_id": chat_id}
        with self.client.stream("POST", self.url, data=data, headers=headers) as r:
            return r, sse_events(r) if r.headers["content-type"].startswith("text/event-stream") else []


@pytest.fixture
def with_model(console_factory: Callable[..., TestClient], llm: ScriptedLLM) -> Page:
    # No retries and a short timeout: each failure below is the model's first answer, quickly.
    return Page(console_factory(LLM_MAX_RETRIES="0", LLM_TIMEOUT_SECONDS="2", **llm.env()))


def _chunk_ordinals(ctx: AppContext, document_id: str) -> set[int]:
    with ctx.sessions() as session:
        return {o for (o,) in session.execute(select(Chunk.ordinal).where(Chunk.document_id == document_id))}


def test_the_page_has_the_form_the_chats_and_a_new_chat_link(with_model: Page) -> None:
    page = with_model.client.get(with_model.url)
    assert page.status_code == 200
    text = page.text
    assert '<label for="question">Question</label>' in text and '<textarea id="question" name="question"' in text
    assert ">Ask</button>" in text and 'name="chat_id" value=""' in text
    assert 'aria-live="polite"' in text and 'role="status"' in text
    assert f'href="{with_model.url}">New chat</a>' in text and "No chats yet" in text
    assert '<script src="/console/static/chat.js" defer></script>' in text
    assert '<link rel="stylesheet" href="/console/static/chat.css">' in text
    assert 'aria-current="page">Chat</a>' in text
    assert "LLM_API_BASE" not in text  # a model is configured
    assert " style=" not in text and "<script>" not in text
    for asset in ("/console/static/chat.js", "/console/static/chat.css"):
        assert with_model.client.get(asset).status_code == 200
    # By name too; an unknown collection is the 404 page.
    assert with_model.client.get("/console/collections/kb/chat").status_code == 200
    missing = with_model.client.get("/console/collections/nope/chat")
    assert missing.status_code == 404 and 'role="alert"' in missing.text and "<html" in missing.text


def test_streamed_answer_has_the_deltas_in_order_then_citations_linking_to_chunks(
    with_model: Page, llm: ScriptedLLM
) -> None:
    response, events = with_model.stream("How do shield volcanoes erupt?")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("delta") >= 5, names
    assert set(names[1:-1]) == {"delta"}
    sources = {s["n"]: s for s in events[0][1]["sources"]}
    done = events[-1][1]
    deltas = [data["text"] for name, data in events if name == "delta"]
    # In order: the model's words, one event each, make up the answer.
    assert "".join(deltas) == done["answer"] and deltas[0] == "The" and deltas[1] == " first"
    assert done["answer"].startswith("The first source says so [1].")
    assert done["chat_id"] == events[0][1]["chat_id"] and done["unknown_citations"] == [99]
    # Each citation: its document's name and chunk, and the link to that chunk in the document page.
    top = done["citations"][0]
    assert top["n"] == 1 and top["filename"] == "volcanoes.md" and top["document_id"] == with_model.ids["volcanoes.md"]
    document_page = f"/console/collections/{with_model.collection_id}/documents/{top['document_id']}"
    assert top["href"] == f"{document_page}#chunk-{top['chunk']}"
    assert top["chunk"] in _chunk_ordinals(with_model.ctx, top["document_id"])
    assert {c["n"] for c in done["citations"]} <= set(sources)
    for c in done["citations"]:
        assert c["href"] == sources[c["n"]]["href"]
    assert "shield" in sources[1]["excerpt"].lower()
    # The turn is remembered: the conversation's page renders it with the markers as links.
    page = with_model.client.get(with_model.url, params={"chat": done["chat_id"]}).text
    assert '<a class="cite" href="#turn-1-source-1">[1]</a>' in page
    assert 'id="turn-1-source-1"' in page and f'href="{html.escape(top["href"])}">volcanoes.md</a>' in page
    assert "[99]" in page and 'href="#turn-1-source-99"' not in page  # not a source the model was given
    assert "How do shield volcanoes erupt?" in page
    assert f'name="chat_id" value="{done["chat_id"]}"' in page
    assert f'?chat={done["chat_id"]}" aria-current="page">How do shield volcanoes erupt?</a>' in page
    assert llm.calls("How do shield volcanoes erupt?") == 1


def test_without_javascript_the_form_post_renders_the_answer_and_the_chat_continues(
    with_model: Page, llm: ScriptedLLM
) -> None:
    first = with_model.post("What leavens sourdough bread?")
    assert first.status_code == 200, first.text
    assert "The first source says so " in first.text and '<a class="cite" href="#turn-1-source-1">[1]</a>' in first.text
    assert "sourdough.txt</a>" in first.text and 'role="alert"' not in first.text
    found = _CHAT_ID.search(first.text)
    assert found and found.group(1)
    chat_id = found.group(1)
    assert re.search(r'<textarea id="question"[^>]*>\s*</textarea>', first.text)  # empty for the next question

    second = with_model.post("How long should it ferment?", chat_id)
    assert second.status_code == 200
    # The model saw the first turn before the new question: the same chat continued.
    prompt = next(r for r in llm.requests if "How long should it ferment?" in r.text).body["messages"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[1]["content"] == "What leavens sourdough bread?"
    assert 'id="turn-1"' in second.text and 'id="turn-2"' in second.text
    assert f'name="chat_id" value="{chat_id}"' in second.text

    # The chat is listed (by its first question) and its link shows both turns; New chat starts empty.
    listing = with_model.client.get(with_model.url).text
    assert f'href="{with_model.url}?chat={chat_id}"' in listing and "2 questions" in listing
    shown = with_model.client.get(with_model.url, params={"chat": chat_id}).text
    assert "What leavens sourdough bread?" in shown and "How long should it ferment?" in shown
    assert 'name="chat_id" value=""' in listing
    # A chat of another collection, or not a chat id: 404.
    assert with_model.client.get(with_model.url, params={"chat": "0" * 32}).status_code == 404
    assert with_model.client.get(with_model.url, params={"chat": "nope"}).status_code == 404
    gone = with_model.post("Is it still there?", "f" * 32)
    assert gone.status_code == 400 and "no longer exists" in gone.text and "Is it still there?" in gone.text


def test_without_a_model_the_page_says_which_settings_to_set_and_shows_the_sources(
    console_factory: Callable[..., TestClient],
) -> None:
    page = Page(console_factory())
    shown = page.client.get(page.url).text
    assert 'role="alert"' in shown and "LLM_API_BASE" in shown and "LLM_MODEL" in shown

    posted = page.post("How do shield volcanoes erupt?")
    assert posted.status_code == 503
    assert 'role="alert"' in posted.text and "No chat model is configured" in posted.text
    assert "Sources found for your question" in posted.text
    assert "volcanoes.md</a>" in posted.text and f"/documents/{page.ids['volcanoes.md']}#chunk-" in posted.text
    assert ">How do shield volcanoes erupt?</textarea>" in posted.text  # kept

    response, events = page.stream("How do shield volcanoes erupt?")
    assert response.status_code == 200
    assert [name for name, _ in events] == ["sources", "error"]
    assert events[0][1]["sources"][0]["filename"] == "volcanoes.md"
    assert events[1][1]["status"] == 503 and "LLM_API_BASE" in events[1][1]["message"]


@pytest.mark.parametrize(
    ("step", "status", "words"),
    [
        pytest.param(Fail(500), 502, "unavailable", id="500"),
        pytest.param(Reply("too late", delay=4), 504, "in time", id="timeout"),
    ],
)
def test_model_failures_are_alerts_and_the_question_is_kept(
    with_model: Page, llm: ScriptedLLM, step: Fail | Reply, status: int, words: str, request: pytest.FixtureRequest
) -> None:
    question = f"volcano failure {request.node.callspec.id} <b>bold</b>"
    llm.add(Rule(question, [step]))
    posted = with_model.post(question)
    assert posted.status_code == status
    alert = rf'<p class="alert" role="alert" id="chat-error">No answer: The chat model [^<]*{words}'
    assert re.search(alert, posted.text)
    assert f">{html.escape(question)}</textarea>" in posted.text and "<b>bold</b>" not in posted.text
    assert "Sources found for your question" in posted.text

    response, events = with_model.stream(question)
    assert response.status_code == 200 and [name for name, _ in events] == ["sources", "error"]
    assert events[1][1]["status"] == status and words in events[1][1]["message"]
    # Nothing half-done went into the history: the chat has no turn, so it is not listed.
    chat_id = events[0][1]["chat_id"]
    assert f"?chat={chat_id}" not in with_model.client.get(with_model.url).text


def test_a_stream_cut_by_the_model_ends_with_an_error_event(with_model: Page, llm: ScriptedLLM) -> None:
    question = "volcano stream cut part-way"
    llm.add(Rule(question, [CutStream("Shield volcanoes erupt gently [1] and", events=3)]))
    _, events = with_model.stream(question)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[1:4] == ["delta"] * 3 and names[-1] == "error", names
    assert events[-1][1]["status"] == 502 and "No answer" in events[-1][1]["message"]


def test_bad_questions_get_a_message(with_model: Page, llm: ScriptedLLM) -> None:
    before = len(llm.requests)
    empty = with_model.post("   ")
    assert empty.status_code == 400
    assert '<p class="alert" role="alert" id="chat-error">Enter a question.</p>' in empty.text
    assert 'aria-invalid="true"' in empty.text
    punctuation = with_model.post(" ?! ")
    assert punctuation.status_code == 400 and "at least one letter or digit" in punctuation.text
    long = with_model.post("why " * 1001)
    assert long.status_code == 400 and "too long" in long.text
    control = with_model.post("why\x00not")
    assert control.status_code == 400 and "control characters" in control.text
    headers = {"Accept": "text/event-stream", "X-CSRF-Token": with_model.token()}
    streamed = with_model.client.post(with_model.url, data={"question": ""}, headers=headers)
    assert streamed.status_code == 400 and streamed.json() == {"detail": "Enter a question."}
    assert len(llm.requests) == before  # the model was never asked


def test_asking_needs_the_csrf_token(with_model: Page, llm: ScriptedLLM) -> None:
    question = "volcano question without a token"
    refused = with_model.client.post(with_model.url, data={"question": question})
    assert refused.status_code == 403 and 'role="alert"' in refused.text
    wrong = with_model.client.post(
        with_model.url, data={"question": question}, headers={"Accept": "text/event-stream", "X-CSRF-Token": "0" * 64}
    )
    assert wrong.status_code == 403
    assert llm.calls(question) == 0


def test_model_text_and_questions_are_escaped(with_model: Page, llm: ScriptedLLM) -> None:
    question = "volcano <script>alert(1)</script> question"
    llm.add(Rule(question, [Reply("<img src=x onerror=alert(2)> erupts [1]")]))
    posted = with_model.post(question)
    assert posted.status_code == 200
    assert "<script>alert(1)</script>" not in posted.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in posted.text
    assert "<img src=x" not in posted.text and "&lt;img src=x onerror=alert(2)&gt; erupts " in posted.text


def test_citation_segments() -> None:
    assert segments("A [1]. B [1, 3][99]. C", [1, 3]) == [
        ("A ", None), ("[1]", 1), (". B ", None), ("[1]", 1), ("[3]", 3), ("[99]. C", None),
    ]  # fmt: skip
    assert segments("Nothing cited [7].", []) == [("Nothing cited [7].", None)]
    assert segments("", [1]) == []
