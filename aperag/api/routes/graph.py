"""`GET /api/v1/collections/{collection}/graph`: the collection's knowledge graph, a page of nodes at a
time (optionally only one entity type) with the edges among them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import text

from aperag import services
from aperag.api.deps import ContextDep
from aperag.api.schemas import ErrorOut

router = APIRouter(tags=["graph"])


class GraphNode(BaseModel):
    id: int
    name: str
    label: str = Field(description="the entity type")
    description: str
    chunks: int = Field(description="chunks that mention the entity")


class GraphEdge(BaseModel):
    id: int
    source: int
    target: int
    description: str
    keywords: str
    weight: float


class GraphOut(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge] = Field(description="relations whose both ends are among `nodes`")
    total_nodes: int
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorOut, "description": "unknown collection"},
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    503: {"model": ErrorOut, "description": "the database is unreachable"},
}


@router.get("/api/v1/collections/{collection}/graph", response_model=GraphOut, responses=_ERRORS)
def get_graph(
    collection: str,
    ctx: ContextDep,
    label: Annotated[str | None, Query(max_length=64, description="only entities of this type")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> GraphOut:
    c = services.get_collection(ctx, collection)
    where = "collection_id = :c" + (" AND entity_type = :label" if label else "")
    params: dict[str, object] = {"c": c.id, "label": label, "limit": limit, "offset": offset}
    with ctx.sessions() as session:
        total = int(session.execute(text(f"SELECT count(*) FROM graph_entities WHERE {where}"), params).scalar_one())
        # Most-mentioned first: the first page is the graph's core.
        rows = session.execute(
            text(
                "SELECT e.id, e.name, e.entity_type, e.description,"
                " (SELECT count(*) FROM graph_entity_mentions m WHERE m.entity_id = e.id) AS chunks"
                f" FROM graph_entities e WHERE {where} ORDER BY chunks DESC, e.id LIMIT :limit OFFSET :offset"
            ),
            params,
        ).all()
        nodes = [GraphNode(id=r[0], name=r[1], label=r[2], description=r[3], chunks=r[4]) for r in rows]
        ids = [n.id for n in nodes]
        edges = [
            GraphEdge(id=r[0], source=r[1], target=r[2], description=r[3], keywords=r[4], weight=r[5])
            for r in session.execute(
                text(
                    "SELECT id, source_id, target_id, description, keywords, weight FROM graph_relations"
                    " WHERE source_id = ANY(:ids) AND target_id = ANY(:ids) ORDER BY weight DESC, id"
                ),
                {"ids": ids},
            )
        ] if ids else []  # fmt: skip
    next_offset = offset + limit if offset + limit < total else None
    return GraphOut(nodes=nodes, edges=edges, total_nodes=total, offset=offset, limit=limit, next_offset=next_offset)
