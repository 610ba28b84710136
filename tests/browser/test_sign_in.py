"""Signing in with an API key and out again, in the browser: redirects, the wrong key, the session cookie."""

from __future__ import annotations

from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import KEY, sign_in
from tests.browser.harness import Browser


def test_a_stranger_is_sent_to_the_sign_in_page(browser: Browser) -> None:
    browser.go("/")
    browser.wait_for_path(lambda path: path == "/console/sign-in", "the sign-in page from /")
    assert [path for path, _ in browser.redirects()] == ["/", "/console/"]
    assert browser.redirects()[-1] == ("/console/", 303)
    browser.go("/console/collections/0123456789abcdef0123456789abcdef/search?q=x")
    browser.wait_for_path(lambda path: path == "/console/sign-in", "the sign-in page from a deep link")
    assert browser.redirects()[-1] == ("/console/collections/0123456789abcdef0123456789abcdef/search", 303)
    assert browser.heading() == "Sign in"
    key = browser.field("API key")
    assert (key.get_attribute("id"), key.get_attribute("name"), key.get_attribute("type")) == (
        "api_key", "api_key", "password",
    )  # fmt: skip
    assert browser.driver.switch_to.active_element == key, "the key field has the focus"
    # Signed out, the header offers no navigation and no sign-out.
    assert not browser.driver.find_elements("xpath", "//button[normalize-space()='Sign out']")
    browser.shot("sign-in")


def test_a_wrong_or_empty_key_says_what_is_wrong(browser: Browser) -> None:
    browser.go("/console/sign-in")
    # Empty: the browser's own check stops the form (the field is required), with its message.
    browser.click("Sign in")
    key = browser.field("API key")
    assert key.get_attribute("validationMessage"), "an empty key is refused by the browser with a message"
    assert browser.path == "/console/sign-in"
    message = browser.refused("API key", "not-the-key", "Sign in", 401)
    assert "not valid" in message, message
    assert browser.field("API key").get_attribute("value") == "", "the wrong key is not echoed back"
    browser.shot("sign-in-wrong-key")
    browser.go("/console/")
    browser.wait_for_path(lambda path: path == "/console/sign-in", "still signed out")


def test_sign_in_and_out(browser: Browser) -> None:
    sign_in(browser, KEY)
    assert browser.heading() == "Collections"
    cookie = browser.driver.get_cookie("aperag_console")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert KEY not in cookie["value"], "the key itself is not in the cookie"
    assert browser.driver.execute_script("return document.cookie") == "", "scripts cannot read the session"
    # From the keyboard, the first Tab reaches the skip link, which then shows, and leads to the content.
    body = browser.driver.find_element("tag name", "body")
    body.send_keys(Keys.TAB)
    skip = browser.driver.switch_to.active_element
    assert skip.text == "Skip to content" and skip.rect["x"] >= 0, skip.rect
    skip.send_keys(Keys.ENTER)
    assert browser.driver.switch_to.active_element.get_attribute("id") == "main"
    # Reloading keeps the session; signing out ends it.
    browser.driver.refresh()
    assert browser.heading() == "Collections"
    browser.click("Sign out")
    browser.wait_for_path(lambda path: path == "/console/sign-in", "the sign-in page after signing out")
    browser.go("/console/")
    browser.wait_for_path(lambda path: path == "/console/sign-in", "signed out for good")
