"""A console client: the real app (real PostgreSQL, an in-process dispatcher) through its HTTP interface,
with the helpers every console test needs (the CSRF token of the page, signing in)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.ingest.dispatch import InProcessDispatcher
from tests.app.conftest import settings_from

KEY = "console-test-key"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _TOKEN.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, key: str = KEY) -> None:
    page = client.get("/console/sign-in")
    response = client.post(
        "/console/sign-in", data={"api_key": key, "csrf_token": csrf_of(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/"


@pytest.fixture
def console_factory(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> Iterator[Callable[..., TestClient]]:
    """Console clients over fresh databases; `**env` adds settings (e.g. APERAG_API_KEYS="")."""
    opened: list[tuple[TestClient, InProcessDispatcher]] = []

    def make(**env: str) -> TestClient:
        settings = settings_from(app_env_factory(**{"APERAG_API_KEYS": f"other,{KEY}", **env}))
        ctx = AppContext(settings=settings)
        dispatcher = InProcessDispatcher(ctx, max_retries=1)
        ctx.dispatcher = dispatcher
        client = TestClient(create_app(ctx), base_url="http://127.0.0.1")
        client.__enter__()
        opened.append((client, dispatcher))
        return client

    yield make
    for client, dispatcher in opened:
        client.__exit__(None, None, None)
        dispatcher.shutdown()


@pytest.fixture
def console(console_factory: Callable[..., TestClient]) -> TestClient:
    """A signed-in console client."""
    client = console_factory()
    sign_in(client)
    return client
