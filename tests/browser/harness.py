"""Driving Debian's headless Chromium with Selenium, and what every browser test checks on every page.

Debian's binaries are given by path: the driver service gets chromedriver's, the options the browser's
(the real binary under /usr/lib/chromium, not /usr/bin/chromium, a wrapper script that adds flags, API
keys and extensions). Selenium Manager, which would download a driver or a browser, is never run: the
driver is built with SE_MANAGER_PATH pointing at nothing, so any attempt to run it fails loudly.

Each page a test visits is checked for what a user would not see: Content-Security-Policy violations and
script errors in the browser's console, requests to any host but the app's, failed requests and error
statuses the test did not ask for, and form fields without a label.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

T = TypeVar("T")

# Debian's packages (make system-packages); CHROMIUM_BINARY and CHROMEDRIVER override.
CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/lib/chromium/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
DESKTOP = (1280, 900)
PHONE = (390, 844)
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "console"

# Statuses a page may answer with when a test says it expects them: the console's form errors are pages.
_PAGE_TYPES = frozenset({"Document", "XHR", "Fetch"})
_LOCAL_SCHEMES = frozenset({"data", "blob", "about"})

# Every field the page shows must be labelled: by <label for>, by wrapping, or by aria-label(ledby).
_UNLABELLED_FIELDS = """
return Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => !['hidden', 'submit', 'button', 'reset'].includes(el.type))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML.slice(0, 120));
"""


def require_chromium() -> None:
    """Fail (never skip) when Debian's chromium or chromedriver is not there."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"not found: {', '.join(missing)}. The browser tests need Debian's chromium and chromium-driver "
            "(make system-packages installs them; CHROMIUM_BINARY and CHROMEDRIVER point elsewhere)",
            pytrace=False,
        )


@contextmanager
def no_selenium_manager() -> Iterator[None]:
    """While a driver is built, Selenium Manager (which downloads drivers and browsers) cannot run."""
    before = os.environ.get("SE_MANAGER_PATH")
    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager-must-not-run"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SE_MANAGER_PATH"]
        else:
            os.environ["SE_MANAGER_PATH"] = before


def chrome_options(profile: Path, size: tuple[int, int], *, mobile: bool = False) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    width, height = size
    for arg in (
        "--headless=new",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        # Nothing leaves the machine, whatever the page or the browser would fetch: no background
        # networking, and every host name but the app's address resolves to nothing.
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root (CI runs `make test` as root).
        options.add_argument("--no-sandbox")
    # The viewport itself is this size (--window-size alone leaves room for a simulated toolbar).
    metrics = {"width": width, "height": height, "pixelRatio": 1.0, "mobile": mobile, "touch": mobile}
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return options


def start_chrome(profile: Path, size: tuple[int, int] = DESKTOP, *, mobile: bool = False) -> WebDriver:
    require_chromium()
    with no_selenium_manager():
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=chrome_options(profile, size, mobile=mobile)
        )
    driver.set_page_load_timeout(30)
    return driver


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], T | Literal[False]], timeout: float = 10, message: str = ""
) -> T:
    """Poll `condition` until it returns something truthy, which is returned; fail after `timeout` seconds
    saying `message` (selenium's WebDriverWait: a deadline, no fixed sleep). An element htmx swapped out
    while the condition looked at it counts as not yet."""
    wait: WebDriverWait[WebDriver] = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    return wait.until(condition, message or f"timed out after {timeout}s")


def _literal(text: str) -> str:
    """An XPath string literal for `text` (XPath 1.0 has no escapes)."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


@dataclass
class Browser:
    """One browser on the console, with the log of everything it did (drained from the driver as it goes)."""

    driver: WebDriver
    base_url: str
    shots: Path
    console: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    # -- navigation and finding things ------------------------------------------------------------------

    def go(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url = urlsplit(self.driver.current_url)
        return url.path + (f"?{url.query}" if url.query else "")

    def wait_for(
        self, condition: Callable[[WebDriver], T | Literal[False]], timeout: float = 10, message: str = ""
    ) -> T:
        return wait_for(self.driver, condition, timeout, message)

    def wait_for_path(self, predicate: Callable[[str], bool], what: str, timeout: float = 10) -> str:
        self.wait_for(lambda _: predicate(self.path), timeout, f"the browser at {what} (it is at {self.path})")
        return self.path

    def field(self, label: str) -> WebElement:
        """The form field whose <label> says `label` (the id the label points at)."""
        found = self.driver.find_elements(By.XPATH, f"//label[normalize-space()={_literal(label)}]")
        assert found, f"no label {label!r} on {self.path}"
        target = found[0].get_attribute("for")
        if target:
            return self.driver.find_element(By.ID, target)
        return found[0].find_element(By.CSS_SELECTOR, "input, select, textarea")

    def button(self, text: str) -> WebElement:
        xpath = f"//button[normalize-space()={_literal(text)}] | //input[@type='submit' and @value={_literal(text)}]"
        found = [b for b in self.driver.find_elements(By.XPATH, xpath) if b.is_displayed()]
        assert found, f"no button {text!r} on {self.path}"
        return found[0]

    def fill(self, label: str, text: str) -> WebElement:
        element = self.field(label)
        element.clear()
        element.send_keys(text)
        return element

    def click(self, text: str) -> None:
        self.button(text).click()

    def refused(self, label: str, text: str, button: str, status: int) -> str:
        """Type `text` into a field, press the button, and expect the form to be refused: the page comes
        back with `status`, the field marked invalid and an alert saying why (returned)."""
        self.expect_status(status)
        self.fill(label, text)
        self.click(button)
        message = self.alert()
        assert self.document_status() == status, message
        assert self.field(label).get_attribute("aria-invalid") == "true", f"the field {label!r} is not marked invalid"
        return message

    def alert(self, timeout: float = 10) -> str:
        """The text of the visible role="alert" element, once there is one."""
        element = self.wait_for(
            ec.visibility_of_element_located((By.CSS_SELECTOR, '[role="alert"]')), timeout, f"an alert on {self.path}"
        )
        return element.text

    def heading(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "h1").text

    # -- what happened ----------------------------------------------------------------------------------

    def drain(self) -> None:
        self.console += self._log("browser")
        for entry in self._log("performance"):
            self.events.append(json.loads(entry["message"])["message"])

    def _log(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log(kind)  # type: ignore[no-untyped-call]
        return entries

    def requested_urls(self) -> list[str]:
        self.drain()
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def redirects(self) -> list[tuple[str, int]]:
        """The redirects followed so far (since the last check): each redirecting URL's path and status."""
        self.drain()
        return [
            (urlsplit(e["params"]["redirectResponse"]["url"]).path, int(e["params"]["redirectResponse"]["status"]))
            for e in self.events
            if e["method"] == "Network.requestWillBeSent" and "redirectResponse" in e["params"]
        ]

    def document_status(self) -> int:
        """The HTTP status of the page now shown (the last document response)."""
        self.drain()
        statuses = [
            int(e["params"]["response"]["status"])
            for e in self.events
            if e["method"] == "Network.responseReceived" and e["params"].get("type") == "Document"
        ]
        assert statuses, "no document was loaded"
        return statuses[-1]

    def expect_status(self, *statuses: int) -> None:
        """Pages (or htmx fragments) answering with these statuses are what the test asks for."""
        self.expected_statuses.update(statuses)

    def problems(self) -> list[str]:
        """Everything wrong since the last call: console errors and CSP violations, foreign or failed
        requests, unexpected error statuses, and unlabelled fields on the page now shown."""
        self.drain()
        found: list[str] = []
        for entry in self.console:
            message = str(entry.get("message", ""))
            # Error statuses are judged from the network events below, which know what was loaded.
            if entry.get("source") == "network" and "the server responded with a status of" in message:
                continue
            if entry.get("level") == "SEVERE" or entry.get("source") == "security" or "Content Security" in message:
                found.append(f"console {entry.get('level')} ({entry.get('source')}): {message}")
        origin = urlsplit(self.base_url).netloc
        urls: dict[str, str] = {}
        for event in self.events:
            method, params = event["method"], event["params"]
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                urls[params["requestId"]] = url
                parts = urlsplit(url)
                if parts.scheme not in _LOCAL_SCHEMES and parts.netloc != origin:
                    found.append(f"request to another host than {origin}: {url}")
            elif method == "Network.responseReceived":
                status, kind = int(params["response"]["status"]), params.get("type")
                if status >= 400 and not (status in self.expected_statuses and kind in _PAGE_TYPES):
                    found.append(f"HTTP {status} for {kind} {params['response']['url']}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                reason = params.get("blockedReason") or params.get("errorText")
                found.append(f"request failed ({reason}): {urls.get(params['requestId'], params['requestId'])}")
        self.console, self.events = [], []
        if urlsplit(self.driver.current_url).netloc == origin:
            found += [f"field without a label: {html}" for html in self.driver.execute_script(_UNLABELLED_FIELDS)]
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, f"on {self.path}:\n" + "\n".join(problems)

    def horizontal_overflow(self) -> int:
        """How many CSS pixels the page is wider than the viewport (0: nothing to scroll sideways)."""
        overflow: int = self.driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        return overflow

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        """Check the page, then save a screenshot of it: to docs/console/NAME.png with CONSOLE_SCREENSHOTS=1
        (the README's pictures), otherwise under the test's tmp dir, so `make test` leaves the checkout alone.
        The viewport, or with `full_page` the whole page as laid out in it."""
        self.assert_clean()
        path = self.shots / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not full_page:
            assert self.driver.save_screenshot(str(path)), f"no screenshot of {self.path}"
            return path
        width, height = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        image = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(image["data"]))
        return path


def screenshot_dir(tmp_path: Path) -> Path:
    return SCREENSHOTS if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
