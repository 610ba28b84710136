"""Retrieval quality on the labelled corpus (tests/data/retrieval) through the real ingestion and
search code on PostgreSQL (pgvector + full-text): hybrid must be at least as good as the better of
vector and full-text alone (issue 4, "Benchmarks"). bench/app_quality.py prints the same figures."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aperag import services
from aperag.context import AppContext
from bench.retrieval_eval import CHUNK_ENV, evaluate, ingest_corpus, load_corpus, ndcg_at, recall_at
from tests.app.conftest import settings_from


def test_metrics_on_known_rankings() -> None:
    judged = {"a": 2, "b": 1}
    assert ndcg_at(["a", "b", "x"], judged) == pytest.approx(1.0)
    assert ndcg_at(["x", "y"], judged) == 0.0
    assert 0 < ndcg_at(["b", "a"], judged) < 1
    assert recall_at(["x", "b"], judged) == 0.5


def test_corpus_is_consistent() -> None:
    docs, queries, qrels = load_corpus()
    assert len(docs) >= 60 and len(queries) >= 40
    assert {q.type for q in queries} == {"lexical", "paraphrase"}
    assert {q.id for q in queries} == set(qrels)
    for judged in qrels.values():
        assert set(judged) <= set(docs) and max(judged.values()) == 2


@pytest.mark.slow
def test_hybrid_at_least_as_good_as_either_mode(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    ctx = AppContext(settings=settings_from(app_env_factory(**CHUNK_ENV)))
    docs, queries, qrels = load_corpus()
    by_app_id = ingest_corpus(ctx, "quality", docs)
    collection = services.get_collection(ctx, "quality")
    scores = evaluate(ctx, collection.id, by_app_id, queries, qrels)
    summary = {m: (round(s.ndcg, 3), round(s.recall, 3)) for m, s in scores.items()}
    # Both single modes must be doing their job, or the comparison below means nothing.
    assert scores["vector"].ndcg > 0.8 and scores["fulltext"].ndcg > 0.7, summary
    assert scores["hybrid"].ndcg >= max(scores["vector"].ndcg, scores["fulltext"].ndcg), summary
    assert scores["hybrid"].recall >= max(scores["vector"].recall, scores["fulltext"].recall), summary
