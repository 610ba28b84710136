"""The model's input: numbered sources within a token budget, the recent history, the question.

Tokens are counted with the embedding model's tokenizer (the one chunking uses), not the chat model's,
which this process does not have: an estimate, close for English text, so the budgets
(CHAT_CONTEXT_TOKENS, CHAT_HISTORY_TOKENS) should leave a margin below the model's context window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aperag.search import SearchResult

TokenCounter = Callable[[str], int]

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources below. After each statement, cite the source"
    " it comes from with its number in square brackets, like [1] or [2][3]. Cite only the numbers listed."
    " If the sources do not contain the answer, say that you do not know; never make up an answer."
)


@dataclass(frozen=True)
class Source:
    """A chunk placed in the model's context as source number `n` (1-based)."""

    n: int
    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    tokens: int


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


def select_sources(results: Sequence[SearchResult], budget: int, count: TokenCounter) -> list[Source]:
    """The best-ranked chunks that fit in `budget` tokens together, numbered in rank order.

    A chunk that does not fit is skipped, not cut: a later, shorter one may still fit, and a cut chunk
    could be cited for text the model never saw. Duplicate texts (the same passage in two documents)
    are placed once."""
    sources: list[Source] = []
    seen: set[str] = set()
    used = 0
    for r in results:
        if r.text in seen:
            continue
        tokens = count(_render_source(len(sources) + 1, r.filename, r.text))
        if used + tokens > budget:
            continue
        seen.add(r.text)
        used += tokens
        sources.append(Source(len(sources) + 1, r.chunk_id, r.document_id, r.filename, r.text, r.score, tokens))
    return sources


def recent_history(turns: Sequence[Turn], budget: int, count: TokenCounter) -> list[Turn]:
    """The latest turns that fit in `budget` tokens, oldest first; whole user/assistant pairs only, so
    the model never sees an answer without its question."""
    kept: list[Turn] = []
    used = 0
    pairs = [turns[i : i + 2] for i in range(len(turns) - len(turns) % 2 - 2, -1, -2)]
    for pair in pairs:
        tokens = sum(count(t.content) for t in pair)
        if used + tokens > budget:
            break
        used += tokens
        kept[:0] = pair
    return kept


def _render_source(n: int, filename: str, text: str) -> str:
    return f"[{n}] (from {filename})\n{text}"


def build_messages(sources: Sequence[Source], history: Sequence[Turn], question: str) -> list[dict[str, str]]:
    """OpenAI chat messages: the instructions with the sources, the history, then the question."""
    rendered = "\n\n".join(_render_source(s.n, s.filename, s.text) for s in sources)
    system = f"{SYSTEM_PROMPT}\n\nSources:\n\n{rendered}" if sources else (
        f"{SYSTEM_PROMPT}\n\nSources: none were found for this question."
    )
    return [
        {"role": "system", "content": system},
        *({"role": t.role, "content": t.content} for t in history),
        {"role": "user", "content": question},
    ]
