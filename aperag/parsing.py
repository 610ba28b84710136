"""Uploaded bytes -> plain text, for text, Markdown, HTML and PDF."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import PurePath


class UnsupportedDocument(ValueError):
    """The file type is not one we can index (a 415 at upload)."""


class UnparsableDocument(ValueError):
    """The file claims a supported type but cannot be read, or holds no text."""


CONTENT_TYPES: dict[str, str] = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
SUPPORTED_CONTENT_TYPES = frozenset(CONTENT_TYPES.values())


def detect_content_type(filename: str, declared: str | None) -> str:
    """Trust the extension first (browsers and curl often send application/octet-stream)."""
    suffix = PurePath(filename).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    base = (declared or "").split(";")[0].strip().lower()
    if base in SUPPORTED_CONTENT_TYPES:
        return base
    raise UnsupportedDocument(
        f"unsupported file type for {filename!r} (content type {declared!r}); "
        f"supported extensions: {', '.join(sorted(CONTENT_TYPES))}"
    )


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "pre",
            "table",
        }
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


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    if b"\x00" in data[:4096]:
        raise UnparsableDocument("file looks binary, not text")
    return data.decode("latin-1")


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _markdown_to_text(text: str) -> str:
    # Keep the words, drop the markup that would only add noise tokens.
    text = re.sub(r"```[^\n]*\n", "", text)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s{0,3}#{1,6}\s*", "", text, flags=re.MULTILINE)
    text = re.sub(r"^\s*[-*+]\s+", "", text, flags=re.MULTILINE)
    return re.sub(r"[*_`]{1,3}", "", text)


def _pdf_to_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnparsableDocument(f"cannot read PDF: {exc}") from exc


def extract_text(data: bytes, content_type: str) -> str:
    if content_type == "application/pdf":
        raw = _pdf_to_text(data)
    elif content_type == "text/html":
        parser = _TextExtractor()
        parser.feed(_decode(data))
        parser.close()
        raw = "".join(parser.parts)
    elif content_type == "text/markdown":
        raw = _markdown_to_text(_decode(data))
    elif content_type == "text/plain":
        raw = _decode(data)
    else:
        raise UnsupportedDocument(f"unsupported content type {content_type!r}")
    text = _normalise(raw)
    if not text:
        raise UnparsableDocument("document contains no text")
    return text
