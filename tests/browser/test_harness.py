"""The harness itself: Debian's browser and driver by path (Selenium Manager never runs), and the page
checks catching what they are there to catch."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchDriverException

from tests.browser.harness import CHROMIUM, Browser, chrome_options, no_selenium_manager, start_chrome


def test_debian_binaries_are_used_and_selenium_manager_never_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The guard works: a driver built without a path would need Selenium Manager, which cannot run.
    with no_selenium_manager(), pytest.raises(NoSuchDriverException) as refused:
        webdriver.Chrome(options=chrome_options(tmp_path / "refused", (800, 600)))
    assert "SE_MANAGER_PATH" in str(refused.value.__cause__)
    # The harness's driver: chromedriver by path, and the browser it started is Debian's.
    with caplog.at_level(logging.DEBUG, logger="selenium.webdriver.common.driver_finder"):
        driver = start_chrome(tmp_path / "profile")
    try:
        assert "Skipping Selenium Manager" in caplog.text
        capabilities = driver.capabilities
        assert capabilities["browserName"] == "chrome"
        assert capabilities["chrome"]["userDataDir"] == str(tmp_path / "profile")
        assert "HeadlessChrome" in driver.execute_script("return navigator.userAgent")
        assert Path(f"/proc/{driver.service.process.pid}/exe").resolve() == Path("/usr/lib/chromium/chromedriver")
        version = capabilities["browserVersion"]
        assert version.split(".")[0].isdigit(), version
    finally:
        driver.quit()
    assert CHROMIUM.resolve() == Path("/usr/lib/chromium/chromium") or CHROMIUM.is_file()


def test_the_checks_catch_csp_violations_foreign_requests_and_errors(browser: Browser) -> None:
    browser.go("/console/sign-in")
    assert browser.problems() == []
    # An image from another host on a console page: the CSP refuses it, and the check says so.
    browser.driver.execute_script(
        "const img = document.createElement('img'); img.src = 'http://cdn.example.invalid/pixel.png';"
        "document.body.append(img);"
    )
    csp = browser.wait_for(lambda _: browser.problems(), 10, "the CSP violation to be reported")
    assert any("Content Security Policy" in p for p in csp), csp
    # A page without the CSP (a data: URL) that loads from another host: the request is reported.
    browser.driver.get("data:text/html,<img src='http://cdn.example.invalid/pixel.png'>")
    foreign = browser.wait_for(lambda _: browser.problems(), 10, "the foreign request to be reported")
    assert f"request to another host than {browser.base_url[7:]}: http://cdn.example.invalid/pixel.png" in foreign
    # A missing asset is an error status nobody asked for; a script error is a console error.
    browser.go("/console/static/missing.css")
    browser.go("/console/sign-in")
    browser.driver.execute_script("setTimeout(() => { throw new Error('boom from the test'); }, 0)")
    errors: list[str] = []

    def both_reported(_: object) -> bool:
        errors.extend(browser.problems())
        return any("boom from the test" in p for p in errors) and any("missing.css" in p for p in errors)

    browser.wait_for(both_reported, 10, "the script error and the 404 to be reported")
    assert any("HTTP 404 for Document" in p and "missing.css" in p for p in errors), errors
    # A field without a label is reported.
    browser.driver.execute_script("document.body.append(document.createElement('input'))")
    assert browser.problems() == ["field without a label: <input>"]
    browser.driver.execute_script("document.querySelector('body > input').remove()")
