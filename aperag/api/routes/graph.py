"""`GET /api/v1/collections/{collection}/graph`: the collection's knowledge graph, a page of nodes at a
time (optionally only one entity type) with the edges among them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from aperag import services
from aperag.api.deps import ContextDep
from aperag.api.schemas import ErrorOut
from aperag.graph import read

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
    found = read.page(ctx, c.id, label, limit, offset)
    # The wire models take their fields from aperag.graph.read's rows (the extra ones are left out).
    nodes = [GraphNode.model_validate(e, from_attributes=True) for e in found.entities]
    edges = [GraphEdge.model_validate(r, from_attributes=True) for r in found.relations]
    next_offset = offset + limit if offset + limit < found.total_entities else None
    return GraphOut(
        nodes=nodes, edges=edges, total_nodes=found.total_entities, offset=offset, limit=limit, next_offset=next_offset
    )
