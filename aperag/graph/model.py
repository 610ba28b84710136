"""What an extractor returns for one chunk, and how names are made comparable (pure, no I/O)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

MAX_NAME = 200
MAX_TYPE = 64
MAX_DESCRIPTION = 2000
_SPACE = re.compile(r"\s+")
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"


def normalise_name(name: str) -> str:
    """The key entities are merged by: NFKC, case-folded, quotes and surrounding punctuation dropped,
    whitespace collapsed, a leading article dropped ("The PostgreSQL" and "postgresql" are one entity)."""
    key = unicodedata.normalize("NFKC", name).casefold()
    key = key.translate({ord(q): None for q in _QUOTES})
    key = _SPACE.sub(" ", key).strip(" .,;:!?()[]{}")
    for article in ("the ", "a ", "an "):
        if key.startswith(article) and len(key) > len(article):
            key = key[len(article) :]
            break
    return key


def clean_text(value: str, limit: int) -> str:
    return _SPACE.sub(" ", value).strip()[:limit]


@dataclass(frozen=True)
class Entity:
    name: str
    type: str
    description: str = ""

    @property
    def key(self) -> str:
        return normalise_name(self.name)


@dataclass(frozen=True)
class Relation:
    source: str
    target: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    weight: float = 1.0


@dataclass(frozen=True)
class ChunkGraph:
    """One chunk's entities and relations. Relations name their ends; an end that is not among the
    entities is added as an entity of type `unknown` when the chunk is stored."""

    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, object]:
        return {
            "entities": [{"name": e.name, "type": e.type, "description": e.description} for e in self.entities],
            "relations": [
                {"source": r.source, "target": r.target, "description": r.description,
                 "keywords": list(r.keywords), "weight": r.weight}
                for r in self.relations
            ],
        }  # fmt: skip


@dataclass(frozen=True)
class ChunkText:
    chunk_id: str
    text: str


@dataclass(frozen=True)
class ChunkOutcome:
    """An extractor's answer for one chunk: its graph, or why there is none (the chunk is then marked
    failed and the document's other chunks go on)."""

    chunk_id: str
    graph: ChunkGraph | None
    error: str | None = None
