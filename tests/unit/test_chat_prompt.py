"""The chat's pure parts: sources within a budget, history by whole turns, citation markers."""

from __future__ import annotations

from aperag.chat.citations import resolve
from aperag.chat.prompt import Source, Turn, build_messages, recent_history, select_sources
from aperag.search import SearchResult


def words(text: str) -> int:
    return len(text.split())


def result(i: int, text: str) -> SearchResult:
    return SearchResult(f"c{i}", f"d{i}", f"f{i}.md", text, 1.0 / i, i, None)


def test_sources_fill_the_budget_in_rank_order_skipping_what_does_not_fit() -> None:
    results = [result(1, "a " * 10), result(2, "b " * 50), result(3, "c " * 10), result(4, "a " * 10)]
    # Each rendered source costs its words + 3 ("[n]", "(from", "fN.md)").
    sources = select_sources(results, 30, words)
    assert [(s.n, s.chunk_id) for s in sources] == [(1, "c1"), (2, "c3")]  # c2 too long; c4 repeats c1's text
    assert sum(s.tokens for s in sources) <= 30
    assert select_sources(results, 5, words) == []


def test_history_keeps_the_latest_whole_turns() -> None:
    turns = [Turn("user", "one two"), Turn("assistant", "three"), Turn("user", "four"), Turn("assistant", "five six")]
    assert recent_history(turns, 100, words) == turns
    assert recent_history(turns, 3, words) == turns[2:]
    assert recent_history(turns, 2, words) == []


def test_messages_number_the_sources_and_end_with_the_question() -> None:
    source = Source(1, "c1", "d1", "f.md", "Lava is molten rock.", 0.9, 6)
    messages = build_messages([source], [Turn("user", "hi"), Turn("assistant", "hello")], "What is lava?")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "[1] (from f.md)\nLava is molten rock." in messages[0]["content"]
    assert messages[-1]["content"] == "What is lava?"
    assert "none were found" in build_messages([], [], "q")[0]["content"]


def test_citations_resolve_to_the_given_sources_only() -> None:
    sources = [Source(n, f"c{n}", "d", "f", "t", 1.0, 1) for n in (1, 2, 3)]
    cited = resolve("A [2]. B [1][2]. C [3, 7]. D [12]. Not a citation: [x], [ 1 ].", sources)
    assert [s.n for s in cited.cited] == [2, 1, 3]
    assert cited.unknown == [7, 12]
    assert resolve("no markers", sources).cited == []
