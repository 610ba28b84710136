"""The whole way through in the browser: sign in, create a collection, upload real documents, watch them
become ready without reloading, search in every mode, open a hit, delete a document; and what the
documents page says about refused uploads and a failed document."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Literal

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec

from aperag import services
from aperag.config import load_settings
from aperag.context import AppContext
from tests.browser.conftest import COLLECTION_PATH, DOCS, ConsoleServer, create, unique
from tests.browser.harness import Browser

FILES = [DOCS / "circuit-breaker.md", DOCS / "redis-persistence.md", DOCS / "raft.md"]
MODES = ("hybrid", "vector", "fulltext", "graph")
# A query for each mode, and the document its first hit must come from.
QUERIES = {
    "hybrid": ("exponential backoff with jitter", "circuit-breaker.md"),
    "vector": ("how does a cluster elect a leader", "raft.md"),
    "fulltext": ("appendfsync everysec", "redis-persistence.md"),
    "graph": ("Redis AOF", "redis-persistence.md"),
}


def rows(browser: Browser) -> dict[str, str]:
    """filename -> data-status of the documents table's rows."""
    found = {}
    for row in browser.driver.find_elements(By.CSS_SELECTOR, "#documents tr[data-status]"):
        found[row.find_element(By.CSS_SELECTOR, "th a").text] = str(row.get_attribute("data-status"))
    return found


def row(browser: Browser, filename: str) -> WebElement:
    return browser.driver.find_element(By.XPATH, f"//tr[@data-status][th/a[normalize-space()='{filename}']]")


def upload(browser: Browser, *paths: Path) -> None:
    browser.field("Documents").send_keys("\n".join(str(p) for p in paths))
    browser.click("Upload")


def mark_page(browser: Browser) -> None:
    """A flag only this page load has: still there later means the page was never reloaded."""
    browser.driver.execute_script("window.__sameDocument = true")


def same_page(browser: Browser) -> bool:
    return bool(browser.driver.execute_script("return window.__sameDocument === true"))


def has_mode(mode: str, path: str) -> bool:
    return f"mode={mode}&" in path + "&"


def test_upload_watch_search_open_and_delete(signed_in: Browser, console_server: ConsoleServer) -> None:
    browser = signed_in
    name = unique("journey")
    create(browser, name, "Resilience, Redis and Raft")
    collection_path = browser.wait_for_path(lambda p: bool(COLLECTION_PATH.fullmatch(p)), "the collection page")
    collection_id = collection_path.rsplit("/", 1)[1]

    # Upload three files at once (the file input takes several); the page stays, the table fills in.
    mark_page(browser)
    browser.field("Documents").send_keys("\n".join(str(p) for p in FILES))
    chosen = browser.driver.find_element(By.ID, "files-selected").text
    assert chosen == "3 files chosen: circuit-breaker.md, redis-persistence.md, raft.md", chosen
    browser.click("Upload")
    outcomes = browser.wait_for(
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, '#upload-results [role="status"]')) and len(found) == 3
        and found, 30, "an outcome for each file",
    )  # fmt: skip
    texts = [o.text for o in outcomes]
    assert all("was uploaded; the table below shows its indexing" in t for t in texts), texts
    progress = browser.driver.find_element(By.ID, "upload-progress")
    browser.wait_for(lambda _: progress.get_attribute("value") == "100", 10, "the progress bar at 100%")
    seen: set[str] = set()

    def all_ready(_: object) -> bool:
        statuses = rows(browser)
        seen.update(statuses.values())
        return len(statuses) == 3 and set(statuses.values()) == {"ready"}

    browser.wait_for(all_ready, 120, "the three documents to become ready in the table")
    # The upload's answer showed them not yet ready (the worker had not indexed the last file when the
    # page was rendered); the table then changed on its own, in the same page.
    assert seen & {"pending", "indexing"} and "failed" not in seen, seen
    assert same_page(browser), "the table was updated without reloading the page"
    # Once all are ready the table stops polling and says no more that it is updating.
    assert not browser.driver.find_elements(By.CSS_SELECTOR, "#documents[hx-trigger]")
    assert "updating while indexing" not in browser.driver.find_element(By.ID, "documents").text
    browser.shot("collection-documents")

    # Search: graph mode needs the documents' graphs, which the worker builds after indexing.
    console_server.wait_indexed(collection_id, 3)
    browser.driver.find_element(By.LINK_TEXT, "Search").click()
    browser.wait_for_path(lambda p: p.endswith("/search"), "the search tab")
    for mode in MODES:
        query, expected = QUERIES[mode]
        browser.fill("Query", query)
        browser.field({"fulltext": "Full text"}.get(mode, mode.capitalize())).click()
        browser.click("Search")
        browser.wait_for_path(partial(has_mode, mode), f"the {mode} results")
        assert browser.field("Query").get_attribute("value") == query
        checked = browser.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"]:checked')
        assert checked.get_attribute("value") == mode
        hits = browser.driver.find_elements(By.CSS_SELECTOR, "li.hit")
        assert hits, f"no {mode} hits for {query!r}"
        first = hits[0].find_element(By.CSS_SELECTOR, ".hit-source a")
        assert first.text == expected, (mode, [h.text[:80] for h in hits])
        # The query's words are marked (words that start like them: "elect" marks "election").
        assert hits[0].find_elements(By.TAG_NAME, "mark"), hits[0].get_attribute("innerHTML")
        marks = {m.text.lower() for m in browser.driver.find_elements(By.CSS_SELECTOR, "li.hit mark")}
        words = [w for w in re.findall(r"\w+", query.lower()) if len(w) >= 3]
        assert all(any(m.startswith(w[:4]) for w in words) for m in marks), (query, marks)
        if mode == "graph":
            assert "Graph matches" in browser.driver.find_element(By.CSS_SELECTOR, ".search-results").text
        browser.shot(f"search-{mode}")

    # Open the first hit: the document page, scrolled to the chunk it came from.
    link = browser.driver.find_element(By.CSS_SELECTOR, "li.hit .hit-source a")
    href = str(link.get_attribute("href"))
    anchor = re.search(r"#(chunk-\d+)$", href)
    assert anchor, href
    link.click()
    browser.wait_for_path(lambda p: "/documents/" in p, "the document of the hit")
    assert browser.heading() == "redis-persistence.md"
    chunk = browser.driver.find_element(By.ID, anchor.group(1))
    assert browser.driver.execute_script("return document.querySelector(':target') === arguments[0]", chunk)
    assert chunk.text.strip() and chunk.is_displayed()
    browser.shot("document")

    # Delete a document: the Delete button asks first; cancelling keeps it, accepting removes its row.
    browser.go(collection_path)
    mark_page(browser)
    row(browser, "raft.md").find_element(By.XPATH, ".//button[normalize-space()='Delete']").click()
    dialog = browser.wait_for(ec.alert_is_present(), 10, "the confirmation")
    assert "Delete raft.md?" in dialog.text and "cannot be undone" in dialog.text, dialog.text
    dialog.dismiss()
    assert set(rows(browser)) == {"circuit-breaker.md", "redis-persistence.md", "raft.md"}
    raft_id = row(browser, "raft.md").get_attribute("data-document-id")
    row(browser, "raft.md").find_element(By.XPATH, ".//button[normalize-space()='Delete']").click()
    browser.wait_for(ec.alert_is_present(), 10, "the confirmation").accept()
    browser.wait_for(lambda _: set(rows(browser)) == {"circuit-breaker.md", "redis-persistence.md"}, 10, "row gone")
    notice = browser.driver.find_element(By.CSS_SELECTOR, '#documents [role="status"]').text
    assert notice == "raft.md was deleted.", notice
    # The focus was on the row's button, now gone: it goes to the table's heading, not to the page's top.
    browser.wait_for(
        lambda d: d.switch_to.active_element.get_attribute("id") == "documents-heading", 5, "focus on the heading"
    )
    assert same_page(browser)
    with console_server.client() as api:
        assert api.get(f"/api/v1/collections/{collection_id}/documents/{raft_id}").status_code == 404
    browser.shot("collection-document-deleted")


def test_refused_uploads_say_why(signed_in: Browser, tmp_path: Path) -> None:
    browser = signed_in
    name = unique("refusals")
    create(browser, name)
    browser.wait_for_path(lambda p: bool(COLLECTION_PATH.fullmatch(p)), "the collection page")
    browser.expect_status(400)
    # Nothing chosen.
    browser.click("Upload")
    assert "Choose one or more files" in browser.alert()
    # A program and an empty file, next to a good document: each file gets its own outcome.
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    upload(browser, program, empty, DOCS / "bgp.md")

    def outcomes(_: object) -> list[str] | Literal[False]:
        found = browser.driver.find_elements(By.CSS_SELECTOR, "#upload-results li")
        return [f.text for f in found] if len(found) == 3 else False

    messages = browser.wait_for(outcomes, 30, "an outcome for each of the three files")
    assert messages[0].startswith("setup.exe was not uploaded: this file type is not supported"), messages
    assert messages[1] == "empty.txt was not uploaded: the file is empty.", messages
    assert messages[2] == "bgp.md was uploaded; the table below shows its indexing.", messages
    alerts = browser.driver.find_elements(By.CSS_SELECTOR, '#upload-results [role="alert"]')
    assert [a.text for a in alerts] == messages[:2]
    assert list(rows(browser)) == ["bgp.md"]
    browser.shot("upload-refused")
    # Only refused files: the answer is an error (400), and the message is the same.
    upload(browser, program)
    browser.wait_for(
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#upload-results li")] == messages[:1], 30,
        "the refusal of the program alone",
    )  # fmt: skip


def test_a_failed_document_shows_its_reason(signed_in: Browser, console_server: ConsoleServer) -> None:
    browser = signed_in
    name = unique("failing")
    collection_id = console_server.seed(name, [DOCS / "tls.md"])
    (document,) = console_server.documents(name)
    # Its stored file is gone: indexing it again fails.
    ctx = AppContext(settings=load_settings(console_server.env))
    ctx.object_store.delete(services.get_document(ctx, collection_id, document["id"]).object_key)
    browser.go(f"/console/collections/{collection_id}")
    mark_page(browser)
    assert rows(browser) == {"tls.md": "ready"}
    row(browser, "tls.md").find_element(By.XPATH, ".//button[normalize-space()='Reindex']").click()
    browser.wait_for(lambda _: rows(browser) == {"tls.md": "failed"}, 60, "the reindex to fail, in the table")
    assert same_page(browser)
    reason = row(browser, "tls.md").find_element(By.CSS_SELECTOR, ".reason").text
    assert "FileNotFoundError" in reason, reason
    browser.shot("document-failed")
    row(browser, "tls.md").find_element(By.CSS_SELECTOR, "th a").click()
    browser.wait_for_path(lambda p: "/documents/" in p, "the failed document's page")
    page = browser.driver.find_element(By.TAG_NAME, "main").text
    assert "Indexing failed: FileNotFoundError" in page and "No chunks: indexing failed" in page, page


def test_a_search_without_words_says_so(signed_in: Browser, console_server: ConsoleServer) -> None:
    browser = signed_in
    collection_id = console_server.seed(unique("queries"), [DOCS / "dns.md"])
    browser.go(f"/console/collections/{collection_id}/search")
    message = browser.refused("Query", "?!", "Search", 400)
    assert "at least one letter or digit" in message, message
    assert not browser.driver.find_elements(By.CSS_SELECTOR, "li.hit")
    browser.shot("search-no-words")
    browser.go(f"/console/collections/{collection_id}/search?q=dns&mode=psychic")
    assert "Unknown search mode 'psychic'" in browser.alert()
    checked = browser.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"]:checked')
    assert checked.get_attribute("value") == "hybrid"


# Dispatches dragenter, dragover and drop on the drop zone with a DataTransfer holding real File objects,
# as the browser does when files are dragged from the desktop (WebDriver cannot drag from outside the
# page). Returns whether the page cancelled dragover (what tells the browser the zone accepts files).
_DROP_FILES = """
const [selector, files] = arguments;
const zone = document.querySelector(selector);
const transfer = new DataTransfer();
for (const [name, text] of files) transfer.items.add(new File([text], name, {type: "text/markdown"}));
zone.dispatchEvent(new DragEvent("dragenter", {bubbles: true, cancelable: true, dataTransfer: transfer}));
const over = new DragEvent("dragover", {bubbles: true, cancelable: true, dataTransfer: transfer});
zone.dispatchEvent(over);
zone.dispatchEvent(new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: transfer}));
return over.defaultPrevented;
"""


def test_files_dropped_on_the_zone_are_uploaded(signed_in: Browser) -> None:
    browser = signed_in
    create(browser, unique("dropped"))
    browser.wait_for_path(lambda p: bool(COLLECTION_PATH.fullmatch(p)), "the collection page")
    files = [(p.name, p.read_text()) for p in FILES[:2]]
    accepted = browser.driver.execute_script(_DROP_FILES, "[data-dropzone]", files)
    assert accepted is True, "the drop zone did not accept the dragged files"
    chosen = browser.driver.find_element(By.ID, "files-selected").text
    assert chosen == f"2 files chosen: {FILES[0].name}, {FILES[1].name}", chosen
    browser.click("Upload")
    browser.wait_for(
        lambda _: rows(browser) == {FILES[0].name: "ready", FILES[1].name: "ready"}, 90, "the dropped files ready"
    )
    browser.assert_clean()
