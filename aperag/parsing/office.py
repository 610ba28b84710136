"""DOCX, PPTX, XLSX, EPUB and CSV to Markdown through markitdown's converters.

The converters are called directly with the type we already detected, not through MarkItDown's
guessing front door: no content sniffing, no URL fetching, no plugins. ZIP-based formats are checked
against the budget from their central directory before anything is unpacked.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import TYPE_CHECKING

from aperag.parsing.errors import UnparsableDocument
from aperag.parsing.limits import ParseLimits
from aperag.parsing.text import decode_text

if TYPE_CHECKING:
    from markitdown import DocumentConverter

_NAMES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("DOCX", ".docx"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ("PPTX", ".pptx"),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("XLSX", ".xlsx"),
    "application/epub+zip": ("EPUB", ".epub"),
    "text/csv": ("CSV", ".csv"),
}
# What counts as a "page" in each ZIP-based format, by member name.
_PAGE_MEMBERS = {
    ".pptx": (re.compile(r"ppt/slides/slide\d+\.xml"), "slides"),
    ".xlsx": (re.compile(r"xl/worksheets/sheet\d+\.xml"), "sheets"),
    ".epub": (re.compile(r".+\.x?html?", re.IGNORECASE), "chapters"),
}


def _converter(extension: str) -> DocumentConverter:
    from markitdown.converters import CsvConverter, DocxConverter, EpubConverter, PptxConverter, XlsxConverter

    classes: dict[str, type[DocumentConverter]] = {
        ".docx": DocxConverter,
        ".pptx": PptxConverter,
        ".xlsx": XlsxConverter,
        ".epub": EpubConverter,
        ".csv": CsvConverter,
    }
    return classes[extension]()


def _check_archive(data: bytes, label: str, extension: str, limits: ParseLimits) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise UnparsableDocument(f"cannot read {label}: not a valid {label} (ZIP) file: {exc}") from exc
    unpacked = sum(m.file_size for m in members)
    if unpacked > limits.max_unpacked_bytes:
        raise UnparsableDocument(
            f"{label} unpacks to {unpacked} bytes; the limit is {limits.max_unpacked_bytes} "
            "(MAX_DOCUMENT_UNPACKED_BYTES)"
        )
    if extension in _PAGE_MEMBERS:
        pattern, unit = _PAGE_MEMBERS[extension]
        pages = sum(1 for m in members if pattern.fullmatch(m.filename))
        if pages > limits.max_pages:
            raise UnparsableDocument(
                f"{label} has {pages} {unit}; the limit is {limits.max_pages} (MAX_DOCUMENT_PAGES)"
            )


def office_to_markdown(data: bytes, content_type: str, limits: ParseLimits) -> str:
    from markitdown import StreamInfo

    label, extension = _NAMES[content_type]
    if extension == ".csv":
        # Our own decoding (UTF-8/UTF-16/Latin-1, binary refused), not markitdown's charset guess.
        data = decode_text(data).encode("utf-8")
    else:
        _check_archive(data, label, extension, limits)
    info = StreamInfo(extension=extension, mimetype=content_type, charset="utf-8")
    try:
        result = _converter(extension).convert(io.BytesIO(data), info)
    # Third-party converters on untrusted bytes fail in many ways (KeyError for a missing part,
    # lxml and XML errors, pandas errors, ...); each is a damaged document, reported with its cause.
    except Exception as exc:
        raise UnparsableDocument(f"cannot read {label}: {type(exc).__name__}: {exc}") from exc
    return result.markdown
