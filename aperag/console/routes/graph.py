"""The collection's graph page: the knowledge graph drawn as inline SVG (a layout computed here, no
script), the same entities and relations as tables, and a name filter (GET ?q=) that keeps the matching
entities and their neighbours."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from aperag import services
from aperag.console import deps
from aperag.console.graph_layout import layout
from aperag.graph import read
from aperag.text_rules import text_problem

router = APIRouter(dependencies=deps.SIGNED_IN)

MAX_NODES = 60  # drawn (and listed): the most connected, or a filter's matches and their neighbours
MAX_QUERY = 200
WIDTH, HEIGHT = 800, 600
TYPE_COLOURS = 8  # classes type-0 .. type-7 in graph.css; further types share type-other
STILL_BUILDING = ("indexing", "pending", "building")


@dataclass(frozen=True)
class NodeView:
    id: int
    name: str
    label: str
    description: str
    degree: int
    matched: bool
    x: float
    y: float
    r: float
    colour: str  # a class of graph.css
    label_y: float


@dataclass(frozen=True)
class EdgeView:
    source: NodeView
    target: NodeView
    relation: str


def _relation_text(keywords: str, description: str) -> str:
    text = keywords.strip() or " ".join(description.split())
    return text if len(text) <= 120 else text[:119].rsplit(" ", 1)[0] + " …"


def _colours(entities: list[read.Entity]) -> dict[str, str]:
    """The most frequent types get their own colour, in a stable order."""
    counts = Counter(e.label for e in entities)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return {t: f"type-{i}" if i < TYPE_COLOURS else "type-other" for i, t in enumerate(ranked)}


def _draw(found: read.Neighbourhood) -> tuple[list[NodeView], list[EdgeView], dict[str, str]]:
    index = {e.id: i for i, e in enumerate(found.entities)}
    pairs = [(index[r.source], index[r.target]) for r in found.relations]
    points = layout(len(found.entities), pairs, WIDTH, HEIGHT, margin=48)
    colours = _colours(found.entities)
    nodes = []
    for e, (x, y) in zip(found.entities, points, strict=True):
        r = round(6 + min(3 * math.sqrt(e.degree), 14), 1)
        nodes.append(NodeView(e.id, e.name, e.label, e.description, e.degree, e.matched, x, y, r, colours[e.label],
                              round(y + r + 16, 1)))  # fmt: skip
    by_id = {n.id: n for n in nodes}
    edges = [
        EdgeView(by_id[r.source], by_id[r.target], _relation_text(r.keywords, r.description)) for r in found.relations
    ]
    return nodes, edges, colours


@router.get("/collections/{ref}/graph")
def graph_page(request: Request, ctx: deps.CtxDep, ref: str, q: str = "") -> Response:
    collection = services.get_collection(ctx, ref)
    q = q.strip()
    error = text_problem(q, what="filter", limit=MAX_QUERY, needs_word=False)
    found = read.neighbourhood(ctx, collection.id, None if error else q or None, MAX_NODES)
    nodes, edges, colours = _draw(found)
    progress = read.build_progress(ctx, collection.id)
    context = {
        "collection": collection,
        "tab": "graph",
        "q": q,
        "error": error,
        "found": found,
        "nodes": nodes,
        "edges": edges,
        "legend": [(t, c) for t, c in colours.items() if c != "type-other"],
        "has_other_types": "type-other" in colours.values(),
        "width": WIDTH,
        "height": HEIGHT,
        "max_nodes": MAX_NODES,
        "progress": progress,
        "still_building": sum(progress.get(s, 0) for s in STILL_BUILDING),
        "failed_builds": progress.get("failed", 0),
        "documents": sum(progress.values()),
        "graph_enabled": ctx.settings.graph_enabled,
    }
    return deps.render(request, "graph.html", context, 400 if error else 200)
