"""The `graph` search mode: entities and relations that match the query, their neighbourhood, and the
chunks that support them.

1. Entities: those whose normalised name is a word n-gram of the query (score 1), and the nearest by
   embedding (score: cosine similarity), the best MAX_ENTITIES kept.
2. Relations: the nearest by embedding, and every relation of a matched entity (its neighbourhood,
   scored by the entity's score times NEIGHBOUR_DISCOUNT), the best MAX_RELATIONS kept.
3. Chunks: each chunk that mentions a kept entity or relation scores the sum of their scores; the
   ranking is divided by its best score (0..1, as hybrid fusion expects).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.orm import Session

from aperag.graph.model import normalise_name
from aperag.graph.store import vector_literal
from aperag.stores import Hit

MAX_ENTITIES = 12
MAX_RELATIONS = 24
NEIGHBOUR_DISCOUNT = 0.5
# Below this cosine similarity an entity or relation found by embedding alone is not a match.
MIN_SIMILARITY = 0.35
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class MatchedEntity:
    name: str
    type: str
    score: float


@dataclass(frozen=True)
class MatchedRelation:
    source: str
    target: str
    description: str
    keywords: str
    score: float


@dataclass(frozen=True)
class GraphContext:
    """What the graph matched for a query (returned with graph-mode results: the why of the ranking,
    and what a chat answer can cite), best first."""

    entities: list[MatchedEntity]
    relations: list[MatchedRelation]


@dataclass(frozen=True)
class GraphMatch:
    entities: dict[int, float]
    relations: dict[int, float]
    hits: list[Hit]


def query_ngrams(query: str, longest: int = 4) -> list[str]:
    words = [normalise_name(w) for w in _TOKEN.findall(query)]
    words = [w for w in words if w]
    grams = {" ".join(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)}
    return sorted(grams)


def graph_search(
    session: Session, collection_id: str, query: str, query_vector: npt.NDArray[np.float32] | None, depth: int
) -> GraphMatch:
    entities: dict[int, float] = {}
    for row in session.execute(
        text("SELECT id FROM graph_entities WHERE collection_id = :c AND name_key = ANY(:k)"),
        {"c": collection_id, "k": query_ngrams(query)},
    ):
        entities[row[0]] = 1.0
    relations: dict[int, float] = {}
    if query_vector is not None:
        # The HNSW indexes of graph.store.ensure_indexes: the same expression and predicate, so the
        # planner uses them. The collection filter applies after the index scan; iterative scan goes on
        # until enough rows of this collection are found (as the vector store does).
        d = len(query_vector)
        q = vector_literal(query_vector)
        session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(2 * MAX_RELATIONS)})
        nearest = (
            "SELECT id, 1 - ((embedding::vector({d})) <=> CAST(:q AS vector({d}))) FROM {table}"
            " WHERE collection_id = :c AND vector_dims(embedding) = {d}"
            " ORDER BY (embedding::vector({d})) <=> CAST(:q AS vector({d})) LIMIT :n"
        )
        for row in session.execute(
            text(nearest.format(d=d, table="graph_entities")), {"c": collection_id, "q": q, "n": MAX_ENTITIES}
        ):
            if row[1] >= MIN_SIMILARITY:
                entities[row[0]] = max(entities.get(row[0], 0.0), float(row[1]))
        for row in session.execute(
            text(nearest.format(d=d, table="graph_relations")), {"c": collection_id, "q": q, "n": MAX_RELATIONS}
        ):
            if row[1] >= MIN_SIMILARITY:
                relations[row[0]] = float(row[1])
    entities = dict(sorted(entities.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ENTITIES])
    if entities:
        for row in session.execute(
            text(
                "SELECT id, source_id, target_id FROM graph_relations"
                " WHERE source_id = ANY(:e) OR target_id = ANY(:e) ORDER BY weight DESC, id LIMIT :n"
            ),
            {"e": list(entities), "n": MAX_RELATIONS * 4},
        ):
            score = NEIGHBOUR_DISCOUNT * max(entities.get(row[1], 0.0), entities.get(row[2], 0.0))
            relations[row[0]] = max(relations.get(row[0], 0.0), score)
    relations = dict(sorted(relations.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_RELATIONS])
    scores: dict[str, float] = defaultdict(float)
    if entities:
        for row in session.execute(
            text("SELECT entity_id, chunk_id FROM graph_entity_mentions WHERE entity_id = ANY(:e)"),
            {"e": list(entities)},
        ):
            scores[row[1]] += entities[row[0]]
    if relations:
        for row in session.execute(
            text("SELECT relation_id, chunk_id FROM graph_relation_mentions WHERE relation_id = ANY(:r)"),
            {"r": list(relations)},
        ):
            scores[row[1]] += relations[row[0]]
    best = max(scores.values(), default=1.0) or 1.0
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
    return GraphMatch(entities, relations, [Hit(cid, s / best) for cid, s in ranked])


def describe(session: Session, match: GraphMatch) -> GraphContext:
    """Names, types and descriptions of a match's entities and relations (at most MAX_ENTITIES and
    MAX_RELATIONS rows, by primary key)."""
    entities: list[MatchedEntity] = []
    if match.entities:
        rows = session.execute(
            text("SELECT id, name, entity_type FROM graph_entities WHERE id = ANY(:e)"), {"e": list(match.entities)}
        ).all()
        entities = [MatchedEntity(r[1], r[2], round(match.entities[r[0]], 4)) for r in rows]
    relations: list[MatchedRelation] = []
    if match.relations:
        rows = session.execute(
            text(
                "SELECT r.id, s.name, t.name, r.description, r.keywords FROM graph_relations r"
                " JOIN graph_entities s ON s.id = r.source_id JOIN graph_entities t ON t.id = r.target_id"
                " WHERE r.id = ANY(:r)"
            ),
            {"r": list(match.relations)},
        ).all()
        relations = [MatchedRelation(r[1], r[2], r[3], r[4], round(match.relations[r[0]], 4)) for r in rows]
    entities.sort(key=lambda e: (-e.score, e.name))
    relations.sort(key=lambda r: (-r.score, r.source, r.target))
    return GraphContext(entities, relations)
