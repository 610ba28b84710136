"""Reading a collection's knowledge graph (the tables of revision 0004) for display: a page of entities,
most mentioned first (the graph API), or the most connected entities, optionally those whose name
matches a filter and their neighbours (the console's graph view); with the relations among them, and
how far the documents' graph builds are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from aperag.context import AppContext


@dataclass(frozen=True)
class Entity:
    id: int
    name: str
    label: str  # the entity type
    description: str
    chunks: int = 0  # chunks that mention it
    degree: int = 0  # relations it takes part in (the whole graph's, not only those shown)
    matched: bool = False  # its name matched the filter


@dataclass(frozen=True)
class Relation:
    id: int
    source: int
    target: int
    description: str
    keywords: str
    weight: float


@dataclass(frozen=True)
class GraphPage:
    entities: list[Entity]
    relations: list[Relation]  # whose both ends are among `entities`
    total_entities: int


@dataclass(frozen=True)
class Neighbourhood:
    entities: list[Entity]  # matched first, then the most connected
    relations: list[Relation]  # whose both ends are among `entities`
    total_entities: int  # in the collection
    total_relations: int
    candidates: int  # entities the filter selects (matches and neighbours), or all without one
    matches: int | None  # entities whose name matched; None without a filter


def _relations_among(session: Session, ids: list[int]) -> list[Relation]:
    if not ids:
        return []
    rows = session.execute(
        text(
            "SELECT id, source_id, target_id, description, keywords, weight FROM graph_relations"
            " WHERE source_id = ANY(:ids) AND target_id = ANY(:ids) ORDER BY weight DESC, id"
        ),
        {"ids": ids},
    )
    return [Relation(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def page(ctx: AppContext, collection_id: str, label: str | None, limit: int, offset: int) -> GraphPage:
    """Entities most mentioned first (the first page is the graph's core), optionally of one type."""
    where = "collection_id = :c" + (" AND entity_type = :label" if label else "")
    params: dict[str, Any] = {"c": collection_id, "label": label, "limit": limit, "offset": offset}
    with ctx.sessions() as session:
        total = int(session.execute(text(f"SELECT count(*) FROM graph_entities WHERE {where}"), params).scalar_one())
        rows = session.execute(
            text(
                "SELECT e.id, e.name, e.entity_type, e.description,"
                " (SELECT count(*) FROM graph_entity_mentions m WHERE m.entity_id = e.id) AS chunks"
                f" FROM graph_entities e WHERE {where} ORDER BY chunks DESC, e.id LIMIT :limit OFFSET :offset"
            ),
            params,
        ).all()
        entities = [Entity(r[0], r[1], r[2], r[3], chunks=r[4]) for r in rows]
        relations = _relations_among(session, [e.id for e in entities])
    return GraphPage(entities, relations, total)


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def neighbourhood(ctx: AppContext, collection_id: str, query: str | None, limit: int) -> Neighbourhood:
    """The `limit` most connected entities; with a query, only those whose name contains it (case
    insensitive) and their neighbours, the matches first."""
    c = {"c": collection_id}
    with ctx.sessions() as session:
        total_entities, total_relations = session.execute(
            text(
                "SELECT (SELECT count(*) FROM graph_entities WHERE collection_id = :c),"
                " (SELECT count(*) FROM graph_relations WHERE collection_id = :c)"
            ),
            c,
        ).one()
        matched: list[int] = []
        selected: list[int] | None = None
        if query:
            matched = list(
                session.scalars(
                    text(
                        "SELECT id FROM graph_entities WHERE collection_id = :c AND name ILIKE :p ESCAPE '\\'"
                    ),
                    {**c, "p": _like_pattern(query)},
                )
            )
            neighbours: list[int] = list(session.scalars(
                text(
                    "SELECT CASE WHEN source_id = ANY(:m) THEN target_id ELSE source_id END FROM graph_relations"
                    " WHERE collection_id = :c AND (source_id = ANY(:m) OR target_id = ANY(:m))"
                ),
                {**c, "m": matched},
            )) if matched else []  # fmt: skip
            selected = sorted(set(matched) | set(neighbours))
        rows = session.execute(
            text(
                "WITH ends AS (SELECT source_id AS id FROM graph_relations WHERE collection_id = :c"
                " UNION ALL SELECT target_id FROM graph_relations WHERE collection_id = :c),"
                " degree AS (SELECT id, count(*) AS n FROM ends GROUP BY id)"
                " SELECT e.id, e.name, e.entity_type, e.description, coalesce(d.n, 0) AS degree,"
                " e.id = ANY(:matched) AS matched"
                " FROM graph_entities e LEFT JOIN degree d ON d.id = e.id"
                " WHERE e.collection_id = :c" + (" AND e.id = ANY(:selected)" if selected is not None else "") +
                " ORDER BY matched DESC, degree DESC, e.name, e.id LIMIT :limit"
            ),
            {**c, "matched": matched, "selected": selected or [], "limit": limit},
        ).all()  # fmt: skip
        entities = [Entity(r[0], r[1], r[2], r[3], degree=int(r[4]), matched=bool(r[5])) for r in rows]
        relations = _relations_among(session, [e.id for e in entities])
    candidates = len(selected) if selected is not None else int(total_entities)
    return Neighbourhood(
        entities, relations, int(total_entities), int(total_relations), candidates, len(matched) if query else None
    )


def build_progress(ctx: AppContext, collection_id: str) -> dict[str, int]:
    """Documents per stage of the graph's build: "indexing" (not searchable yet: the graph follows),
    "pending" (indexed, waiting for its build), "building", then the outcomes (documents.graph_status):
    "ready", "partial", "failed", "disabled". Documents whose indexing failed are not counted."""
    with ctx.sessions() as session:
        rows = session.execute(
            text(
                "SELECT CASE WHEN status IN ('pending', 'indexing') THEN 'indexing'"
                " ELSE coalesce(graph_status, 'pending') END AS stage, count(*)"
                " FROM documents WHERE collection_id = :c AND status <> 'failed' GROUP BY stage"
            ),
            {"c": collection_id},
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}
