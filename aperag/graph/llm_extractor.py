"""Extraction by the chat model: a few chunks per call, answers validated, failures kept per chunk.

- Batching: up to GRAPH_EXTRACTION_BATCH chunks per call, each under its own `### chunk N` heading; the
  model answers one JSON object keyed by those numbers.
- Malformed output never stops a document: a batch whose answer cannot be read is asked again chunk by
  chunk; a chunk whose own answer cannot be read is returned with its error (marked failed by the caller).
- The client does the timeout and the retries of transient failures (aperag.llm); LLMUnavailable and
  LLMRequestRejected propagate, so the task retries later or records the failure.
- A cache keyed by the chunk text's hash, PROMPT_VERSION and the model (table graph_extraction_cache):
  a re-index, a retry or the same text in another document costs no call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aperag.graph.model import (
    MAX_DESCRIPTION,
    MAX_NAME,
    MAX_TYPE,
    ChunkGraph,
    ChunkOutcome,
    ChunkText,
    Entity,
    Relation,
    clean_text,
)
from aperag.llm import ChatMessage, LLMBadResponse, LLMClient

log = logging.getLogger(__name__)

# Bump when the prompt or the expected answer changes: cached answers of another version are not reused.
PROMPT_VERSION = "graph-extract-1"
PURPOSE = "graph_extraction"

SYSTEM_PROMPT = """You extract a knowledge graph from text.
For each chunk, list the entities it names (name, type, description: what the chunk says about it)
and the relations between those entities (source, target: entity names; description; keywords: a few
words; weight: 1-10, how strong the relation is in the text).
Types: person, organization, location, product, technology, concept, event, identifier, other.
Answer with one JSON object only, no prose:
{"chunks": {"<chunk number>": {"entities": [{"name": "...", "type": "...", "description": "..."}],
 "relations": [{"source": "...", "target": "...", "description": "...", "keywords": ["..."], "weight": 5}]}}}"""


class MalformedExtraction(ValueError):
    """The model's answer for a chunk is not the graph the prompt asked for."""


def cache_key(text: str, model: str) -> str:
    return hashlib.sha256(f"{PROMPT_VERSION}\0{model}\0{text}".encode()).hexdigest()


def user_prompt(chunks: Sequence[ChunkText]) -> str:
    return "\n\n".join(f"### chunk {n}\n{c.text}" for n, c in enumerate(chunks, start=1))


def _str(item: dict[str, Any], key: str, limit: int, required: bool) -> str:
    value = item.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise MalformedExtraction(f"{key} is not text: {value!r:.80}")
    value = clean_text(value, limit)
    if required and not value:
        raise MalformedExtraction(f"{key} is empty")
    return value


def parse_chunk_graph(raw: Any) -> ChunkGraph:
    """Validate one chunk's answer. Bad items are errors, not skipped: a half-understood answer is a
    sign the model did not follow the format, and the chunk is better marked than silently thinned."""
    if not isinstance(raw, dict):
        raise MalformedExtraction("a chunk's answer is not an object")
    entities_raw, relations_raw = raw.get("entities", []), raw.get("relations", [])
    if not isinstance(entities_raw, list) or not isinstance(relations_raw, list):
        raise MalformedExtraction("entities and relations must be lists")
    entities = []
    for item in entities_raw:
        if not isinstance(item, dict):
            raise MalformedExtraction("an entity is not an object")
        entities.append(
            Entity(
                name=_str(item, "name", MAX_NAME, True),
                type=_str(item, "type", MAX_TYPE, False).lower() or "other",
                description=_str(item, "description", MAX_DESCRIPTION, False),
            )
        )
    relations = []
    for item in relations_raw:
        if not isinstance(item, dict):
            raise MalformedExtraction("a relation is not an object")
        keywords = item.get("keywords", [])
        if isinstance(keywords, str):
            keywords = [k for k in keywords.split(",")]
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise MalformedExtraction("keywords must be a list of text")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1000:
            raise MalformedExtraction(f"weight is not a number in 0..1000: {weight!r:.40}")
        source, target = _str(item, "source", MAX_NAME, True), _str(item, "target", MAX_NAME, True)
        if source.casefold() == target.casefold():
            continue  # a relation of an entity with itself says nothing a graph can use
        relations.append(
            Relation(
                source=source, target=target, description=_str(item, "description", MAX_DESCRIPTION, False),
                keywords=tuple(clean_text(k, 60) for k in keywords if k.strip())[:10], weight=float(weight),
            )
        )  # fmt: skip
    return ChunkGraph(tuple(entities), tuple(relations))


def parse_batch(content: str, count: int) -> dict[int, ChunkGraph | MalformedExtraction]:
    """The answer for a batch of `count` chunks: each chunk's graph or why it could not be read.
    Raises MalformedExtraction when the answer as a whole is unreadable."""
    text = content.strip()
    if text.startswith("```"):  # models often fence JSON despite being told not to
        text = text.strip("`")
        text = text[text.find("{") :] if "{" in text else text
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MalformedExtraction(f"answer is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), dict | list):
        raise MalformedExtraction("answer has no chunks object")
    chunks = data["chunks"]
    if isinstance(chunks, list):
        chunks = {str(i): v for i, v in enumerate(chunks, start=1)}
    result: dict[int, ChunkGraph | MalformedExtraction] = {}
    for n in range(1, count + 1):
        raw = chunks.get(str(n))
        if raw is None:
            result[n] = MalformedExtraction(f"answer has nothing for chunk {n}")
            continue
        try:
            result[n] = parse_chunk_graph(raw)
        except MalformedExtraction as exc:
            result[n] = exc
    return result


class LLMExtractor:
    name = "llm"
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        client: LLMClient,
        batch_size: int = 4,
        cache_get: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
        cache_put: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> None:
        self.client = client
        self.batch_size = max(1, batch_size)
        self.cache_get = cache_get
        self.cache_put = cache_put

    @property
    def model(self) -> str:
        return self.client.config.model

    def extract(self, chunks: list[ChunkText]) -> list[ChunkOutcome]:
        keys = {c.chunk_id: cache_key(c.text, self.model) for c in chunks}
        cached = self.cache_get(list(set(keys.values()))) if self.cache_get else {}
        outcomes: dict[str, ChunkOutcome] = {}
        todo: list[ChunkText] = []
        for chunk in chunks:
            hit = cached.get(keys[chunk.chunk_id])
            if hit is not None:
                outcomes[chunk.chunk_id] = ChunkOutcome(chunk.chunk_id, parse_chunk_graph(hit))
            else:
                todo.append(chunk)
        for start in range(0, len(todo), self.batch_size):
            for outcome in self._extract_batch(todo[start : start + self.batch_size]):
                outcomes[outcome.chunk_id] = outcome
                if outcome.graph is not None and self.cache_put is not None:
                    self.cache_put({keys[outcome.chunk_id]: outcome.graph.to_json()})
        return [outcomes[c.chunk_id] for c in chunks]

    def _ask(self, batch: Sequence[ChunkText]) -> dict[int, ChunkGraph | MalformedExtraction]:
        messages = [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", user_prompt(batch))]
        try:
            answer = self.client.complete(messages, purpose=PURPOSE, temperature=0.0, json_mode=True)
        except LLMBadResponse as exc:
            raise MalformedExtraction(str(exc)) from exc
        return parse_batch(answer.content, len(batch))

    def _extract_batch(self, batch: list[ChunkText]) -> list[ChunkOutcome]:
        try:
            answers = self._ask(batch)
        except MalformedExtraction as exc:
            if len(batch) == 1:
                return [ChunkOutcome(batch[0].chunk_id, None, f"malformed model output: {exc}")]
            log.info("batch of %d chunks got an unreadable answer (%s); asking chunk by chunk", len(batch), exc)
            return [outcome for chunk in batch for outcome in self._extract_batch([chunk])]
        outcomes: list[ChunkOutcome] = []
        for n, chunk in enumerate(batch, start=1):
            answer = answers[n]
            if isinstance(answer, ChunkGraph):
                outcomes.append(ChunkOutcome(chunk.chunk_id, answer))
            elif len(batch) > 1:
                outcomes.extend(self._extract_batch([chunk]))
            else:
                outcomes.append(ChunkOutcome(chunk.chunk_id, None, f"malformed model output: {answer}"))
        return outcomes
