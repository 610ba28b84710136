"""The console on a phone-sized screen (390x844, mobile viewport rules): every page fits the width (the
documents table and the graph picture scroll inside their own regions, not the page), and the controls
stay usable."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.browser.conftest import DOCS, ConsoleServer, sign_in, unique
from tests.browser.harness import Browser

# Buttons, links and fields cut by the screen's edge (partly outside it; wholly outside is a deliberate
# hiding place, like the skip link's until it has the focus), except inside a region that scrolls sideways.
_OUTSIDE = """
const scrolls = (el) => {
  for (let p = el.parentElement; p; p = p.parentElement) {
    if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return true;
  }
  return false;
};
return Array.from(document.querySelectorAll('button, a, input, select, textarea'))
  .filter(el => el.offsetParent !== null && !scrolls(el))
  .filter(el => { const r = el.getBoundingClientRect();
                  return r.right > 0 && r.left < innerWidth && (r.left < 0 || r.right > innerWidth); })
  .map(el => el.outerHTML.slice(0, 100));
"""


def fits(browser: Browser) -> None:
    assert browser.horizontal_overflow() == 0, f"{browser.path} is wider than the screen"
    assert browser.driver.execute_script(_OUTSIDE) == [], f"controls outside the screen on {browser.path}"


def test_every_page_fits_a_phone(phone: Browser, console_server: ConsoleServer) -> None:
    browser = phone
    collection_id = console_server.seed(unique("pocket"), [DOCS / "k8s-probes.md", DOCS / "linux-oom.md"])
    browser.go("/console/sign-in")
    fits(browser)
    browser.shot("mobile-sign-in")
    sign_in(browser)
    fits(browser)
    browser.shot("mobile-collections")
    browser.go(f"/console/collections/{collection_id}")
    fits(browser)
    browser.shot("mobile-documents")
    # The table is wider than a phone: it scrolls in its own region, which takes the keyboard's focus.
    region = browser.driver.find_element(By.ID, "documents-scroll")
    assert region.get_attribute("tabindex") == "0" and region.get_attribute("role") == "region"
    delete = region.find_element(By.XPATH, ".//button[normalize-space()='Delete']")
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'end'})", delete)
    box = delete.rect
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    browser.go(f"/console/collections/{collection_id}/search?q=liveness+probe&mode=hybrid")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "li.hit mark")
    fits(browser)
    browser.shot("mobile-search")
    browser.go(f"/console/collections/{collection_id}/chat")
    fits(browser)
    browser.go(f"/console/collections/{collection_id}/graph")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "svg.graph a.node")
    fits(browser)
    browser.shot("mobile-graph")
    browser.go(f"/console/collections/{collection_id}/settings")
    fits(browser)
