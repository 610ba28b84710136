"""The collections page: the list, and the form that creates one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from aperag import services
from aperag.console import deps
from aperag.context import AppContext

router = APIRouter(dependencies=deps.SIGNED_IN)


def _listing(ctx: AppContext) -> list[dict[str, object]]:
    return [
        {"collection": c, "counts": services.document_counts(ctx, c.id)} for c in services.list_collections(ctx)
    ]


@router.get("/")
def collections_page(request: Request, ctx: deps.CtxDep) -> Response:
    return deps.render(request, "collections.html", {"collections": _listing(ctx), "form": {}})


@router.post("/collections")
def create_collection(
    request: Request,
    ctx: deps.CtxDep,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
) -> Response:
    name, description = name.strip(), description.strip()
    form = {"name": name, "description": description}
    error = None
    if not name:
        error = "Enter a name for the collection."
    else:
        try:
            created = services.create_collection(ctx, name, description)
        except services.InvalidInput:
            error = "A collection name is 1 to 200 letters, digits, '.', '_' or '-' (no spaces)."
        except services.Conflict:
            error = f"A collection named {name!r} already exists."
        else:
            return RedirectResponse(f"{deps.PREFIX}/collections/{created.id}", status_code=303)
    context = {"collections": _listing(ctx), "form": form, "error": error}
    return deps.render(request, "collections.html", context, 400 if "exists" not in (error or "") else 409)
