"""The collections page in the browser: the create form's messages, a new collection listed and opened,
and deleting a collection, confirmed by typing its name."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.browser.conftest import COLLECTION_PATH, DOCS, ConsoleServer, create, unique
from tests.browser.harness import Browser


def test_the_create_form_says_what_is_wrong_and_keeps_what_was_typed(signed_in: Browser) -> None:
    browser = signed_in
    browser.go("/console/")
    browser.fill("Description", "kept description")
    assert "Enter a name" in browser.refused("Name", "", "Create collection", 400)
    assert browser.field("Description").get_attribute("value") == "kept description"
    browser.shot("collections-empty-name")
    message = browser.refused("Name", "my docs", "Create collection", 400)
    assert "no spaces" in message, message
    assert browser.field("Name").get_attribute("value") == "my docs"
    taken = unique("taken")
    create(browser, taken)
    browser.wait_for_path(lambda path: bool(COLLECTION_PATH.fullmatch(path)), "the new collection's page")
    browser.go("/console/")
    assert "already exists" in browser.refused("Name", taken, "Create collection", 409)


def test_a_new_collection_is_opened_and_listed(signed_in: Browser) -> None:
    browser = signed_in
    name = unique("handbook")
    create(browser, name, "The staff handbook")
    path = browser.wait_for_path(lambda path: bool(COLLECTION_PATH.fullmatch(path)), "the new collection's page")
    assert browser.heading() == name
    assert "No documents yet" in browser.driver.find_element(By.ID, "documents").text
    browser.go("/console/")
    link = browser.driver.find_element(By.LINK_TEXT, name)
    assert link.get_attribute("href") == browser.base_url + path
    item = link.find_element(By.XPATH, "./ancestor::li[1]")
    assert "The staff handbook" in item.text and "No documents yet" in item.text
    browser.shot("collections")
    link.click()
    browser.wait_for_path(lambda now: now == path, "the collection from the list")


def test_deleting_a_collection_needs_its_name(signed_in: Browser, console_server: ConsoleServer) -> None:
    browser = signed_in
    name = unique("doomed")
    collection_id = console_server.seed(name, [DOCS / "raft.md"])
    browser.go(f"/console/collections/{collection_id}")
    browser.driver.find_element(By.LINK_TEXT, "Settings").click()
    browser.wait_for_path(lambda path: path.endswith("/settings"), "the settings tab")
    message = browser.refused("Type the collection name to confirm", name + "x", "Delete collection", 400)
    assert "exactly" in message and "nothing was deleted" in message, message
    browser.shot("collection-settings-wrong-name")
    assert [d["filename"] for d in console_server.documents(name)] == ["raft.md"]
    browser.fill("Type the collection name to confirm", name)
    browser.click("Delete collection")
    browser.wait_for_path(lambda path: path == "/console/", "the collections page after the delete")
    notice = browser.driver.find_element(By.CSS_SELECTOR, '[role="status"]').text
    assert notice == f"Collection {name} was deleted.", notice
    assert not browser.driver.find_elements(By.LINK_TEXT, name)
    with console_server.client() as api:
        assert api.get(f"/api/v1/collections/{name}").status_code == 404
    # The notice is said once.
    browser.driver.refresh()
    assert not browser.driver.find_elements(By.CSS_SELECTOR, '[role="status"]')


def test_an_unknown_collection_is_a_page_with_a_way_back(signed_in: Browser) -> None:
    browser = signed_in
    browser.expect_status(404)
    browser.go("/console/collections/0123456789abcdef0123456789abcdef/search")
    assert browser.heading() == "Not found"
    assert browser.alert()
    assert browser.document_status() == 404
    browser.shot("not-found")
    browser.driver.find_element(By.LINK_TEXT, "Back to your collections").click()
    browser.wait_for_path(lambda path: path == "/console/", "the collections page")
