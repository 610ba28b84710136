"""Numbered citations in an answer ("[2]", "[1][3]", "[1, 3]") resolved to the sources in its context."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aperag.chat.prompt import Source

_MARKER = re.compile(r"\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")


@dataclass(frozen=True)
class Citations:
    cited: list[Source]  # in order of first mention
    unknown: list[int]  # numbers the answer used that were not in the context (dropped)


def resolve(answer: str, sources: Sequence[Source]) -> Citations:
    by_number = {s.n: s for s in sources}
    cited: dict[int, Source] = {}
    unknown: list[int] = []
    for marker in _MARKER.finditer(answer):
        for part in marker.group(1).split(","):
            n = int(part)
            if n in by_number:
                cited.setdefault(n, by_number[n])
            elif n not in unknown:
                unknown.append(n)
    return Citations(list(cited.values()), unknown)


def segments(answer: str, cited: Iterable[int]) -> list[tuple[str, int | None]]:
    """The answer cut into text and citation links, for display: every number of a marker that is among
    `cited` becomes its own "[n]" segment with that number; the rest stays text ("[99]" of a source
    the answer was not given, the ", " between numbers is dropped). Joined, a page shows the answer
    with "[1, 3]" as "[1][3]"."""
    known = set(cited)
    out: list[tuple[str, int | None]] = []
    last = 0
    for marker in _MARKER.finditer(answer):
        numbers = [int(p) for p in marker.group(1).split(",")]
        if not any(n in known for n in numbers):
            continue
        if marker.start() > last:
            out.append((answer[last : marker.start()], None))
        for n in numbers:
            out.append((f"[{n}]", n if n in known else None))
        last = marker.end()
    if last < len(answer):
        out.append((answer[last:], None))
    return out
