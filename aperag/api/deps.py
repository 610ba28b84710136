"""Dependencies of the API's routers (aperag.api.routes), injected per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aperag.context import AppContext


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]
