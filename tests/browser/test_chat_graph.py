"""The chat page (an answer streamed in by chat.js from the scripted model, its citations linked to the
sources and the sources to their chunks, the conversation kept) and the graph page (the picture, the
tables, the name filter), in the browser."""

from __future__ import annotations

import re

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import DOCS, FAILING_QUESTION, ConsoleServer, unique
from tests.browser.harness import Browser
from tests.scripted_llm import ScriptedLLM

CHAT_FILES = [DOCS / "k8s-probes.md", DOCS / "linux-oom.md", DOCS / "pg-vacuum.md"]


def test_ask_follow_up_and_open_a_source(signed_in: Browser, console_server: ConsoleServer, llm: ScriptedLLM) -> None:
    browser = signed_in
    collection_id = console_server.seed(unique("chat"), CHAT_FILES)
    browser.go(f"/console/collections/{collection_id}")
    browser.driver.find_element(By.LINK_TEXT, "Chat").click()
    browser.wait_for_path(lambda p: p.endswith("/chat"), "the chat tab")
    assert not browser.driver.find_elements(By.ID, "no-model"), "a model is configured"
    # An empty question is refused before anything is sent.
    asked_before = llm.calls()
    browser.click("Ask")
    assert browser.alert() == "Enter a question."
    assert browser.field("Question").get_attribute("aria-invalid") == "true"
    assert llm.calls() == asked_before

    browser.fill("Question", "What happens when a liveness probe fails?")
    browser.click("Ask")
    status = browser.driver.find_element(By.ID, "chat-status")
    browser.wait_for(lambda _: status.text.startswith("Answered"), 30, "the streamed answer")
    assert status.text == "Answered, citing 2 sources.", status.text
    assert not browser.driver.find_elements(By.CSS_SELECTOR, '[role="alert"]')
    # The page's address now names the chat (the answer came without reloading the page).
    chat_id = re.fullmatch(rf"/console/collections/{collection_id}/chat\?chat=([0-9a-f]+)", browser.path)
    assert chat_id, browser.path
    turn = browser.driver.find_element(By.ID, "turn-1")
    assert "What happens when a liveness probe fails?" in turn.find_element(By.CLASS_NAME, "question-text").text
    answer = turn.find_element(By.CLASS_NAME, "answer")
    assert answer.text.startswith("The first source says so [1]."), answer.text
    cites = answer.find_elements(By.CSS_SELECTOR, "a.cite")
    # The model cited the first and the last source, and a [99] it was not given (left as text).
    assert len(cites) == 2 and cites[0].text == "[1]" and "[99]" in answer.text, [c.text for c in cites]
    sources = turn.find_elements(By.CSS_SELECTOR, "ul.sources li.source")
    assert len(sources) == 2
    for cite in cites:
        target = str(cite.get_attribute("href")).split("#", 1)[1]
        assert browser.driver.find_element(By.ID, target) in sources
    assert browser.field("Question").get_attribute("value") == "", "the box is emptied for the next question"
    # The new chat joins the chats list without a reload.
    listed = browser.driver.find_element(By.CSS_SELECTOR, '#chat-list a[aria-current="page"]')
    assert listed.text == "What happens when a liveness probe fails?" and listed.is_displayed(), listed.text
    assert not browser.driver.find_elements(By.ID, "chats-none")
    browser.shot("chat")

    # A follow-up (Ctrl+Enter asks too) continues the same chat.
    browser.fill("Question", "And an out-of-memory kill?").send_keys(Keys.CONTROL, Keys.ENTER)
    browser.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, "#turn-2 ul.sources"), 30, "the second answer")
    assert browser.path.endswith(f"?chat={chat_id.group(1)}")
    # Reloaded, the page shows the conversation from the server; the chats list names it.
    browser.driver.refresh()
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#conversation > li.turn")) == 2
    listed = browser.driver.find_element(By.CSS_SELECTOR, '.chat-list a[aria-current="page"]')
    assert listed.text.startswith("What happens when a liveness probe fails?"), listed.text
    # A source opens its document at the chunk.
    source = browser.driver.find_element(By.CSS_SELECTOR, "#turn-1 li.source a")
    filename, href = source.text, str(source.get_attribute("href"))
    assert re.search(r"/documents/[0-9a-f]{32}#chunk-\d+$", href), href
    source.click()
    browser.wait_for_path(lambda p: "/documents/" in p, "the cited document")
    assert browser.heading() == filename
    assert browser.driver.execute_script("return document.querySelector(':target').className") == "chunk"


def test_a_model_failure_keeps_the_question_and_shows_the_sources(
    signed_in: Browser, console_server: ConsoleServer
) -> None:
    browser = signed_in
    collection_id = console_server.seed(unique("chat-down"), CHAT_FILES[:1])
    browser.go(f"/console/collections/{collection_id}/chat")
    question = f"Liveness probes, {FAILING_QUESTION}"
    browser.fill("Question", question)
    browser.click("Ask")
    message = browser.alert(30)
    assert message.startswith("No answer:") and "Your question is still in the box" in message, message
    assert browser.field("Question").get_attribute("value") == question
    retrieved = browser.driver.find_elements(By.CSS_SELECTOR, "section.retrieved li.source a")
    assert [r.text for r in retrieved][:1] == ["k8s-probes.md"], [r.text for r in retrieved]
    assert not browser.driver.find_elements(By.CSS_SELECTOR, "#conversation > li"), "no turn is left half-made"
    browser.shot("chat-model-failure")


def test_the_graph_page_draws_lists_and_filters(signed_in: Browser, console_server: ConsoleServer) -> None:
    browser = signed_in
    empty = console_server.seed(unique("no-graph"), [])
    browser.go(f"/console/collections/{empty}/graph")
    assert "No knowledge graph yet" in browser.driver.find_element(By.TAG_NAME, "main").text
    collection_id = console_server.seed(unique("graph"), [DOCS / "redis-persistence.md", DOCS / "raft.md"])
    browser.go(f"/console/collections/{collection_id}")
    browser.driver.find_element(By.LINK_TEXT, "Graph").click()
    browser.wait_for_path(lambda p: p.endswith("/graph"), "the graph tab")
    summary = browser.driver.find_element(By.CSS_SELECTOR, ".graph-summary").text
    assert re.match(r"\d+ entities and \d+ relations", summary), summary
    nodes = browser.driver.find_elements(By.CSS_SELECTOR, "svg.graph a.node")
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "#entities-heading + .table-wrap tbody tr")
    assert nodes and len(nodes) == len(rows)
    assert browser.driver.find_elements(By.CSS_SELECTOR, "svg.graph line.edge")
    browser.shot("graph", full_page=True)
    # An entity's link filters to it and its neighbours.
    browser.driver.find_element(By.XPATH, "//section[@aria-labelledby='entities-heading']//a[.='Redis']").click()
    browser.wait_for_path(lambda p: p.endswith("/graph?q=Redis"), "the filter on Redis")
    assert browser.field("Filter entities by name").get_attribute("value") == "Redis"
    summary = browser.driver.find_element(By.CSS_SELECTOR, ".graph-summary").text
    assert re.match(r"\d+ entit(y|ies) named like Redis, with \d+ neighbours?", summary), summary
    matched = browser.driver.find_elements(By.CSS_SELECTOR, "tr.matched th a")
    assert "Redis" in [m.text for m in matched]
    browser.shot("graph-filtered", full_page=True)
    browser.fill("Filter entities by name", "zzzz-nothing")
    browser.click("Filter")
    browser.wait_for_path(lambda p: p.endswith("q=zzzz-nothing"), "the empty filter")
    assert "No entity's name contains" in browser.driver.find_element(By.CSS_SELECTOR, ".graph-summary").text
    browser.driver.find_element(By.LINK_TEXT, "Show all").click()
    browser.wait_for_path(lambda p: p.endswith("/graph"), "the whole graph again")
