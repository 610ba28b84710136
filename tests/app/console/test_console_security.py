"""The console's sign-in, session cookie, CSRF check and response headers, on the real app."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from aperag.console.security import CONTENT_SECURITY_POLICY, COOKIE
from tests.app.console.conftest import KEY, csrf_of, sign_in


def test_root_and_pages_redirect_to_sign_in_until_signed_in(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    root = client.get("/", follow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (303, "/console/")
    page = client.get("/console/", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/console/sign-in")
    htmx = client.get("/console/", headers={"HX-Request": "true"}, follow_redirects=False)
    assert (htmx.status_code, htmx.headers["HX-Redirect"]) == (401, "/console/sign-in")
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    assert '<label for="api_key">API key</label>' in form.text


def test_a_wrong_or_empty_key_is_refused_with_a_message(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    token = csrf_of(client.get("/console/sign-in").text)
    wrong = client.post("/console/sign-in", data={"api_key": "nope", "csrf_token": token})
    assert wrong.status_code == 401
    assert 'role="alert"' in wrong.text and "not valid" in wrong.text
    empty = client.post("/console/sign-in", data={"api_key": " ", "csrf_token": token})
    assert empty.status_code == 400 and "Enter an API key" in empty.text
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_the_cookie_holds_no_key_is_http_only_and_strict(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    token = csrf_of(client.get("/console/sign-in").text)
    response = client.post("/console/sign-in", data={"api_key": KEY, "csrf_token": token}, follow_redirects=False)
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(COOKIE + "=")
    for attribute in ("HttpOnly", "Path=/console", "SameSite=strict"):
        assert attribute.lower() in set_cookie.lower(), set_cookie
    assert KEY not in set_cookie and KEY not in response.headers.get("location", "")
    # The session now opens the console; the sign-in rotated the nonce (the old CSRF token is dead).
    home = client.get("/console/")
    assert home.status_code == 200 and "Collections" in home.text
    assert csrf_of(home.text) != token


def test_behind_https_the_cookie_is_secure(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    page = client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in page.headers["set-cookie"].lower()


def test_a_forged_or_expired_cookie_is_a_new_anonymous_session(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    client.cookies.set(COOKIE, "eyJuIjoieCIsImsiOiJ5In0.forged.sig", path="/console")
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/sign-in"


def test_removing_the_key_signs_its_sessions_out(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory()
    sign_in(client)
    # The same database and cookie, read by an app whose keys no longer include KEY (a key rotation with
    # an explicit session secret, so the signature itself still verifies).
    assert client.get("/console/").status_code == 200
    app = client.app
    from aperag.console.security import SessionCodec

    settings = app.state.ctx.settings  # type: ignore[attr-defined]
    from dataclasses import replace

    app.state.console_codec = SessionCodec(replace(settings, api_keys=("other",), console_session_secret="s"))  # type: ignore[attr-defined]
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_unsafe_requests_need_the_csrf_token(console: TestClient) -> None:
    refused = console.post("/console/collections", data={"name": "docs"})
    assert refused.status_code == 403
    assert 'role="alert"' in refused.text and "Reload the page" in refused.text
    wrong = console.post("/console/collections", data={"name": "docs", "csrf_token": "0" * 64})
    assert wrong.status_code == 403
    header = console.post(
        "/console/collections",
        data={"name": "docs"},
        headers={"X-CSRF-Token": csrf_of(console.get("/console/").text)},
        follow_redirects=False,
    )
    assert header.status_code == 303
    assert "docs" in console.get("/console/").text
    sign_out = console.post("/console/sign-out", follow_redirects=False)
    assert sign_out.status_code == 403  # signing someone out is a state change too


def test_every_console_answer_carries_the_security_headers(console: TestClient) -> None:
    for path in ("/console/", "/console/sign-in", "/console/static/console.css", "/console/no-such-page"):
        response = console.get(path, follow_redirects=False)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    assert console.get("/console/").headers["cache-control"] == "no-store"
    missing = console.get("/console/no-such-page")
    assert missing.status_code == 404 and 'role="alert"' in missing.text and "<html" in missing.text
    # The JSON API keeps its JSON errors.
    api = console.get("/api/v1/collections/none", headers={"Authorization": f"Bearer {KEY}"})
    assert api.status_code == 404 and api.json()["detail"]


def test_pages_load_only_same_origin_assets_and_no_inline_code(console: TestClient) -> None:
    import re

    html = console.get("/console/").text
    assert "<script>" not in html and " style=" not in html and "<style" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "an external asset"
    for src in re.findall(r'<script src="([^"]+)"', html) + re.findall(r'<link rel="stylesheet" href="([^"]+)"', html):
        assert src.startswith("/console/static/"), src
        assert console.get(src).status_code == 200, src
    htmx = console.get("/console/static/vendor/htmx.min.js")
    assert htmx.status_code == 200 and b"htmx" in htmx.content


def test_with_auth_off_the_console_is_open_and_says_so(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory(APERAG_API_KEYS="")
    page = client.get("/console/")
    assert page.status_code == 200 and "Authentication is off" in page.text
    assert client.get("/console/sign-in", follow_redirects=False).status_code == 303
    # CSRF still applies.
    assert client.post("/console/collections", data={"name": "x"}).status_code == 403


def test_the_console_can_be_turned_off(console_factory: Callable[..., TestClient]) -> None:
    client = console_factory(APERAG_CONSOLE_ENABLED="false")
    assert client.get("/console/", follow_redirects=False).status_code == 404
    assert client.get("/", follow_redirects=False).status_code == 404
    assert client.get("/health/live").status_code == 200


def test_the_api_docs_load_swagger_from_this_app(console: TestClient) -> None:
    import re

    page = console.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"https?://", page.text), "the docs page loads something from another site"
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text):
        assert console.get(asset).status_code == 200, asset
    assert len(re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text)) == 2
    assert console.get("/redoc").status_code == 404
