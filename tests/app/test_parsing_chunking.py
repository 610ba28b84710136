from __future__ import annotations

import itertools

import pytest

from aperag.chunking import chunk_text, load_tokenizer
from aperag.parsing import (
    CONTENT_TYPES,
    ParseLimits,
    UnparsableDocument,
    UnsupportedDocument,
    detect_content_type,
    extract_text,
)
from tests.app.office_fixtures import make_docx, make_epub, make_pptx, make_xlsx
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


def test_markdown_structure_removed_text_kept() -> None:
    text = extract_text(b"# Title\n\n- Some [link](http://x/a_b) text\n- ![a picture](p.png)", "text/markdown")
    assert text == "Title\n\nSome link text\na picture"


def test_markdown_keeps_code_identifiers_as_written() -> None:
    source = b"""# Tuning

Call `yaml.safe_load` and raise oom_score_adj; __init__ runs first, snake_case_name stays, *as* **is**.
_private_ stays.
Inline: `a_b * c_d` and `**kwargs`.

```python
def load(path_name):
    return yaml.safe_load(open(path_name))  # __dunder__ stays
```

    indented_block = 1

| setting_name | value |
| --- | --- |
| max_conn_count | 10 |
"""
    text = extract_text(source, "text/markdown")
    for written in (
        "yaml.safe_load",
        "oom_score_adj",
        "__init__",
        "snake_case_name",
        "as is",
        "_private_ stays",
        "a_b * c_d",
        "**kwargs",
        "def load(path_name):",
        "return yaml.safe_load(open(path_name)) # __dunder__ stays",
        "indented_block = 1",
        "setting_name value",
        "max_conn_count 10",
    ):
        assert written in text, (written, text)
    assert "```" not in text and "# Tuning" not in text and "---" not in text


def test_nul_bytes_in_text_are_dropped_and_binary_is_refused() -> None:
    assert extract_text(b"first half\x00second half", "text/plain") == "first half second half"
    assert extract_text("caf\u00e9 \x00ok".encode(), "text/markdown") == "caf\u00e9 ok"
    # UTF-16 without a byte order mark is half NULs: binary, not text.
    with pytest.raises(UnparsableDocument, match="binary"):
        extract_text("plain words here".encode("utf-16-le"), "text/plain")
    with pytest.raises(UnparsableDocument, match="binary"):
        extract_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "text/plain")


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


def test_every_office_format_is_read_from_a_real_file() -> None:
    files = {
        ".docx": make_docx(
            "Quarterly report_2026",
            ["The kubelet reads oom_score_adj before it kills a pod."],
            table=[["max_conn", "10"], ["pool_size", "4"]],
        ),
        ".pptx": make_pptx([("Roadmap slide_one", "Ship yaml.safe_load support"), ("Second", "Axolotls")]),
        ".xlsx": make_xlsx({"Prices": [["fruit_name", "price"], ["durian", 12.5]], "Notes": [["ripe"]]}),
        ".epub": make_epub("A Field Guide", [("Chapter one", "The axolotl regrows its limbs_fully.")]),
        ".csv": b"name,value\nfoo_bar,1\nbaz,2\n",
    }
    expected = {
        ".docx": ["Quarterly report_2026", "oom_score_adj", "max_conn 10", "pool_size 4"],
        ".pptx": ["Roadmap slide_one", "yaml.safe_load", "Axolotls"],
        ".xlsx": ["Prices", "fruit_name price", "durian 12.5", "Notes", "ripe"],
        ".epub": ["A Field Guide", "Chapter one", "limbs_fully"],
        ".csv": ["name value", "foo_bar 1", "baz 2"],
    }
    for suffix, data in files.items():
        content_type = detect_content_type(f"file{suffix}", "application/octet-stream")
        assert content_type == CONTENT_TYPES[suffix]
        text = extract_text(data, content_type)
        for fragment in expected[suffix]:
            assert fragment in text, (suffix, fragment, text)
        assert "<!--" not in text, (suffix, text)


@pytest.mark.parametrize("suffix", [".docx", ".pptx", ".xlsx", ".epub"])
def test_damaged_office_files_are_unparsable_with_a_reason(suffix: str) -> None:
    content_type = CONTENT_TYPES[suffix]
    with pytest.raises(UnparsableDocument, match="cannot read"):
        extract_text(b"PK\x03\x04 this is not really a zip archive", content_type)
    # A valid ZIP that is not the claimed format.
    with pytest.raises(UnparsableDocument, match="cannot read"):
        extract_text(make_epub("x", [("y", "z")]) if suffix != ".epub" else make_xlsx({"s": [["a"]]}), content_type)


def test_page_budget_per_format() -> None:
    limits = ParseLimits(max_pages=2)
    three_slides = make_pptx([("one", "a"), ("two", "b"), ("three", "c")])
    with pytest.raises(UnparsableDocument, match=r"3 slides; the limit is 2 \(MAX_DOCUMENT_PAGES\)"):
        extract_text(three_slides, CONTENT_TYPES[".pptx"], limits)
    assert "three" in extract_text(three_slides, CONTENT_TYPES[".pptx"], ParseLimits(max_pages=3))
    three_sheets = make_xlsx({"a": [["1"]], "b": [["2"]], "c": [["3"]]})
    with pytest.raises(UnparsableDocument, match="3 sheets"):
        extract_text(three_sheets, CONTENT_TYPES[".xlsx"], limits)
    three_pages = make_pdf("page one", "page two", "page three")
    with pytest.raises(UnparsableDocument, match="PDF has 3 pages"):
        extract_text(three_pages, "application/pdf", limits)


def test_unpacked_size_and_text_budgets() -> None:
    # Highly compressible: a small upload that unpacks to far more than the budget.
    bomb = make_docx("big", ["word " * 200_000])
    assert len(bomb) < 100_000
    with pytest.raises(UnparsableDocument, match=r"unpacks to \d+ bytes; the limit is 500000"):
        extract_text(bomb, CONTENT_TYPES[".docx"], ParseLimits(max_unpacked_bytes=500_000))
    with pytest.raises(UnparsableDocument, match=r"characters of text; the limit is 1000 \(MAX_DOCUMENT_CHARS\)"):
        extract_text(b"word " * 1000, "text/plain", ParseLimits(max_chars=1000))
