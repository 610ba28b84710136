"""The web console: server-rendered pages (Jinja2) with htmx, served by the API process under /console/.

One origin for the console and the API keeps the session cookie, the CSRF check and the
Content-Security-Policy simple (docs/app.md, "Web console"). The pages call the app's services directly,
in the API's own threads and connection pool, not the JSON API over HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from aperag.console import deps
from aperag.console.assets import STATIC_DIR
from aperag.console.routes import auth, chat, collections, documents, graph, search
from aperag.console.security import SessionCodec

Handler = Callable[[Request, Exception], Any]


def _router() -> APIRouter:
    # The CSRF check sits on the router itself: no unsafe console route can be added without it.
    router = APIRouter(prefix=deps.PREFIX, dependencies=[Depends(deps.verify_csrf)], include_in_schema=False)
    router.include_router(auth.router)
    for area in (collections, documents, search, chat, graph):
        router.include_router(area.router)
    return router


def _html_for_console(original: Handler) -> Handler:
    """The app's error handlers answer JSON; on a console path the same error becomes a page, with the
    same status and message."""

    async def handle(request: Request, exc: Exception) -> Response:
        result = original(request, exc)
        response: Response = await result if isinstance(result, Awaitable) else result
        if not request.url.path.startswith(deps.PREFIX + "/") or request.url.path.startswith(deps.PREFIX + "/static/"):
            return response
        if not hasattr(request.state, "console_session"):
            return response  # failed before the session middleware ran
        status = response.status_code
        return deps.render(request, "error.html", {"status": status, "message": _detail(response, exc)}, status)

    return handle


def _detail(response: Response, exc: Exception) -> str:
    import json

    if response.status_code >= 500:
        return "Something went wrong on the server. Try again; if it keeps failing, the server's log says why."
    try:
        detail = json.loads(bytes(response.body)).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: say which field
        parts = [f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg', '')}" for d in detail]
        return "; ".join(parts) or "The request was not valid."
    text = str(detail or exc)
    return text[:1].upper() + text[1:]  # the services' messages start lowercase, as API details do


def mount(app: FastAPI, enabled: bool) -> None:
    """Adds the console to the app (or, disabled, nothing: /console/ then answers 404)."""
    if not enabled:
        return
    app.state.console_codec = SessionCodec(app.state.ctx.settings)
    app.mount(deps.PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(_router())

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(deps.PREFIX + "/", status_code=303)

    @app.get(deps.PREFIX, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(deps.PREFIX + "/", status_code=303)

    async def sign_in_required(request: Request, _: Exception) -> Response:
        if deps.is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": deps.PREFIX + "/sign-in"})
        return RedirectResponse(deps.PREFIX + "/sign-in", status_code=303)

    async def csrf_rejected(request: Request, _: Exception) -> Response:
        message = "This form has expired or did not come from this console. Reload the page and try again."
        return deps.render(request, "error.html", {"status": 403, "message": message}, 403)

    for exc_type, handler in list(app.exception_handlers.items()):
        app.exception_handlers[exc_type] = _html_for_console(handler)
    app.add_exception_handler(deps.SignInRequired, sign_in_required)
    app.add_exception_handler(deps.CsrfRejected, csrf_rejected)
    app.middleware("http")(deps.session_middleware)
