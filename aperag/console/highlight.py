"""Query terms marked in a search hit's text: the text is split around the matches and every piece is
HTML-escaped, so a document's own text never becomes markup; only the <mark> tags added here are."""

from __future__ import annotations

import re

from markupsafe import Markup, escape

_TERM = re.compile(r"\w+")
# Endings dropped from a query word before it is matched as a prefix, so "volcanoes" marks "volcano"
# and "fermenting" marks "fermentation": a rough stand-in for the full-text engine's stemming.
_ENDINGS = ("ing", "es", "ed", "s")
_MIN_TERM = 2
# Words too common to be worth marking (the full-text engine ignores them too).
_STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "do", "does", "did", "for", "from", "has",
        "have", "how", "if", "in", "into", "is", "it", "its", "of", "on", "or", "so", "than", "that", "the",
        "their", "them", "then", "there", "these", "they", "this", "to", "was", "were", "what", "when", "where",
        "which", "who", "why", "will", "with", "you",
    }
)  # fmt: skip
MAX_TERMS = 32


def _stem(word: str) -> str:
    for ending in _ENDINGS:
        if len(word) - len(ending) >= 4 and word.endswith(ending):
            return word[: -len(ending)]
    return word


def terms_pattern(query: str) -> re.Pattern[str] | None:
    """Matches any word that starts with a query term (case-insensitive); None when nothing to mark."""
    terms: list[str] = []
    for word in _TERM.findall(query.lower()):
        if word in _STOPWORDS:
            continue
        stem = _stem(word)
        if len(stem) >= _MIN_TERM and stem not in terms:
            terms.append(stem)
    if not terms:
        return None
    # Longest first, so a longer term wins over a term that is its prefix.
    alternatives = "|".join(re.escape(t) for t in sorted(terms[:MAX_TERMS], key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\w*", re.IGNORECASE)


def highlight(text: str, query: str) -> Markup:
    """`text` escaped, with each word matching a query term wrapped in <mark>."""
    pattern = terms_pattern(query)
    if pattern is None:
        return escape(text)
    parts: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        parts.append(str(escape(text[last : match.start()])))
        parts.append(f"<mark>{escape(match.group())}</mark>")
        last = match.end()
    parts.append(str(escape(text[last:])))
    return Markup("".join(parts))
