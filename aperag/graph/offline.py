"""The offline extractor: a deterministic graph without a chat model.

Entities are the terms technical text names things by, found by their shape: identifiers
(`oom_score_adj`, `hnsw.ef_search`, `SO_REUSEADDR`, `-XX:MaxRAMPercentage`), acronyms (`HNSW`, `PKCE`),
CamelCase and mixed words (`PostgreSQL`, `WaitForFirstConsumer`, `HS256`) and runs of capitalised words
inside a sentence (`Trace Context`, `Write-Ahead Log`). A capitalised word that only ever starts a
sentence is not taken (it is capitalised for the sentence's sake). The description is the first
sentence naming it. Relations join entities named in the same sentence (co-occurrence), weighted by
how many sentences name both, described by the first such sentence, with that sentence's other content
words as keywords.

Why not spaCy's small English pipeline (PyPI `en-core-web-sm-*`): its named-entity labels (PERSON, ORG,
GPE, PRODUCT...) are trained on news text and miss most of what technical documents are about
(identifiers, options, acronyms); it would add spaCy, thinc and a model (~50 MB) to the image for fewer
of the entities that matter here. Measured precision and recall: docs/benchmarks.md, "Graph".
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import combinations

from aperag.graph.model import ChunkGraph, ChunkOutcome, ChunkText, Entity, Relation, clean_text, normalise_name
from aperag.stores.lexical import STOP_WORDS

# Sentence ends: . ! ? followed by space and an upper-case letter or a digit, or a blank line / heading.
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(])|\n\s*\n|\n(?=#)")
# A candidate token: letters/digits with inner . _ - : / = + (identifiers, options, versions).
_TOKEN = re.compile(r"-{0,2}[A-Za-z0-9][A-Za-z0-9._:/=+\-]*[A-Za-z0-9]|[A-Za-z]")
_WORD = re.compile(r"[A-Za-z][a-z]+")
MAX_ENTITIES_PER_SENTENCE = 6
MAX_KEYWORDS = 5
# Capitalised words that name nothing on their own even mid-sentence (titles, headings, units).
_COMMON_CAPS = frozenset(
    [
        "i",
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "in",
        "on",
        "at",
        "of",
        "for",
        "to",
        "and",
        "or",
        "but",
        "if",
        "when",
        "while",
        "with",
        "without",
        "by",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "not",
        "no",
        "yes",
        "all",
        "any",
        "each",
        "every",
        "some",
        "most",
        "more",
        "many",
        "one",
        "two",
        "three",
        "four",
        "five",
        "first",
        "second",
        "new",
        "old",
        "use",
        "using",
        "used",
        "see",
        "note",
        "however",
        "also",
        "then",
        "there",
        "here",
        "they",
        "we",
        "you",
        "he",
        "she",
    ]
)


def _sentences(text: str) -> list[str]:
    return [s.strip(" \t\n#*-") for s in _SENTENCE.split(text) if s.strip(" \t\n#*-")]


def _shape(token: str) -> str | None:
    """The entity type a token's shape says, or None when it is an ordinary word."""
    core = token.strip("-")
    if len(core) < 2 or not any(c.isalpha() for c in core):
        return None  # a number or a version alone names nothing
    has_upper = any(c.isupper() for c in core)
    has_lower = any(c.islower() for c in core)
    has_digit = any(c.isdigit() for c in core)
    if any(c in core for c in "._:/=+") or ("_" in core) or token.startswith("-"):
        return "identifier"
    if has_upper and not has_lower and core.replace("-", "").isalnum() and sum(c.isalpha() for c in core) >= 2:
        return "acronym"
    if has_upper and has_lower and any(c.isupper() for c in core[1:]):
        return "name"  # CamelCase, PostgreSQL, pgvector-style mixed case
    if has_digit and has_lower and any(c.isalpha() for c in core):
        return "name"  # HS256 lower-cased forms, ipv6, http2
    if "-" in core and has_upper:
        return "name"
    return None


def _is_capitalised(word: str) -> bool:
    return word[:1].isupper() and word[1:].islower() and word.casefold() not in _COMMON_CAPS


def _candidates(sentence: str) -> list[tuple[str, str, bool]]:
    """(name, type, at sentence start) for each candidate of a sentence, in order."""
    tokens = _TOKEN.findall(sentence)
    found: list[tuple[str, str, bool]] = []
    run: list[str] = []
    run_start = False

    def flush() -> None:
        nonlocal run
        if run:
            found.append((" ".join(run), "name", run_start))
        run = []

    for index, token in enumerate(tokens):
        kind = _shape(token)
        if kind is not None:
            flush()
            found.append((token.strip("-") if kind != "identifier" else token.rstrip("."), kind, index == 0))
            continue
        if _is_capitalised(token):
            if not run:
                run_start = index == 0
            run.append(token)
            continue
        flush()
    flush()
    return found


def _keywords(sentence: str, names: set[str]) -> tuple[str, ...]:
    words = [w.casefold() for w in _WORD.findall(sentence)]
    picked = [w for w in words if w not in STOP_WORDS and len(w) > 3 and w not in names]
    return tuple(dict.fromkeys(picked))[:MAX_KEYWORDS]


def extract_text(text: str) -> ChunkGraph:
    sentences = _sentences(text)
    per_sentence: list[list[tuple[str, str, bool]]] = [_candidates(s) for s in sentences]
    # A capitalised word that also appears capitalised mid-sentence is a name; one that only starts
    # sentences is just capitalised there.
    mid_names = {normalise_name(n) for cands in per_sentence for n, kind, start in cands if kind != "name" or not start}
    # ... unless it starts several sentences (a subject the text keeps returning to: "Redis keeps...").
    starts = Counter(
        normalise_name(n) for cands in per_sentence for n, kind, start in cands if kind == "name" and start
    )
    mid_names |= {key for key, count in starts.items() if count >= 2}
    entities: dict[str, Entity] = {}
    relations: dict[tuple[str, str], tuple[int, str, tuple[str, ...], str, str]] = {}
    for sentence, cands in zip(sentences, per_sentence, strict=True):
        keys: list[str] = []
        for name, kind, start in cands:
            key = normalise_name(name)
            if not key or key in STOP_WORDS or (kind == "name" and start and key not in mid_names):
                continue
            if " " not in key and kind == "name" and key in _COMMON_CAPS:
                continue
            if key not in entities:
                entities[key] = Entity(name=name, type=kind, description=clean_text(sentence, 300))
            if key not in keys:
                keys.append(key)
        keys = keys[:MAX_ENTITIES_PER_SENTENCE]
        for a, b in combinations(sorted(keys), 2):
            count, description, keywords, na, nb = relations.get(
                (a, b),
                (0, clean_text(sentence, 300), _keywords(sentence, set(keys)), entities[a].name, entities[b].name),
            )
            relations[(a, b)] = (count + 1, description, keywords, na, nb)
    return ChunkGraph(
        entities=tuple(entities.values()),
        relations=tuple(
            Relation(source=na, target=nb, description=d, keywords=kw, weight=float(count))
            for (count, d, kw, na, nb) in relations.values()
        ),
    )


class OfflineExtractor:
    """Deterministic, no model: the same text always gives the same graph."""

    name = "offline"
    prompt_version = "offline-1"

    def extract(self, chunks: list[ChunkText]) -> list[ChunkOutcome]:
        return [ChunkOutcome(c.chunk_id, extract_text(c.text)) for c in chunks]


def entity_counts(graph: ChunkGraph) -> Counter[str]:
    return Counter(e.type for e in graph.entities)
