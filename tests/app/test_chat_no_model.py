"""Chat with no model configured, and the context budget: apps of their own (one app runs at a time in
the process: its lifespan registers the process's metrics collector)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from aperag.api.app import create_app
from aperag.chat.service import prepare
from aperag.context import AppContext
from aperag.services import get_collection
from tests.app.conftest import settings_from
from tests.app.corpus import DOCS
from tests.app.live_server import seed

KEY = "chat-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = {"role": "user", "content": "shield volcanoes"}


def test_without_a_model_chat_returns_the_context_and_503(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    ctx = AppContext(settings=settings_from(app_env_factory(APERAG_API_KEYS=KEY)))
    ids = seed(ctx, "kb", {"volcanoes.md": DOCS["volcanoes.md"].encode()})
    with TestClient(create_app(ctx)) as client:
        for stream in (False, True):
            resp = client.post(
                "/api/v1/collections/kb/chat", headers=AUTH, json={"message": "shield volcanoes", "stream": stream}
            )
            assert resp.status_code == 503 and resp.headers["content-type"] == "application/json"
            body = resp.json()
            assert "LLM_API_BASE" in body["detail"] and "answer" not in body
            top = body["sources"][0]
            assert top["document_id"] == ids["volcanoes.md"] and "shield" in top["text"].lower()
            history = client.get(f"/api/v1/collections/kb/chats/{body['chat_id']}", headers=AUTH).json()
            assert history["messages"] == []
        openai = client.post("/v1/chat/completions", headers=AUTH, json={"model": "kb", "messages": [QUESTION]})
        assert openai.status_code == 503
        assert "LLM_API_BASE" in openai.json()["error"]["message"] and openai.json()["context"]


async def test_the_context_stays_within_its_token_budget(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    env = app_env_factory(CHAT_CONTEXT_TOKENS="150")
    ctx = AppContext(settings=settings_from(env))
    seed(ctx, "small", {name: body.encode() for name, body in DOCS.items()})
    collection = get_collection(ctx, "small")
    prepared = await prepare(ctx, collection, "volcano sourdough chess", [], "hybrid", 20)
    assert len(prepared.sources) >= 2
    assert sum(s.tokens for s in prepared.sources) <= 150
    # The budget is what left the others out: with room, the same question gets more sources.
    roomy = AppContext(settings=settings_from({**env, "CHAT_CONTEXT_TOKENS": "5000"}))
    assert len((await prepare(roomy, collection, "volcano sourdough chess", [], "hybrid", 20)).sources) > len(
        prepared.sources
    )
    # The sources are exactly what the model is shown, numbered in rank order.
    system = prepared.messages[0].content
    assert all(f"[{s.n}] (from {s.filename})\n{s.text}" in system for s in prepared.sources)
    assert [s.n for s in prepared.sources] == list(range(1, len(prepared.sources) + 1))
