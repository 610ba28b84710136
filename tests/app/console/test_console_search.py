"""The search page on the real app: each mode finds the expected document with the query's terms marked
and links to its chunk; bad queries get a message; document text is never markup."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from aperag import services
from aperag.console.highlight import highlight
from tests.app.conftest import wait_until
from tests.app.console.test_console_documents import create_collection, ctx_of, upload
from tests.app.corpus import DOCS

SCRIPT_DOC = "<script>alert('owned')</script> Axolotls regrow their limbs & hearts <b>quickly</b>."
_HIT = re.compile(r'<li class="hit">(.*?)</li>', re.S)
_LINK = re.compile(r'<a href="(/console/collections/[0-9a-f]{32}/documents/([0-9a-f]{32})#chunk-(\d+))">([^<]*)</a>')


def _indexed(console: TestClient) -> str:
    """A collection with the corpus and a document whose text looks like markup, indexed, graphs built."""
    cid = create_collection(console, "kb")
    files = [(name, body.encode()) for name, body in DOCS.items()] + [("axolotl.txt", SCRIPT_DOC.encode())]
    assert upload(console, cid, files).status_code == 200
    ctx = ctx_of(console)

    def built() -> bool:
        docs = services.list_documents(ctx, cid)
        return len(docs) == len(files) and all(
            d.status == "ready" and d.graph_status in ("ready", "partial", "failed", "disabled") for d in docs
        )

    wait_until(built, 120, "documents indexed and their graphs built", interval=0.2)
    return cid


def _search(console: TestClient, cid: str, q: str, mode: str | None = None) -> tuple[int, str]:
    url = f"/console/collections/{cid}/search?q={quote(q)}" + (f"&mode={quote(mode)}" if mode is not None else "")
    response = console.get(url)
    assert response.status_code < 500, response.text
    return response.status_code, response.text


def test_the_form_alone_without_a_query(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    status, html = _search(console, cid, "")
    assert status == 200
    assert '<label for="q">Query</label>' in html and '<input type="search" id="q" name="q"' in html
    assert "<legend>Mode</legend>" in html and ">Search</button>" in html
    assert re.findall(r'name="mode" value="(\w+)"', html) == ["hybrid", "vector", "fulltext", "graph"]
    assert re.search(r'value="hybrid"\s+checked', html)
    assert 'method="get"' in html and 'aria-current="page">Search</a>' in html
    assert "Results" not in html and "No results" not in html


@pytest.mark.parametrize("mode", ["hybrid", "vector", "fulltext", "graph"])
def test_no_hits_says_no_results(console: TestClient, mode: str) -> None:
    cid = create_collection(console, "kb")
    status, html = _search(console, cid, "zeppelin airship", mode)
    assert status == 200 and "No results" in html
    assert re.search(rf'value="{mode}"\s+checked', html)


def test_each_mode_finds_the_document_marks_terms_and_links_the_chunk(console: TestClient) -> None:
    cid = _indexed(console)
    cases = [
        ("hybrid", "wild yeast starter fermentation", "sourdough.txt", "yeast"),
        ("vector", "how does magma reach the surface and become lava", "volcanoes.md", "magma"),
        ("fulltext", "Sicilian Defence", "chess.html", "Sicilian"),
        ("graph", "Sicilian Defence", "chess.html", "Sicilian"),
    ]
    for mode, query, expected, marked in cases:
        status, html = _search(console, cid, query, mode)
        assert status == 200, (mode, html)
        assert re.search(rf'value="{mode}"\s+checked', html), mode
        hits = _HIT.findall(html)
        assert hits, (mode, html)
        link = _LINK.search(hits[0])
        assert link, (mode, hits[0])
        href, doc_id, ordinal, filename = link.groups()
        assert filename == expected, (mode, filename)
        assert f"chunk {ordinal}" in hits[0] and "score " in hits[0]
        assert f"<mark>{marked}</mark>" in hits[0], (mode, hits[0])
        assert "<mark>the</mark>" not in hits[0].lower()
        view = console.get(href.split("#")[0])
        assert view.status_code == 200 and f'<section id="chunk-{ordinal}" class="chunk"' in view.text
        assert services.get_document(ctx_of(console), cid, doc_id).filename == expected
    _, graph = _search(console, cid, "Sicilian Defence", "graph")
    assert "Graph matches" in graph and "<strong>Sicilian Defence</strong>" in graph


def test_document_text_is_escaped_in_hits(console: TestClient) -> None:
    cid = _indexed(console)
    status, html = _search(console, cid, "axolotls regrow", "fulltext")
    assert status == 200
    (hit,) = [h for h in _HIT.findall(html) if "axolotl.txt" in h]
    assert "<script>" not in html.split("<main", 1)[1] and "&lt;script&gt;alert(" in hit
    assert "<b>quickly</b>" not in hit and "&lt;b&gt;quickly&lt;/b&gt;" in hit
    assert "<mark>Axolotls</mark> <mark>regrow</mark>" in hit and "&amp; hearts" in hit


@pytest.mark.parametrize(
    ("q", "mode", "message"),
    [
        ("?!", "hybrid", "at least one letter or digit"),
        ("bees", "magic", "Unknown search mode"),
        ("x" * 4001, "fulltext", "too long"),
        ("bees\x00", "fulltext", "control characters"),
    ],
)
def test_bad_queries_get_a_message_and_keep_the_form(console: TestClient, q: str, mode: str, message: str) -> None:
    cid = create_collection(console, "kb")
    status, html = _search(console, cid, q, mode)
    assert status == 400 and 'role="alert"' in html and message in html
    assert '<input type="search" id="q" name="q"' in html
    assert re.search(r'value="(hybrid|fulltext)"\s+checked', html)


def test_highlight_escapes_then_marks() -> None:
    assert str(highlight("<b>Volcano</b> & VOLCANOES ash", "volcanoes")) == (
        "&lt;b&gt;<mark>Volcano</mark>&lt;/b&gt; &amp; <mark>VOLCANOES</mark> ash"
    )
    assert str(highlight("Magma MAGMA magmatic enigma", "magma")) == (
        "<mark>Magma</mark> <mark>MAGMA</mark> <mark>magmatic</mark> enigma"
    )
    assert str(highlight("the cat and the hat", "the")) == "the cat and the hat"
    assert str(highlight("a <i>b</i>", "?!")) == "a &lt;i&gt;b&lt;/i&gt;"
    assert str(highlight("amp &amp; lt", "amp lt")) == "<mark>amp</mark> &amp;<mark>amp</mark>; <mark>lt</mark>"
