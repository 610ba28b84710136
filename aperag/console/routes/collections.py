"""The collections page: the list, and the form that creates one; a collection's settings (its
description) and its deletion, confirmed by typing its name."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from aperag import services
from aperag.console import deps
from aperag.context import AppContext
from aperag.db.models import Collection

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
router = APIRouter(dependencies=deps.SIGNED_IN)

# After a collection is deleted the list says so once: a short-lived cookie (the redirect keeps the plain
# /console/ address), holding only the name, which is shown escaped and only if it is a possible name.
NOTICE_COOKIE = "aperag_console_deleted"


def _listing(ctx: AppContext) -> list[dict[str, object]]:
    return [
        {"collection": c, "counts": services.document_counts(ctx, c.id)} for c in services.list_collections(ctx)
    ]


@router.get("/")
def collections_page(request: Request, ctx: deps.CtxDep) -> Response:
    deleted = request.cookies.get(NOTICE_COOKIE)
    notice = f"Collection {deleted} was deleted." if deleted and _NAME.fullmatch(deleted) else None
    response = deps.render(request, "collections.html", {"collections": _listing(ctx), "form": {}, "notice": notice})
    if deleted is not None:
        response.delete_cookie(NOTICE_COOKIE, path=deps.PREFIX)
    return response


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


def _settings_page(
    request: Request, collection: Collection, status_code: int = 200, **extra: object
) -> Response:
    context: dict[str, object] = {"collection": collection, "tab": "settings", "description": collection.description,
                                  "max_description": services.MAX_DESCRIPTION, **extra}  # fmt: skip
    return deps.render(request, "settings.html", context, status_code)


@router.get("/collections/{ref}/settings")
def settings_page(request: Request, ctx: deps.CtxDep, ref: str, saved: str = "") -> Response:
    notice = "The description was saved." if saved == "1" else None
    return _settings_page(request, services.get_collection(ctx, ref), settings_notice=notice)


@router.post("/collections/{ref}/settings")
def save_settings(
    request: Request, ctx: deps.CtxDep, ref: str, description: Annotated[str, Form()] = ""
) -> Response:
    collection = services.get_collection(ctx, ref)
    description = description.strip()
    try:
        updated = services.update_collection_description(ctx, collection.id, description)
    except services.InvalidInput as exc:
        message = f"The description was not saved: {exc}."
        return _settings_page(request, collection, 400, description=description, settings_error=message)
    # Post/redirect/get: reloading the page does not send the form again.
    return RedirectResponse(f"{deps.PREFIX}/collections/{updated.id}/settings?saved=1", status_code=303)


@router.post("/collections/{ref}/delete")
def delete_collection(
    request: Request, ctx: deps.CtxDep, ref: str, confirm_name: Annotated[str, Form()] = ""
) -> Response:
    collection = services.get_collection(ctx, ref)
    if confirm_name.strip() != collection.name:
        message = (
            f"Type the collection name, {collection.name}, exactly to confirm: nothing was deleted."
            if confirm_name.strip()
            else f"Type the collection name, {collection.name}, to confirm: nothing was deleted."
        )
        return _settings_page(request, collection, 400, delete_error=message, confirm_name=confirm_name)
    services.delete_collection(ctx, collection.id)
    response = RedirectResponse(deps.PREFIX + "/", status_code=303)
    response.set_cookie(NOTICE_COOKIE, collection.name, max_age=60, path=deps.PREFIX, httponly=True,
                        samesite="strict")  # fmt: skip
    return response
