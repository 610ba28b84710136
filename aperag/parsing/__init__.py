"""Uploaded bytes -> plain text.

Text, Markdown and HTML are read here; PDF with pypdf; DOCX, PPTX, XLSX, EPUB and CSV through
markitdown's converters (the converter upstream ApeRAG uses), whose Markdown output is then read like
any other Markdown. Every format is held to a budget (`ParseLimits`) so that one upload cannot make
the API or a worker unpack gigabytes or hold millions of pages.
"""

from __future__ import annotations

from pathlib import PurePath

from aperag.parsing.errors import UnparsableDocument, UnsupportedDocument
from aperag.parsing.limits import ParseLimits
from aperag.parsing.text import clean_text, decode_text, html_to_text, markdown_to_text

__all__ = [
    "CONTENT_TYPES",
    "SUPPORTED_CONTENT_TYPES",
    "ParseLimits",
    "UnparsableDocument",
    "UnsupportedDocument",
    "detect_content_type",
    "extract_text",
]

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
EPUB = "application/epub+zip"
CSV = "text/csv"

CONTENT_TYPES: dict[str, str] = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": DOCX,
    ".pptx": PPTX,
    ".xlsx": XLSX,
    ".epub": EPUB,
    ".csv": CSV,
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


def _raw_text(data: bytes, content_type: str, limits: ParseLimits) -> str:
    if content_type == "text/plain":
        return decode_text(data)
    if content_type == "text/markdown":
        return markdown_to_text(decode_text(data))
    if content_type == "text/html":
        return html_to_text(decode_text(data))
    if content_type == "application/pdf":
        from aperag.parsing.pdf import pdf_to_text

        return pdf_to_text(data, limits)
    if content_type in (DOCX, PPTX, XLSX, EPUB, CSV):
        from aperag.parsing.office import office_to_markdown

        return markdown_to_text(office_to_markdown(data, content_type, limits))
    raise UnsupportedDocument(f"unsupported content type {content_type!r}")


def extract_text(data: bytes, content_type: str, limits: ParseLimits | None = None) -> str:
    """The document's text, normalised. Raises UnparsableDocument (with the reason) for a file that is
    damaged, holds no text, or exceeds a budget; UnsupportedDocument for a type we do not read."""
    limits = limits or ParseLimits()
    text = clean_text(_raw_text(data, content_type, limits))
    if not text:
        raise UnparsableDocument("document contains no text")
    if len(text) > limits.max_chars:
        raise UnparsableDocument(
            f"document holds {len(text)} characters of text; the limit is {limits.max_chars} "
            "(MAX_DOCUMENT_CHARS)"
        )
    return text
