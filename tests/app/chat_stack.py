"""The live app for the chat, OpenAI-compatible and MCP tests: PostgreSQL, the bundled embedder, a
collection of the test corpus indexed, uvicorn on 127.0.0.1 and tests/scripted_llm.py as the model.
Module-scoped: import the fixtures into a test module (one app runs at a time in the process)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from aperag.api.app import create_app
from aperag.context import AppContext
from tests.app.conftest import settings_from
from tests.app.corpus import DOCS
from tests.app.live_server import seed, serve
from tests.scripted_llm import Reply, Request, ScriptedLLM, Step

KEY = "chat-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SOURCE_LINE = re.compile(r"^\[(\d+)\] \(from (.+)\)$", re.M)


def grounded(request: Request) -> Step:
    """The default answer: cites the first and the last source it was given, and a number it was not."""
    numbers = SOURCE_LINE.findall(request.body["messages"][0]["content"])
    if not numbers:
        return Reply("I do not know.")
    return Reply(f"The first source says so [{numbers[0][0]}]. So does the last [{numbers[-1][0]}][99].")


@dataclass
class Stack:
    url: str
    ctx: AppContext
    ids: dict[str, str]
    llm: ScriptedLLM


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(default=grounded) as server:
        yield server


@pytest.fixture(scope="module")
def stack(app_env_factory: Callable[..., dict[str, str]], embedder_warm: None, llm: ScriptedLLM) -> Iterator[Stack]:
    # No retries and a short timeout: each failure below is the model's first answer, quickly.
    env = app_env_factory(APERAG_API_KEYS=KEY, LLM_MAX_RETRIES="0", LLM_TIMEOUT_SECONDS="2", **llm.env())
    ctx = AppContext(settings=settings_from(env))
    ids = seed(ctx, "kb", {name: body.encode() for name, body in DOCS.items()})
    with serve(create_app(ctx)) as url:
        yield Stack(url, ctx, ids, llm)


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The events of a text/event-stream response, parsed as they arrive."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and name:
            events.append((name, json.loads(data)))
            name, data = "", ""
    return events
