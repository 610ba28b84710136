"""Text -> index terms for the PostgreSQL full-text store (BM25).

One analyser for documents and queries, so their terms always line up:

- NFKC normalisation and case folding;
- words are runs of letters and digits; identifiers joined by `_`, `.` or `-` (`oom_score_adj`,
  `os.path`, `utf-8`) are kept whole *and* split into their parts, so both `O_CLOEXEC` and `cloexec`
  match;
- Latin-script words are stemmed with the Snowball English stemmer (Porter2) and English stop words
  are dropped (their IDF would be near zero anyway; dropping them keeps the postings small);
- CJK runs (Han, Kana, Hangul) have no spaces between words, and Korean glues particles to nouns
  (`김치찌개는`), so they are indexed as overlapping character bigrams plus single characters (the
  approach of Lucene's CJK analyser); a query uses the bigrams of its runs (the unigram for a
  one-character run), so `김치찌개` finds `김치찌개는` and `中文分词` finds `中文分词是`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import snowballstemmer

# Terms longer than this are cut (btree keys have a size limit; nothing real is that long).
MAX_TERM_CHARS = 64

_WORD = re.compile(r"[^\W_]+(?:[._\-][^\W_]+)*")
_PART = re.compile(r"[^\W_]+")
# Han (with extensions and compatibility ideographs), Hiragana, Katakana, Hangul syllables and jamo.
_CJK = re.compile(
    "[\u1100-\u11ff\u3040-\u309f\u30a0-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]+"
)

# Snowball's English stop-word list (snowballstemmer ships the stemmers, not the lists).
STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "cannot",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "ought",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "shall",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    ]
)

_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    if not word.isascii() or not word.isalpha():
        return word
    return str(_stemmer.stemWord(word))


def _cjk_terms(run: str, for_query: bool) -> list[str]:
    if len(run) == 1:
        return [run]
    bigrams = [run[i : i + 2] for i in range(len(run) - 1)]
    return bigrams if for_query else bigrams + list(run)


def _word_terms(word: str, out: list[str]) -> None:
    """A word of letters and digits, possibly with CJK runs inside (`Python을`)."""
    pos = 0
    for m in _CJK.finditer(word):
        _latin_terms(word[pos : m.start()], out)
        out.append(m.group())  # marker, expanded by the caller
        pos = m.end()
    _latin_terms(word[pos:], out)


def _latin_terms(word: str, out: list[str]) -> None:
    if len(word) > 1 and word not in STOP_WORDS:
        out.append(_stem(word)[:MAX_TERM_CHARS])


def analyze(text: str, for_query: bool = False) -> list[str]:
    """The terms of `text`, in order, with repeats (their count is the term frequency)."""
    terms: list[str] = []
    for match in _WORD.finditer(unicodedata.normalize("NFKC", text).casefold()):
        token = match.group()
        parts = _PART.findall(token)
        if len(parts) > 1 and not _CJK.search(token):
            terms.append(token[:MAX_TERM_CHARS])
        for part in parts:
            pieces: list[str] = []
            _word_terms(part, pieces)
            for piece in pieces:
                if _CJK.fullmatch(piece):
                    terms.extend(_cjk_terms(piece, for_query))
                else:
                    terms.append(piece)
    return terms


def term_frequencies(text: str) -> Counter[str]:
    return Counter(analyze(text))


def query_terms(query: str) -> list[str]:
    """Distinct terms of a query, in order of first appearance."""
    return list(dict.fromkeys(analyze(query, for_query=True)))
