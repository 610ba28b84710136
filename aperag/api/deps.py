"""Dependencies shared by the route modules (aperag.api.routes), injected as FastAPI dependencies.

The app's context lives on `app.state.ctx` (set by create_app), so a router needs no closure over it
and can be written, and tested, as a module of its own.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aperag.config import Settings
from aperag.context import AppContext
from aperag.llm import AsyncLLMClient, NotConfigured, async_client_from_settings

_bearer = HTTPBearer(auto_error=False)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]
# The names the graph routes use (same dependency).
get_context = get_ctx
ContextDep = CtxDep


def key_is_valid(settings: Settings, token: str) -> bool:
    """The same rule as the collections API: any of APERAG_API_KEYS, compared in constant time; no
    keys configured means auth is off."""
    if not settings.auth_enabled:
        return True
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in settings.api_keys)


async def require_api_key(
    ctx: CtxDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    # async: a plain def dependency would cost every request a hop to the thread pool.
    if not key_is_valid(ctx.settings, creds.credentials if creds is not None else ""):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


AUTH = [Depends(require_api_key)]


@asynccontextmanager
async def llm_lifespan(app: Any) -> AsyncIterator[None]:
    """One asyncio client of the chat model per app (its connection pool), opened on the app's event
    loop and closed with it; none when no model is configured (chat then answers 503 with the sources)."""
    try:
        app.state.llm = async_client_from_settings(app.state.ctx.settings)
    except NotConfigured:
        app.state.llm = None
    try:
        yield
    finally:
        if app.state.llm is not None:
            await app.state.llm.aclose()


def get_llm(request: Request) -> AsyncLLMClient | None:
    llm: AsyncLLMClient | None = getattr(request.app.state, "llm", None)
    return llm


LLMDep = Annotated[AsyncLLMClient | None, Depends(get_llm)]
