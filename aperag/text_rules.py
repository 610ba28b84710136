"""What text the app accepts in descriptions, queries and questions: one rule for the JSON API, the
OpenAI-compatible API, MCP and the console.

Control characters other than tab, newline and carriage return, and lone UTF-16 surrogates (JSON can spell
them, UTF-8 cannot): PostgreSQL text cannot hold NUL or a surrogate, and none of them belongs in a
description or a query. A query or a question needs at least one letter or digit to search for."""

from __future__ import annotations

import re

UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
WORD = re.compile(r"\w")


def text_problem(text: str, *, what: str, limit: int, needs_word: bool = True) -> str | None:
    """Why ``text`` (a query, a question: ``what``) cannot be used, as a sentence for a person; None if it can."""
    if len(text) > limit:
        return f"The {what} is too long: at most {limit} characters (it has {len(text)})."
    if UNSTORABLE.search(text):
        return f"The {what} cannot contain control characters."
    if needs_word and not WORD.search(text):
        return f"The {what} needs at least one letter or digit, not only punctuation."
    return None
