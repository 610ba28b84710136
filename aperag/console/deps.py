"""What every console route depends on: the session, the sign-in guard, the CSRF check and rendering.

The session is read (or started) by `session_middleware` for every /console request and put on
`request.state`; a route that changes it (sign-in, sign-out) calls `replace_session`, and the middleware
writes the cookie on the way out. The CSRF check is a dependency of the console router itself, so no
unsafe route can be added without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from aperag.console.security import (
    COOKIE,
    COOKIE_PATH,
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    Session,
    SessionCodec,
)
from aperag.context import AppContext

PREFIX = "/console"
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """Raised by the guard; answered with a redirect to the sign-in page (or HX-Redirect for htmx)."""


class CsrfRejected(Exception):
    """An unsafe request without the session's CSRF token."""


def codec(request: Request) -> SessionCodec:
    found: SessionCodec = request.app.state.console_codec
    return found


def session(request: Request) -> Session:
    found: Session = request.state.console_session
    return found


def replace_session(request: Request, new: Session) -> None:
    """Sign-in and sign-out start a new session (a new nonce: no session fixation, new CSRF tokens)."""
    request.state.console_session = new
    request.state.console_cookie = new


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def require_sign_in(request: Request) -> None:
    if not codec(request).signed_in(session(request)):
        raise SignInRequired


SIGNED_IN = [Depends(require_sign_in)]


async def verify_csrf(request: Request) -> None:
    """Every unsafe console request carries the session's token: htmx sends it as a header (set on
    <body>), plain forms as a hidden field."""
    if request.method in _SAFE_METHODS:
        return
    token = request.headers.get(CSRF_HEADER)
    if token is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            # Parsed once: Starlette keeps the form on the request for the route's own Form() fields.
            form = await request.form()
            field = form.get(CSRF_FIELD)
            token = field if isinstance(field, str) and not isinstance(field, UploadFile) else None
    if not codec(request).csrf_valid(session(request), token):
        raise CsrfRejected


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    sess = session(request)
    c = codec(request)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "csrf_token": c.csrf_token(sess),
            "csrf_field": CSRF_FIELD,
            "auth_enabled": c.settings.auth_enabled,
            "signed_in": c.signed_in(sess),
            **(context or {}),
        },
        status_code=status_code,
    )


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _is_https(request: Request) -> bool:
    # The Secure flag only: trusting a proxy's X-Forwarded-Proto here can only make the cookie stricter.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


async def session_middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    path = request.url.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return await call_next(request)
    c = codec(request)
    current = c.loads(request.cookies.get(COOKIE))
    request.state.console_cookie = None
    if current is None:
        current = Session.new()
        request.state.console_cookie = current
    request.state.console_session = current
    response = await call_next(request)
    to_set: Session | None = request.state.console_cookie
    if to_set is not None:
        response.set_cookie(
            COOKIE,
            c.dumps(to_set),
            max_age=c.max_age,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=_is_https(request),
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not path.startswith(PREFIX + "/static/"):
        # Pages show collection and document data: not for shared caches nor the back-forward cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def not_found() -> HTTPException:
    return HTTPException(404, "Not found")
