"""Sign-in with an API key, and sign-out. The key is checked once and never stored: the session keeps a
fingerprint of it (aperag.console.security)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from aperag.console import deps
from aperag.console.security import Session, key_fingerprint

router = APIRouter()


@router.get("/sign-in")
def sign_in_page(request: Request) -> Response:
    if not deps.codec(request).settings.auth_enabled or deps.codec(request).signed_in(deps.session(request)):
        return RedirectResponse(deps.PREFIX + "/", status_code=303)
    return deps.render(request, "sign_in.html")


@router.post("/sign-in")
def sign_in(request: Request, api_key: Annotated[str, Form()] = "") -> Response:
    codec = deps.codec(request)
    if not codec.settings.auth_enabled:
        return RedirectResponse(deps.PREFIX + "/", status_code=303)
    key = api_key.strip()
    if not key:
        return deps.render(request, "sign_in.html", {"error": "Enter an API key."}, 400)
    if not codec.key_matches(key):
        return deps.render(request, "sign_in.html", {"error": "That API key is not valid."}, 401)
    deps.replace_session(request, Session(nonce=Session.new().nonce, key=key_fingerprint(key)))
    return RedirectResponse(deps.PREFIX + "/", status_code=303)


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    deps.replace_session(request, Session.new())
    return RedirectResponse(deps.PREFIX + "/sign-in", status_code=303)
