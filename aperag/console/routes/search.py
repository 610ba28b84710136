"""The collection's search page: a GET form (results are linkable), a mode switch, and the hits with the
query's terms marked, each linked to its chunk in the document view."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from markupsafe import Markup

from aperag import services
from aperag.console import deps
from aperag.console.highlight import highlight
from aperag.search import MODES, search
from aperag.text_rules import text_problem

router = APIRouter(dependencies=deps.SIGNED_IN)

DEFAULT_MODE = "hybrid"
# The switch's order and labels (the values are aperag.search's modes).
MODE_LABELS = {"hybrid": "Hybrid", "vector": "Vector", "fulltext": "Full text", "graph": "Graph"}
TOP_K = 10
MAX_QUERY = 4000


@dataclass(frozen=True)
class HitView:
    rank: int
    document_id: str
    filename: str
    ordinal: int | None
    score: float
    text: Markup


@router.get("/collections/{ref}/search")
def search_page(request: Request, ctx: deps.CtxDep, ref: str, q: str = "", mode: str = DEFAULT_MODE) -> Response:
    # A sync route: it runs on the API's worker threads, where search() embeds the query and then does
    # its database work on one connection (aperag.search.search).
    collection = services.get_collection(ctx, ref)
    q = q.strip()
    context: dict[str, object] = {
        "collection": collection, "tab": "search", "q": q, "mode": mode, "modes": MODE_LABELS,
        "searched": False, "hits": [], "graph": None,
    }  # fmt: skip
    error = None
    if mode not in MODES:
        error = f"Unknown search mode {mode[:40]!r}: choose one of {', '.join(MODE_LABELS.values())}."
        context["mode"] = DEFAULT_MODE
    elif q:
        error = text_problem(q, what="query", limit=MAX_QUERY)
    if error is not None:
        return deps.render(request, "search.html", {**context, "error": error}, 400)
    if not q:
        return deps.render(request, "search.html", context)
    found = search(ctx, collection.id, q, mode, TOP_K)
    ordinals = services.chunk_ordinals(ctx, [r.chunk_id for r in found.results])
    hits = [
        HitView(i, r.document_id, r.filename, ordinals.get(r.chunk_id), r.score, highlight(r.text, q))
        for i, r in enumerate(found.results, start=1)
    ]
    graph = found.graph if found.graph is not None and (found.graph.entities or found.graph.relations) else None
    return deps.render(request, "search.html", {**context, "searched": True, "hits": hits, "graph": graph})
