"""Full text in Elasticsearch, ranked by Elasticsearch's own BM25; one index with a collection_id keyword field.

The text field's analyser matches what the PostgreSQL store does (aperag.stores.lexical): the
standard tokenizer, then `cjk_bigram` so Chinese, Japanese and Korean runs (which have no spaces, and
in Korean carry particles: `김치찌개는`) are indexed as character bigrams, then English stop words and
stemming for the rest. An index created before this analyser existed keeps its old mapping
(Elasticsearch cannot change a field's analyser in place): re-create it (new ES_INDEX) and re-index.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError, helpers

from aperag.config import Settings
from aperag.stores import FulltextHits, Hit, IndexedChunk, StoreUnavailable

# Built-in Elasticsearch token filters only (no plugin): cjk_width folds full/half-width forms,
# cjk_bigram turns Han/Hiragana/Katakana/Hangul tokens into bigrams (a lone character stays a unigram).
INDEX_SETTINGS: dict[str, Any] = {
    "analysis": {
        "filter": {
            "aperag_english_stop": {"type": "stop", "stopwords": "_english_"},
            "aperag_english_stemmer": {"type": "stemmer", "language": "english"},
            "aperag_english_possessive": {"type": "stemmer", "language": "possessive_english"},
        },
        "analyzer": {
            "aperag_text": {
                "type": "custom",
                "tokenizer": "standard",
                "filter": [
                    "cjk_width",
                    "lowercase",
                    "cjk_bigram",
                    "aperag_english_possessive",
                    "aperag_english_stop",
                    "aperag_english_stemmer",
                ],
            }
        },
    }
}


class ElasticsearchFulltextStore:
    def __init__(self, client: Elasticsearch, index: str) -> None:
        self.client = client
        self.index = index

    @classmethod
    def from_settings(cls, settings: Settings) -> ElasticsearchFulltextStore:
        auth = (settings.es_user, settings.es_password) if settings.es_user else None
        client = Elasticsearch(settings.es_url, basic_auth=auth, request_timeout=30)
        return cls(client, settings.es_index)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (TransportError, ApiError) as exc:
            raise StoreUnavailable(f"elasticsearch: {exc}") from exc

    def ensure_schema(self) -> None:
        if self._call(self.client.indices.exists, index=self.index):
            return
        self._call(
            self.client.indices.create,
            index=self.index,
            settings=INDEX_SETTINGS,
            mappings={
                "properties": {
                    "collection_id": {"type": "keyword"},
                    "document_id": {"type": "keyword"},
                    "text": {"type": "text", "analyzer": "aperag_text"},
                }
            },
        )

    def upsert(self, chunks: list[IndexedChunk]) -> None:
        actions = [
            {
                "_index": self.index,
                "_id": c.chunk_id,
                "_source": {"collection_id": c.collection_id, "document_id": c.document_id, "text": c.text},
            }
            for c in chunks
        ]
        if actions:
            self._call(helpers.bulk, self.client, actions, refresh="wait_for")

    def _delete_by(self, field: str, value: str) -> None:
        self._call(
            self.client.delete_by_query,
            index=self.index,
            query={"term": {field: value}},
            refresh=True,
            conflicts="proceed",
        )

    def delete_document(self, document_id: str) -> None:
        self._delete_by("document_id", document_id)

    def delete_collection(self, collection_id: str) -> None:
        self._delete_by("collection_id", collection_id)

    def search(self, collection_id: str, query: str, top_k: int) -> FulltextHits:
        resp = self._call(
            self.client.search,
            index=self.index,
            size=top_k,
            query={
                "bool": {
                    "must": {"match": {"text": query}},
                    "filter": {"term": {"collection_id": collection_id}},
                }
            },
        )
        hits = [Hit(chunk_id=h["_id"], score=float(h["_score"])) for h in resp["hits"]["hits"]]
        return FulltextHits(hits, max_score=None)

    def sync(self) -> int:
        return 0  # every release writes and reads the same index

    def ping(self) -> None:
        if not self._call(self.client.ping):
            raise StoreUnavailable("elasticsearch: ping failed")
