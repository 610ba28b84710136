"""Evaluation corpora built from real public text that installed packages ship.

Two sets, kept apart on purpose (docs/benchmarks.md, "Retrieval quality"):

- **tuning** (`bench/data/tuning-pydoc/`): the documentation of ~100 Python standard-library modules,
  rendered by `pydoc` from the running interpreter. Every choice of the search code (BM25 parameters,
  fusion function and weights) was made on this set only.
- **held-out** (`bench/data/heldout-manpages/`): ~130 Linux man pages (sections 2 and 7) from the
  Debian `manpages` and `manpages-dev` packages, rendered with groff. Never tuned on; the quality test
  asserts the targets on it.

Only the page/module lists, the queries and the judgements are committed; the text is extracted at
run time from what is installed (the Makefile installs the man pages and groff). Each document is
cut at `MAX_DOC_CHARS` at a line boundary: embedding the full pages (2 MB) with the numpy model
would take too long for a test on 2 cores, and the queries were written against the cut text.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
MAX_DOC_CHARS = 3500
MAN_ROOT = Path("/usr/share/man")


@dataclass(frozen=True)
class Query:
    id: str
    type: str
    text: str


@dataclass(frozen=True)
class EvalSet:
    name: str
    docs: dict[str, str]
    queries: list[Query]
    qrels: dict[str, dict[str, int]]


class CorpusUnavailable(RuntimeError):
    """The package that ships a corpus's text is not installed."""


def _cut(text: str, limit: int = MAX_DOC_CHARS) -> str:
    """Whitespace-normalised text cut at the last line end before `limit` characters."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    out: list[str] = []
    size = 0
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        if size + len(line) + 1 > limit and out:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out).strip() + "\n"


def render_man_page(name: str) -> str:
    """`epoll.7` -> the page as plain text (groff, no formatting codes)."""
    section = name.rsplit(".", 1)[1]
    path = MAN_ROOT / f"man{section}" / f"{name}.gz"
    if not path.exists():
        raise CorpusUnavailable(f"{path} is missing: install the Debian packages manpages and manpages-dev")
    source = gzip.decompress(path.read_bytes())
    result = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-rLL=120n", "-rHY=0", "-P-cbou"],
        input=source,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout.decode("utf-8", "replace")


def render_pydoc(module: str) -> str:
    import importlib
    import pydoc

    mod = importlib.import_module(module)
    return pydoc.render_doc(mod, title="Help on %s:", renderer=pydoc.plaintext)


def _load_judgements(root: Path) -> tuple[list[Query], dict[str, dict[str, int]]]:
    queries = [Query(**json.loads(line)) for line in (root / "queries.jsonl").read_text().splitlines() if line]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (root / "qrels.jsonl").read_text().splitlines():
        if line:
            row = json.loads(line)
            qrels[row["query_id"]][row["doc_id"]] = int(row["grade"])
    return queries, dict(qrels)


def _names(root: Path, listing: str) -> list[str]:
    text = (root / listing).read_text()
    return [n for line in text.splitlines() if not line.startswith("#") for n in line.split()]


def load_heldout() -> EvalSet:
    root = DATA / "heldout-manpages"
    docs = {name: _cut(render_man_page(name)) for name in _names(root, "pages.txt")}
    queries, qrels = _load_judgements(root)
    return EvalSet("held-out (man pages)", docs, queries, qrels)


def load_tuning() -> EvalSet:
    root = DATA / "tuning-pydoc"
    docs: dict[str, str] = {}
    for name in _names(root, "modules.txt"):
        docs[name] = _cut(render_pydoc(name))
    queries, qrels = _load_judgements(root)
    return EvalSet("tuning (Python module docs)", docs, queries, qrels)
