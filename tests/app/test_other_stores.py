"""Qdrant through qdrant-client's local mode; Elasticsearch only when ES_URL names a server."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse

import numpy as np
import pytest

from aperag.config import load_settings
from aperag.embedding import get_embedder
from aperag.stores import IndexedChunk
from aperag.stores.qdrant_store import QdrantVectorStore

TEXTS = [
    "The volcano erupted and lava flowed down the mountain.",
    "Sourdough starter needs daily feeding with flour.",
    "The Sicilian Defence is a chess opening.",
]


def _chunks(collection: str, document: str) -> list[IndexedChunk]:
    return [IndexedChunk(str(uuid.uuid4()), document, collection, t) for t in TEXTS]


@pytest.mark.parametrize("path_mode", [False, True])
def test_qdrant_local_mode(embedder_warm: None, tmp_path: object, path_mode: bool) -> None:
    env = {"VECTOR_DB_TYPE": "qdrant", "QDRANT_PATH": str(tmp_path) if path_mode else ":memory:"}
    store = QdrantVectorStore.from_settings(load_settings(env))
    store.ensure_schema()
    store.ensure_schema()  # idempotent
    embedder = get_embedder(load_settings({}))
    a, b = _chunks("ca", "doc-a"), _chunks("cb", "doc-b")
    store.upsert(a, embedder.embed(TEXTS))
    store.upsert(b, embedder.embed(TEXTS))
    store.upsert(a, embedder.embed(TEXTS))  # same ids again: no duplicates
    hits = store.search("ca", embedder.embed(["chess opening"])[0], 10)
    assert len(hits) == 3 and hits[0].chunk_id == a[2].chunk_id
    assert {h.chunk_id for h in hits} == {c.chunk_id for c in a}
    store.delete_document("doc-a")
    assert store.search("ca", embedder.embed(["chess"])[0], 10) == []
    assert len(store.search("cb", embedder.embed(["chess"])[0], 10)) == 3
    store.delete_collection("cb")
    assert store.search("cb", embedder.embed(["chess"])[0], 10) == []
    store.ping()


ES_URL = os.environ.get("ES_URL", "")


@pytest.mark.skipif(not ES_URL, reason="ES_URL is not set: no Elasticsearch server to test against")
def test_elasticsearch_fulltext() -> None:
    from aperag.stores.es_store import ElasticsearchFulltextStore

    url = urlparse(ES_URL)
    env = {
        "FULLTEXT_TYPE": "elasticsearch",
        "ES_PROTOCOL": url.scheme or "http",
        "ES_HOST_NAME": url.hostname or "127.0.0.1",
        "ES_PORT": str(url.port or 9200),
        "ES_INDEX": "aperag-test-" + uuid.uuid4().hex[:8],
    }
    store = ElasticsearchFulltextStore.from_settings(load_settings(env))
    store.ensure_schema()
    try:
        chunks = _chunks("c1", "d1")
        store.upsert(chunks)
        hits = store.search("c1", "chess opening", 5).hits
        assert hits[0].chunk_id == chunks[2].chunk_id
        assert store.search("c2", "chess", 5).hits == []
        store.delete_document("d1")
        assert store.search("c1", "chess", 5).hits == []
    finally:
        store.client.indices.delete(index=env["ES_INDEX"])


def test_vectors_are_unit_length(embedder_warm: None) -> None:
    vectors = get_embedder(load_settings({})).embed(TEXTS)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
