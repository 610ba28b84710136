"""Text, Markdown and HTML to plain text, and the cleaning every extracted text goes through."""

from __future__ import annotations

import re
from functools import lru_cache
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from aperag.parsing.errors import UnparsableDocument

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

# C0 controls other than tab, newline, vertical tab, form feed and carriage return, and DEL.
# PostgreSQL text cannot hold NUL at all, and the others are never meaningful in an index.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# More than this share of control characters in a "text" file means it is binary (a stray NUL in a
# text file is dropped; UTF-16 without a byte order mark, half NULs, is refused).
_BINARY_CONTROL_SHARE = 0.01
_STRAY_CONTROLS = 4


def decode_text(data: bytes) -> str:
    """UTF-8 (or UTF-16 with a byte order mark), else Latin-1; binary data is refused."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise UnparsableDocument(f"invalid UTF-16 text: {exc}") from exc
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            if b"\x00" in data[:4096]:
                raise UnparsableDocument("file looks binary, not text") from None
            text = data.decode("latin-1")
    controls = len(_CONTROL.findall(text))
    if controls > max(_STRAY_CONTROLS, len(text) * _BINARY_CONTROL_SHARE):
        raise UnparsableDocument(
            f"file looks binary, not text ({controls} control characters such as NUL in {len(text)})"
        )
    # Stray ones go now: a Markdown parser would turn a NUL into U+FFFD.
    return _CONTROL.sub(" ", text) if controls else text


def clean_text(text: str) -> str:
    """Drop characters no store can hold (NUL, lone surrogates) and normalise whitespace."""
    text = _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "table"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip_depth += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


@lru_cache(maxsize=1)
def _markdown_parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    # CommonMark never reads an underscore inside a word as emphasis (`yaml.safe_load`,
    # `oom_score_adj` are safe); `_inline_text` keeps underscore emphasis markers anyway, because a
    # standalone `__init__` is bold "init" to CommonMark. Tables as GitHub writes them.
    return MarkdownIt("commonmark").enable(["table"])


_EMPHASIS = frozenset({"em_open", "em_close", "strong_open", "strong_close"})


def _inline_text(children: list[Token]) -> str:
    parts: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child.children or []))
        elif child.type in _EMPHASIS and child.markup.startswith("_"):
            # `__init__`, `_private`: identifiers far more often than emphasis; keep them as written.
            # `*` and `**` emphasis markers are dropped: they are only noise to the index.
            parts.append(child.markup)
        elif child.type == "html_inline":
            continue
    return "".join(parts)


# Block tokens after which a line ends (paragraphs, headings, list items, table cells and rows).
_LINE_ENDS = frozenset(
    {"paragraph_close", "heading_close", "list_item_close", "tr_close", "blockquote_close", "hr"}
)


def markdown_to_text(markdown: str) -> str:
    """The words of a Markdown document, markup dropped: code (inline and fenced) kept verbatim, link
    and image text kept without their URLs, HTML blocks read as HTML."""
    parts: list[str] = []
    for token in _markdown_parser().parse(markdown):
        if token.type == "inline":
            parts.append(_inline_text(token.children or []))
        elif token.type in ("fence", "code_block"):
            parts.append("\n" + token.content + "\n")
        elif token.type == "html_block":
            parts.append(html_to_text(token.content))
        elif token.type in ("th_close", "td_close"):
            parts.append(" ")
        elif token.type in _LINE_ENDS and not token.hidden:  # hidden: a tight list's paragraph
            parts.append("\n\n" if token.type in ("paragraph_close", "heading_close") else "\n")
    return "".join(parts)
