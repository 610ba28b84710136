"""The graph tables (revision 0004): write one document's extraction, remove a document's part, read.

Merging: entities are one row per (collection, normalised name); relations one row per unordered pair.
Every chunk that names them leaves a mention row (what it said, with its type, keywords and weight);
an entity's description and type, and a relation's description, keywords and weight, are recomputed
from their mentions whenever those change, so removing a document removes exactly its contribution,
and an entity or relation no chunk mentions any more is deleted.

Writers of one collection take a transaction-scoped advisory lock on it: two documents naming the same
entity merge one after the other instead of deadlocking on each other's rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from aperag.graph.model import ChunkOutcome, Entity, normalise_name

# Descriptions merged from many mentions are cut here (the first distinct ones, alphabetically: stable).
MERGED_DESCRIPTION_CHARS = 2000


def _collection_lock_key(collection_id: str) -> int:
    return zlib.crc32(collection_id.encode()) | (2 << 40)


def ensure_indexes(engine: Engine, dimension: int) -> None:
    """HNSW indexes on the entities' and relations' embeddings, for the configured dimension.

    Why not in migration 0004: the `embedding` columns are untyped `vector` (the dimension is the
    embedding model's, a setting), and HNSW indexes a fixed dimension. So, like the vector store's
    table, they are made by `ensure_store_schemas` (after `aperag migrate`, and at an embedded start):
    an expression index on `embedding::vector(d)`, partial on `vector_dims(embedding) = d` so rows of
    another model's dimension neither break the build nor are searched. graph.retrieval queries with the
    same expression and predicate. Without them a graph search scans every vector exactly: at 10k chunks
    (35k relations) that was ~90% of its time (docs/benchmarks.md, "Graph")."""
    d = int(dimension)
    with engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass('graph_entities')")).scalar() is None:
            return  # before revision 0004: nothing to index yet
        for table in ("graph_entities", "graph_relations"):
            conn.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS ix_{table}_hnsw_{d} ON {table}"
                    f" USING hnsw ((embedding::vector({d})) vector_cosine_ops) WHERE vector_dims(embedding) = {d}"
                )
            )


def vector_literal(vector: npt.NDArray[np.float32] | Sequence[float]) -> str:
    return "[" + ",".join(f"{float(x):.6g}" for x in vector) + "]"


@dataclass(frozen=True)
class DocumentGraphWrite:
    collection_id: str
    document_id: str
    outcomes: Sequence[ChunkOutcome]
    # Embedding of each new entity key and relation (key pair) this write may create; an entity or a
    # relation that already exists keeps its embedding.
    entity_vectors: dict[str, str]
    relation_vectors: dict[tuple[str, str], str]


def entity_keys(outcomes: Iterable[ChunkOutcome]) -> dict[str, Entity]:
    """Every entity the outcomes name (relation ends included), by normalised name: the first one seen."""
    found: dict[str, Entity] = {}
    for outcome in outcomes:
        if outcome.graph is None:
            continue
        for entity in outcome.graph.entities:
            if entity.key:
                found.setdefault(entity.key, entity)
        for relation in outcome.graph.relations:
            for name in (relation.source, relation.target):
                key = normalise_name(name)
                if key:
                    found.setdefault(key, Entity(name=name, type="unknown"))
    return found


def existing_entity_keys(session: Session, collection_id: str, keys: Sequence[str]) -> set[str]:
    rows = session.execute(
        text("SELECT name_key FROM graph_entities WHERE collection_id = :c AND name_key = ANY(:k)"),
        {"c": collection_id, "k": list(keys)},
    )
    return {r[0] for r in rows}


def _recompute(session: Session, entity_ids: list[int], relation_ids: list[int]) -> None:
    if entity_ids:
        session.execute(
            text(
                "UPDATE graph_entities e SET"
                " description = left(coalesce(s.d, ''), :cut), entity_type = coalesce(s.t, e.entity_type)"
                " FROM (SELECT entity_id,"
                "   string_agg(DISTINCT description, ' | ' ORDER BY description) FILTER (WHERE description <> '') d,"
                "   mode() WITHIN GROUP (ORDER BY entity_type)"
                "     FILTER (WHERE entity_type <> 'unknown') t"
                "   FROM graph_entity_mentions WHERE entity_id = ANY(:ids) GROUP BY entity_id) s"
                " WHERE e.id = s.entity_id"
            ),
            {"ids": entity_ids, "cut": MERGED_DESCRIPTION_CHARS},
        )
    if relation_ids:
        session.execute(
            text(
                "UPDATE graph_relations r SET description = left(coalesce(s.d, ''), :cut),"
                " keywords = left(coalesce(s.k, ''), 500), weight = s.w"
                " FROM (SELECT relation_id,"
                "   string_agg(DISTINCT description, ' | ' ORDER BY description) FILTER (WHERE description <> '') d,"
                "   string_agg(DISTINCT keywords, ', ' ORDER BY keywords) FILTER (WHERE keywords <> '') k,"
                "   sum(weight) w FROM graph_relation_mentions WHERE relation_id = ANY(:ids) GROUP BY relation_id) s"
                " WHERE r.id = s.relation_id"
            ),
            {"ids": relation_ids, "cut": MERGED_DESCRIPTION_CHARS},
        )


def _prune(session: Session, entity_ids: list[int], relation_ids: list[int]) -> None:
    """Delete the given relations and entities that no chunk mentions any more."""
    if relation_ids:
        session.execute(
            text(
                "DELETE FROM graph_relations r WHERE r.id = ANY(:ids)"
                " AND NOT EXISTS (SELECT 1 FROM graph_relation_mentions m WHERE m.relation_id = r.id)"
            ),
            {"ids": relation_ids},
        )
    if entity_ids:
        session.execute(
            text(
                "DELETE FROM graph_entities e WHERE e.id = ANY(:ids)"
                " AND NOT EXISTS (SELECT 1 FROM graph_entity_mentions m WHERE m.entity_id = e.id)"
            ),
            {"ids": entity_ids},
        )


def _lock_collections(session: Session, collection_ids: Iterable[str]) -> None:
    for collection_id in sorted(set(collection_ids)):
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _collection_lock_key(collection_id)})


def remove_document(session: Session, document_id: str) -> None:
    """Take a document's mentions out of the graph; recompute what they touched, prune what is left
    unsupported. Call before the document's chunks are deleted (their mentions would cascade away
    without the recomputation)."""
    collections = [
        r[0] for r in session.execute(text("SELECT collection_id FROM documents WHERE id = :d"), {"d": document_id})
    ]
    _lock_collections(session, collections)
    entity_ids = [
        r[0]
        for r in session.execute(
            text("DELETE FROM graph_entity_mentions WHERE document_id = :d RETURNING entity_id"), {"d": document_id}
        )
    ]
    relation_ids = [
        r[0]
        for r in session.execute(
            text("DELETE FROM graph_relation_mentions WHERE document_id = :d RETURNING relation_id"),
            {"d": document_id},
        )
    ]
    session.execute(text("DELETE FROM graph_chunk_extractions WHERE document_id = :d"), {"d": document_id})
    entity_ids, relation_ids = sorted(set(entity_ids)), sorted(set(relation_ids))
    _prune(session, entity_ids, relation_ids)
    _recompute(session, entity_ids, relation_ids)


def write_document(session: Session, write: DocumentGraphWrite) -> tuple[int, int]:
    """Replace the document's part of the graph with `write.outcomes`; returns (entities, relations)
    the document now mentions."""
    remove_document(session, write.document_id)
    _lock_collections(session, [write.collection_id])
    c, d = write.collection_id, write.document_id
    names = entity_keys(write.outcomes)
    for key in sorted(names):
        entity = names[key]
        session.execute(
            text(
                "INSERT INTO graph_entities (collection_id, name_key, name, entity_type, description, embedding)"
                " VALUES (:c, :k, :n, :t, :desc, CAST(:v AS vector))"
                " ON CONFLICT (collection_id, name_key) DO NOTHING"
            ),
            {"c": c, "k": key, "n": entity.name, "t": entity.type, "desc": entity.description,
             "v": write.entity_vectors.get(key)},
        )  # fmt: skip
    ids: dict[str, int] = {
        r[0]: r[1]
        for r in session.execute(
            text("SELECT name_key, id FROM graph_entities WHERE collection_id = :c AND name_key = ANY(:k)"),
            {"c": c, "k": list(names)},
        )
    }
    entity_mentions: dict[tuple[int, str], dict[str, Any]] = {}
    relation_mentions: dict[tuple[tuple[int, int], str], dict[str, Any]] = {}
    pair_keys: dict[tuple[int, int], tuple[str, str]] = {}
    for outcome in write.outcomes:
        status = "ok" if outcome.graph is not None else "failed"
        session.execute(
            text(
                "INSERT INTO graph_chunk_extractions (chunk_id, document_id, status, error) VALUES (:ch, :d, :s, :e)"
                " ON CONFLICT (chunk_id) DO UPDATE SET status = excluded.status, error = excluded.error"
            ),
            {"ch": outcome.chunk_id, "d": d, "s": status, "e": outcome.error},
        )
        if outcome.graph is None:
            continue
        for entity in outcome.graph.entities:
            if entity.key in ids:
                entity_mentions.setdefault(
                    (ids[entity.key], outcome.chunk_id),
                    {"t": entity.type, "desc": entity.description},
                )
        for relation in outcome.graph.relations:
            a, b = normalise_name(relation.source), normalise_name(relation.target)
            if a not in ids or b not in ids or ids[a] == ids[b]:
                continue
            for key in (a, b):  # a relation's ends are mentioned by its chunk too
                entity_mentions.setdefault((ids[key], outcome.chunk_id), {"t": "unknown", "desc": ""})
            pair = (min(ids[a], ids[b]), max(ids[a], ids[b]))
            pair_keys[pair] = (a, b) if ids[a] < ids[b] else (b, a)
            mention = relation_mentions.setdefault(
                (pair, outcome.chunk_id), {"desc": relation.description, "kw": ", ".join(relation.keywords), "w": 0.0}
            )
            mention["w"] += relation.weight
    for (entity_id, chunk_id), m in sorted(entity_mentions.items()):
        session.execute(
            text(
                "INSERT INTO graph_entity_mentions (entity_id, chunk_id, document_id, entity_type, description)"
                " VALUES (:e, :ch, :d, :t, :desc)"
            ),
            {"e": entity_id, "ch": chunk_id, "d": d, "t": m["t"], "desc": m["desc"]},
        )
    relation_ids: dict[tuple[int, int], int] = {}
    for pair in sorted(pair_keys):
        row = session.execute(
            text(
                "INSERT INTO graph_relations (collection_id, source_id, target_id, embedding)"
                " VALUES (:c, :s, :t, CAST(:v AS vector))"
                " ON CONFLICT (collection_id, source_id, target_id) DO UPDATE SET source_id = excluded.source_id"
                " RETURNING id"
            ),
            {"c": c, "s": pair[0], "t": pair[1], "v": write.relation_vectors.get(pair_keys[pair])},
        ).one()
        relation_ids[pair] = row[0]
    for (pair, chunk_id), m in sorted(relation_mentions.items()):
        session.execute(
            text(
                "INSERT INTO graph_relation_mentions"
                " (relation_id, chunk_id, document_id, description, keywords, weight)"
                " VALUES (:r, :ch, :d, :desc, :kw, :w)"
            ),
            {"r": relation_ids[pair], "ch": chunk_id, "d": d, "desc": m["desc"], "kw": m["kw"], "w": m["w"]},
        )
    touched_entities = sorted({e for e, _ in entity_mentions})
    _recompute(session, touched_entities, sorted(relation_ids.values()))
    # Entities created for a relation whose mention was then skipped have no mention: not kept.
    _prune(session, sorted(ids.values()), [])
    return len(touched_entities), len(relation_ids)
