"""Entity and relation precision/recall of a graph extractor against the hand-written gold
(tests/data/retrieval/graph: the tuning part from the project corpus, the held-out part from man pages).

    .venv/bin/python -m bench.graph_gold [--json out.json]

Each document (or man-page excerpt) is extracted whole, as one text: chunking only splits sentences
that straddle a chunk boundary, which the offline extractor's sentence-level relations would lose anyway.
Matching rules: tests/data/retrieval/graph/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aperag.graph.model import ChunkGraph, normalise_name
from aperag.graph.offline import extract_text
from bench.corpora import _cut, render_man_page

GOLD = Path(__file__).resolve().parent.parent / "tests" / "data" / "retrieval" / "graph"
DOCS = GOLD.parent / "docs"
# `poll(2)`, `fcntl()`: a function named with its manual section or call parentheses is the function.
_CALL = re.compile(r"\s*\((\d\w*)?\)$")


def key(name: str) -> str:
    return normalise_name(_CALL.sub("", name.strip()))


@dataclass(frozen=True)
class GoldDoc:
    doc: str
    text: str
    aliases: dict[str, str]  # any name or alias key -> the gold entity's key
    kinds: dict[str, str]  # gold entity key -> named | term
    relations: frozenset[frozenset[str]]


def load_gold(part: str) -> list[GoldDoc]:
    out = []
    for line in (GOLD / f"{part}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["source"] == "project":
            text = (DOCS / f"{row['doc']}.md").read_text()
        else:
            text = _cut(render_man_page(row["doc"]), int(row["chars"]))
        aliases: dict[str, str] = {}
        kinds: dict[str, str] = {}
        for e in row["entities"]:
            k = key(e["name"])
            kinds[k] = e["kind"]
            for name in [e["name"], *e["aliases"]]:
                aliases[key(name)] = k
        relations = frozenset(frozenset((aliases[key(a)], aliases[key(b)])) for a, b in row["relations"])
        out.append(GoldDoc(row["doc"], text, aliases, kinds, relations))
    return out


@dataclass
class Counts:
    extracted: int = 0
    correct: int = 0
    gold: int = 0
    found: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.extracted if self.extracted else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.gold if self.gold else 0.0

    def add(self, other: Counts) -> None:
        self.extracted += other.extracted
        self.correct += other.correct
        self.gold += other.gold
        self.found += other.found


@dataclass
class Scores:
    entities: Counts
    named: Counts  # recall over the `named` gold entities only (precision as for all)
    relations: Counts
    per_doc: dict[str, tuple[Counts, Counts]]
    misses: dict[str, list[str]]
    false: dict[str, list[str]]


def score_doc(gold: GoldDoc, graph: ChunkGraph) -> tuple[Counts, Counts, Counts, list[str], list[str]]:
    keys = {key(e.name) for e in graph.entities}
    matched = {gold.aliases[k] for k in keys if k in gold.aliases}
    correct = sum(1 for k in keys if k in gold.aliases)
    entities = Counts(len(keys), correct, len(gold.kinds), len(matched))
    named_gold = {k for k, kind in gold.kinds.items() if kind == "named"}
    named = Counts(len(keys), correct, len(named_gold), len(matched & named_gold))
    pairs = set()
    for r in graph.relations:
        a, b = key(r.source), key(r.target)
        pairs.add(frozenset((gold.aliases.get(a, "?" + a), gold.aliases.get(b, "?" + b))))
    right = pairs & gold.relations
    relations = Counts(len(pairs), len(right), len(gold.relations), len(right))
    misses = sorted(set(gold.kinds) - matched)
    false = sorted(k for k in keys if k not in gold.aliases)
    return entities, named, relations, misses, false


def evaluate(part: str, extract: Callable[[str], ChunkGraph] = extract_text) -> Scores:
    scores = Scores(Counts(), Counts(), Counts(), {}, {}, {})
    for gold in load_gold(part):
        entities, named, relations, misses, false = score_doc(gold, extract(gold.text))
        scores.entities.add(entities)
        scores.named.add(named)
        scores.relations.add(relations)
        scores.per_doc[gold.doc] = (entities, relations)
        scores.misses[gold.doc] = misses
        scores.false[gold.doc] = false
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--verbose", action="store_true", help="list the misses and false entities")
    args = parser.parse_args()
    out = {}
    print("| part | documents | entity precision | entity recall | recall, named only | relation precision "
          "| relation recall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for part in ("tuning", "heldout"):
        s = evaluate(part)
        print(
            f"| {part} | {len(s.per_doc)} | {s.entities.precision:.2f} ({s.entities.correct}/{s.entities.extracted}) "
            f"| {s.entities.recall:.2f} ({s.entities.found}/{s.entities.gold}) "
            f"| {s.named.recall:.2f} ({s.named.found}/{s.named.gold}) "
            f"| {s.relations.precision:.2f} ({s.relations.correct}/{s.relations.extracted}) "
            f"| {s.relations.recall:.2f} ({s.relations.found}/{s.relations.gold}) |"
        )
        if args.verbose:
            for doc in s.per_doc:
                print(f"  {doc}: missed {s.misses[doc]}\n  {doc}: not gold {s.false[doc]}")
        out[part] = {
            "entity_precision": s.entities.precision, "entity_recall": s.entities.recall,
            "named_recall": s.named.recall, "relation_precision": s.relations.precision,
            "relation_recall": s.relations.recall,
        }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
