"""Numbered citations in an answer ("[2]", "[1][3]", "[1, 3]") resolved to the sources in its context."""

from __future__ import annotations

import re
from collections.abc import Sequence
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
