"""The console in a real browser: Debian's headless Chromium (tests/browser/harness.py) on a real app.

The app is what a user runs: `aperag serve` (uvicorn, API keys on, so sign-in is exercised) and an
`aperag worker` on the same settings, over the suite's real PostgreSQL and Redis (tests/conftest.py),
started once for the session on 127.0.0.1. Tests share the server, so each works in collections of its own.

Each test gets its own browser (`browser`): a fresh profile (no cookie, storage or cache from another
test) and its own console and network logs, which the fixture checks when the test ends. Starting
Chromium takes about half a second, little beside what a test does in it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aperag.embedded_pg import free_port
from tests.app.chat_stack import grounded
from tests.app.conftest import WORKER_ARGS, AperagProcess, aperag_processes, wait_until
from tests.browser.harness import DESKTOP, PHONE, Browser, screenshot_dir, start_chrome
from tests.harness.marks import mark_tests_under
from tests.scripted_llm import Fail, Rule, ScriptedLLM

KEY = "browser-test-key"
# Real documents (tests/data) for uploads and searches.
DOCS = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "docs"
COLLECTION_PATH = re.compile(r"/console/collections/([0-9a-f]{32})")
FAILING_QUESTION = "model failure please"
# The Redis database of the browser tests' broker; the app tests use 3 and 5 on the same server.
REDIS_DB = "9"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tests_under(Path(__file__).parent, items, pytest.mark.browser, pytest.mark.app)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """Keep each phase's report on the test, so the browser fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@dataclass(frozen=True)
class ConsoleServer:
    base_url: str
    key: str
    env: dict[str, str]
    api: AperagProcess
    worker: AperagProcess

    def assert_running(self) -> None:
        for name, process in (("API", self.api), ("worker", self.worker)):
            assert process.proc.poll() is None, f"the {name} exited:\n{process.output()[-4000:]}"

    def client(self) -> httpx.Client:
        """The app's HTTP API with the key, to look behind the console (e.g. that a delete really happened)."""
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def documents(self, collection: str) -> list[dict[str, Any]]:
        with self.client() as api:
            response = api.get(f"/api/v1/collections/{collection}/documents")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    def wait_indexed(self, collection: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        """Every document ready and its graph built (graph mode finds them), by the app's API."""
        latest: list[dict[str, Any]] = []

        def done() -> bool:
            nonlocal latest
            latest = self.documents(collection)
            assert not [d for d in latest if d["status"] == "failed"], latest
            return len(latest) == count and all(
                d["status"] == "ready" and d["graph_status"] in ("ready", "partial", "disabled") for d in latest
            )

        wait_until(done, timeout, f"{count} documents of {collection} indexed with their graphs", interval=0.3)
        return latest

    def seed(self, name: str, files: list[Path]) -> str:
        """A collection with these files, indexed, made through the API (for tests about other pages)."""
        with self.client() as api:
            created = api.post("/api/v1/collections", json={"name": name})
            assert created.status_code == 201, created.text
            for path in files:
                upload = {"file": (path.name, path.read_bytes())}
                uploaded = api.post(f"/api/v1/collections/{name}/documents", files=upload)
                assert uploaded.status_code == 201, uploaded.text
        self.wait_indexed(name, len(files))
        collection_id: str = created.json()["id"]
        return collection_id


@pytest.fixture(scope="session")
def llm() -> Iterator[ScriptedLLM]:
    """The chat model (tests/scripted_llm.py): answers citing the first and last sources it was given;
    a question containing FAILING_QUESTION gets a server error."""
    failing = Rule(FAILING_QUESTION, [Fail(500, message="the model is down")])
    with ScriptedLLM(rules=[failing], default=grounded) as server:
        yield server


@pytest.fixture(scope="session")
def console_server(
    app_env_factory: Callable[..., dict[str, str]], redis_port: int, llm: ScriptedLLM
) -> Iterator[ConsoleServer]:
    port = free_port()
    env = app_env_factory(
        REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port), REDIS_DB=REDIS_DB,
        APERAG_HOST="127.0.0.1", APERAG_PORT=str(port), APERAG_API_KEYS=KEY,
    )  # fmt: skip
    with aperag_processes() as start:
        # The worker has no chat model, so the graphs are built by the offline extractor (deterministic);
        # the API has the scripted one, for the chat page.
        worker = start(WORKER_ARGS, env, b"ready.", "the browser tests' worker to be ready")
        model = {**llm.env(), "LLM_MAX_RETRIES": "0", "LLM_TIMEOUT_SECONDS": "10"}
        api = start(["serve"], {**env, **model}, b"Uvicorn running on", "the browser tests' API to be serving")
        yield ConsoleServer(f"http://127.0.0.1:{port}", KEY, env, api, worker)


def _browser(
    request: pytest.FixtureRequest, server: ConsoleServer, tmp_path: Path, size: tuple[int, int], mobile: bool
) -> Iterator[Browser]:
    server.assert_running()
    driver = start_chrome(tmp_path / "profile", size, mobile=mobile)
    browser = Browser(driver, server.base_url, screenshot_dir(tmp_path))
    # The logs start from an empty page (not the browser's own start page and what it loaded).
    driver.get("about:blank")
    browser.problems()
    try:
        yield browser
        call = getattr(request.node, "report_call", None)
        if call is not None and call.failed:
            # What the browser showed when the test failed, for whoever reads the report.
            driver.save_screenshot(str(tmp_path / "failed.png"))
            (tmp_path / "failed.html").write_text(driver.page_source)
            print(f"the page at the failure: {tmp_path / 'failed.png'} and failed.html ({browser.path})")
        server.assert_running()
        browser.assert_clean()
    finally:
        driver.quit()


@pytest.fixture
def browser(request: pytest.FixtureRequest, console_server: ConsoleServer, tmp_path: Path) -> Iterator[Browser]:
    """A desktop browser (1280x900 viewport), signed out."""
    yield from _browser(request, console_server, tmp_path, DESKTOP, mobile=False)


@pytest.fixture
def phone(request: pytest.FixtureRequest, console_server: ConsoleServer, tmp_path: Path) -> Iterator[Browser]:
    """A phone-sized browser (390x844, mobile viewport rules), signed out."""
    yield from _browser(request, console_server, tmp_path, PHONE, mobile=True)


def sign_in(browser: Browser, key: str = KEY) -> None:
    browser.go("/console/sign-in")
    browser.fill("API key", key)
    browser.click("Sign in")
    browser.wait_for_path(lambda path: path == "/console/", "the collections page after signing in")


@pytest.fixture
def signed_in(browser: Browser) -> Browser:
    sign_in(browser)
    return browser


def create(browser: Browser, name: str, description: str = "") -> None:
    """Fill in the collections page's create form and send it."""
    browser.go("/console/")
    browser.fill("Name", name)
    browser.fill("Description", description)
    browser.click("Create collection")


def unique(stem: str) -> str:
    """A collection name no other test of the session uses."""
    return f"{stem}-{uuid.uuid4().hex[:6]}"
