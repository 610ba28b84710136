"""Ranking internals against a real PostgreSQL: the analyser, BM25 and its term statistics, MaxScore
pruning, fusion, CJK text, the multilingual model and the
query-embedding batcher."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import text

from aperag import services
from aperag.config import ConfigError, load_settings
from aperag.context import AppContext
from aperag.embedding import embed_query, get_embedder
from aperag.embedding.batching import QueryBatcher
from aperag.ingest.pipeline import index_document
from aperag.search import absolute_fuse, min_max_fuse, rrf_fuse, search
from aperag.stores import FulltextHits, Hit, IndexedChunk
from aperag.stores import pg_fulltext_store as bm25
from aperag.stores.lexical import analyze, query_terms
from aperag.stores.pg_fulltext_store import PgFulltextStore
from tests.app.conftest import settings_from

KOREAN = "김치찌개는 한국의 대표적인 찌개 요리이다. 잘 익은 김치와 돼지고기, 두부를 넣고 끓인다."
CHINESE = "中文分词是自然语言处理的基础任务，它把连续的汉字序列切分成有意义的词语。"  # noqa: RUF001
ENGLISH = "The volcano erupted and lava flowed down the mountain into the valley."


@pytest.fixture
def store(app_env_factory: Callable[..., dict[str, str]]) -> PgFulltextStore:
    return PgFulltextStore(settings_from(app_env_factory()).database_url)


def _chunks(collection: str, document: str, texts: list[str]) -> list[IndexedChunk]:
    return [IndexedChunk(str(uuid.uuid4()), document, collection, t) for t in texts]


def _sql(store: PgFulltextStore, sql: str, **params: object) -> list[tuple[object, ...]]:
    with store._connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


# -- analyser ------------------------------------------------------------------------------------


def test_identifiers_are_kept_whole_and_in_parts() -> None:
    terms = analyze("Set O_CLOEXEC on os.path.join; oom_score_adj; connections")
    assert {"o_cloexec", "cloexec", "os.path.join", "path", "oom_score_adj", "score", "connect"} <= set(terms)
    assert "on" not in terms  # stop word


@pytest.mark.parametrize(
    ("document", "query"),
    [
        (KOREAN, "김치찌개"),
        (KOREAN, "돼지고기"),
        (CHINESE, "中文分词"),
        (CHINESE, "汉字"),
        ("Python을 배우자", "python"),
    ],
)
def test_cjk_words_inside_longer_runs_are_found(document: str, query: str) -> None:
    assert set(query_terms(query)) <= set(analyze(document))


def test_unrelated_cjk_query_shares_no_term() -> None:
    assert not set(query_terms("비행기")) & set(analyze(KOREAN))


# -- BM25 and its statistics -----------------------------------------------------------------------


def test_rare_terms_outweigh_common_ones(store: PgFulltextStore) -> None:
    store.ensure_schema()
    common = [f"the socket buffer number {i} is a socket" for i in range(20)]
    chunks = _chunks("c", "d1", [*common, "a socket with EPOLLET set", "EPOLLET alone"])
    store.upsert(chunks)
    result = store.search("c", "socket EPOLLET", 5)
    # Both EPOLLET chunks first (IDF), before the 20 chunks that have "socket" twice.
    assert {h.chunk_id for h in result.hits[:2]} == {chunks[-2].chunk_id, chunks[-1].chunk_id}
    assert len(result.hits) == 5
    assert result.max_score is not None and 0 < result.hits[0].score <= result.max_score


def test_shorter_chunk_wins_at_equal_term_frequency(store: PgFulltextStore) -> None:
    store.ensure_schema()
    short, long = _chunks("c", "d1", ["fanotify marks", "fanotify " + " ".join(f"word{i}" for i in range(60))])
    store.upsert([short, long])
    assert [h.chunk_id for h in store.search("c", "fanotify", 5).hits] == [short.chunk_id, long.chunk_id]


def test_statistics_follow_upserts_and_deletes(store: PgFulltextStore) -> None:
    store.ensure_schema()
    a = _chunks("c", "doc-a", ["alpha beta", "alpha gamma"])
    b = _chunks("c", "doc-b", ["alpha delta"])
    other = _chunks("c2", "doc-c", ["alpha"])
    store.upsert(a)
    store.upsert(b)
    store.upsert(other)
    store.upsert(a)  # the same chunk ids again: replaced, not counted twice

    def df(collection: str, term: str) -> object:
        rows = _sql(store, "SELECT df FROM fts_terms WHERE collection_id = :c AND term = :t", c=collection, t=term)
        return rows[0][0] if rows else None

    assert _sql(store, "SELECT chunks FROM fts_collections WHERE collection_id = 'c'") == [(3,)]
    assert (df("c", "alpha"), df("c", "beta"), df("c2", "alpha")) == (3, 1, 1)
    store.delete_document("doc-a")
    assert (df("c", "alpha"), df("c", "beta"), df("c", "delta")) == (1, None, 1)
    assert _sql(store, "SELECT chunks, total_length FROM fts_collections WHERE collection_id = 'c'") == [(1, 2)]
    assert [h.chunk_id for h in store.search("c", "alpha", 5).hits] == [b[0].chunk_id]
    store.delete_collection("c")
    assert store.search("c", "alpha", 5).hits == []
    assert _sql(store, "SELECT count(*) FROM fts_postings") == [(1,)]  # c2's posting remains
    assert [h.chunk_id for h in store.search("c2", "alpha", 5).hits] == [other[0].chunk_id]


def test_pruning_returns_the_exhaustive_ranking(store: PgFulltextStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """MaxScore must not change the top k: compare with a budget that scans every posting list."""
    store.ensure_schema()
    rng = np.random.default_rng(3)
    vocabulary = [f"w{i}" for i in range(300)]
    weights = 1.0 / np.arange(1, 301)
    weights /= weights.sum()
    texts = [" ".join(rng.choice(vocabulary, size=40, p=weights)) for _ in range(600)]
    store.upsert(_chunks("c", "d", texts))
    queries = ["w0 w1 w250", "w3 w120", "w0 w1 w2 w3", "w299 w0", "w5 w17 w42 w77"]
    monkeypatch.setattr(bm25, "EXHAUSTIVE_POSTINGS", 10**9)
    exhaustive = {q: store.search("c", q, 10).hits for q in queries}

    def same(q: str, hits: list[Hit]) -> bool:
        return [(h.chunk_id, round(h.score, 9)) for h in hits] == [
            (h.chunk_id, round(h.score, 9)) for h in exhaustive[q]
        ]

    # MaxScore alone (no exhaustive path, no truncation): must be exact for every query.
    monkeypatch.setattr(bm25, "EXHAUSTIVE_POSTINGS", 0)
    monkeypatch.setattr(bm25, "POSTINGS_BUDGET", 60)
    monkeypatch.setattr(bm25, "POSTINGS_PER_TERM", 10**9)
    for q in queries:
        assert same(q, store.search("c", q, 10).hits), q
    # Truncated posting lists: a query with a rare term still comes out exact via MaxScore; with
    # only common terms the ranking is approximate but still made of chunks holding the terms.
    monkeypatch.setattr(bm25, "POSTINGS_PER_TERM", 50)
    assert same("w0 w1 w250", store.search("c", "w0 w1 w250", 10).hits)
    approximate = store.search("c", "w0 w1 w2 w3", 10).hits
    assert (
        len(approximate) == 10
        and len({h.chunk_id for h in approximate} & {h.chunk_id for h in exhaustive["w0 w1 w2 w3"]}) >= 5
    )


# -- fusion ----------------------------------------------------------------------------------------


def test_rrf_rewards_agreement() -> None:
    fused = rrf_fuse([Hit("a", 0.9), Hit("b", 0.8)], FulltextHits([Hit("b", 5.0), Hit("c", 4.0)], 10.0))
    assert [h.chunk_id for h in fused] == ["b", "a", "c"]


def test_absolute_fusion_keeps_a_weak_text_match_weak() -> None:
    vector = [Hit("v", 0.62), Hit("both", 0.55)]
    # The best full-text score is a tenth of what the query could reach: only a common word matched.
    weak = FulltextHits([Hit("t", 1.0), Hit("both", 0.9)], max_score=10.0)
    assert [h.chunk_id for h in absolute_fuse(vector, weak)] == ["v", "both", "t"]
    # Min-max stretches the same weak match to 1.0: the text-only chunk jumps above "both".
    assert [h.chunk_id for h in min_max_fuse(vector, weak)] == ["v", "t", "both"]
    strong = FulltextHits([Hit("t", 9.5), Hit("both", 9.0)], max_score=10.0)
    assert absolute_fuse(vector, strong)[0].chunk_id == "both"


def test_fusion_without_a_bound_scales_by_the_best_score() -> None:
    es_like = FulltextHits([Hit("t", 12.0), Hit("u", 3.0)], max_score=None)
    fused = {h.chunk_id: h.score for h in absolute_fuse([], es_like, vector_weight=0.5)}
    assert fused == {"t": pytest.approx(0.5), "u": pytest.approx(0.125)}


# -- CJK end to end, the multilingual model ----------------------------------------------------------


def _ingest(ctx: AppContext, collection: str, docs: dict[str, str]) -> dict[str, str]:
    services.create_collection(ctx, collection)
    ids = {}
    for name, body in docs.items():
        doc = services.upload_document(ctx, collection, name, None, body.encode()).document
        assert index_document(ctx, doc.id, final_attempt=True) == "ready"
        ids[doc.id] = name
    return ids


def test_korean_and_chinese_full_text_search(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    ctx = AppContext(settings=settings_from(app_env_factory()))
    names = _ingest(ctx, "cjk", {"ko.txt": KOREAN, "zh.txt": CHINESE, "en.txt": ENGLISH})
    collection = services.get_collection(ctx, "cjk").id
    for query, expected in (("김치찌개", "ko.txt"), ("두부", "ko.txt"), ("中文分词", "zh.txt"), ("词语", "zh.txt")):
        found = [names[r.document_id] for r in search(ctx, collection, query, "fulltext", 5).results]
        assert found == [expected], query


def test_local_model_is_chosen_by_setting() -> None:
    assert load_settings({"EMBEDDING_MODEL": "multilingual-e5-small"}).embedding_model == "multilingual-e5-small"
    with pytest.raises(ConfigError, match="EMBEDDING_MODEL"):
        load_settings({"EMBEDDING_MODEL": "no-such-model"})
    # Any model name goes to an OpenAI-compatible endpoint.
    assert load_settings({"EMBEDDING_BACKEND": "openai", "EMBEDDING_MODEL": "x"}).embedding_model == "x"
    with pytest.raises(ConfigError, match="QUERY_EMBEDDING_BATCH"):
        load_settings({"QUERY_EMBEDDING_BATCH": "-1"})


@pytest.mark.slow
def test_multilingual_model_finds_korean_and_chinese(app_env_factory: Callable[..., dict[str, str]]) -> None:
    docs = {
        "ko-food.txt": KOREAN,
        "ko-weather.txt": "오늘 서울은 비가 많이 내리고 바람이 강하게 분다. 우산을 꼭 챙기세요.",
        "zh-nlp.txt": CHINESE,
        "zh-travel.txt": "长城是中国古代的军事防御工程，每年吸引大量游客前来参观。",  # noqa: RUF001
        "en.txt": ENGLISH,
    }
    ctx = AppContext(settings=settings_from(app_env_factory(EMBEDDING_MODEL="multilingual-e5-small")))
    names = _ingest(ctx, "multi", docs)
    collection = services.get_collection(ctx, "multi").id
    for query, expected in (
        ("돼지고기를 넣은 매운 국물 요리", "ko-food.txt"),  # no word in common with the document
        ("비 오는 날씨", "ko-weather.txt"),
        ("如何把句子切分成词", "zh-nlp.txt"),
        ("中国著名的旅游景点", "zh-travel.txt"),
    ):
        top = search(ctx, collection, query, "vector", 1).results
        assert [names[r.document_id] for r in top] == [expected], query


# -- query batching ----------------------------------------------------------------------------------


def test_concurrent_queries_get_their_own_vectors(embedder_warm: None) -> None:
    embedder = get_embedder(load_settings({}))
    queries = [f"question number {i} about sockets" for i in range(24)]
    expected = embedder.embed_queries(queries)
    got: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        got[i] = embed_query(embedder, queries[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(got) == list(range(len(queries)))
    for i, vector in got.items():
        np.testing.assert_allclose(vector, expected[i], atol=1e-5)


def test_a_failing_batch_fails_its_requests_and_the_batcher_survives() -> None:
    class Flaky:
        dimension = 2
        calls = 0

        def embed(self, texts: list[str]) -> np.ndarray:
            return self.embed_queries(texts)

        def embed_queries(self, queries: list[str]) -> np.ndarray:
            self.calls += 1
            if "boom" in queries:
                raise RuntimeError("model failed")
            return np.ones((len(queries), 2), dtype=np.float32)

    batcher = QueryBatcher(Flaky())
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.embed_query("boom")
    assert batcher.embed_query("fine").tolist() == [1.0, 1.0]
