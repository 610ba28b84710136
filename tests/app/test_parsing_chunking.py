from __future__ import annotations

import itertools

import pytest

from aperag.chunking import chunk_text, load_tokenizer
from aperag.parsing import UnparsableDocument, UnsupportedDocument, detect_content_type, extract_text
from tests.app.pdf_fixture import make_pdf


def test_content_type_from_extension_beats_declared() -> None:
    assert detect_content_type("a.md", "application/octet-stream") == "text/markdown"
    assert detect_content_type("noext", "text/html; charset=utf-8") == "text/html"
    with pytest.raises(UnsupportedDocument):
        detect_content_type("photo.png", "image/png")


def test_html_drops_scripts_and_keeps_text() -> None:
    html = (
        b"<html><head><title>t</title><script>var x=1;</script></head>"
        b"<body><p>Hello</p><p>World</p></body></html>"
    )
    assert extract_text(html, "text/html") == "Hello\n\nWorld"


def test_markdown_markup_removed() -> None:
    text = extract_text(b"# Title\n\nSome **bold** [link](http://x) text", "text/markdown")
    assert text == "Title\n\nSome bold link text"


def test_pdf_text_extracted() -> None:
    assert "quokka" in extract_text(make_pdf("The quokka lives on Rottnest Island."), "application/pdf")


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (b"   \n\n ", "text/plain"),
        (b"<html><script>x</script></html>", "text/html"),
        (b"%PDF-garbage", "application/pdf"),
    ],
)
def test_empty_or_broken_documents(data: bytes, ctype: str) -> None:
    with pytest.raises(UnparsableDocument):
        extract_text(data, ctype)


def test_chunks_respect_token_budget_and_overlap() -> None:
    tokenizer = load_tokenizer()
    text = " ".join(f"Sentence {i} is about the topic number {i % 5}." for i in range(200))
    chunks = chunk_text(text, tokenizer, chunk_size=64, overlap=8)
    assert len(chunks) > 10
    for c in chunks:
        assert c.token_count <= 64
        assert text[c.start_char : c.end_char] == c.text
        # Re-tokenising the chunk text must not exceed the budget either.
        assert len(tokenizer.encode(c.text, add_special_tokens=False).ids) <= 64
    # Consecutive chunks overlap, and together they cover the whole text.
    for a, b in itertools.pairwise(chunks):
        assert b.start_char < a.end_char
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(text)
    # Most chunks end on a sentence boundary.
    assert sum(c.text.endswith(".") for c in chunks) >= len(chunks) * 0.8
