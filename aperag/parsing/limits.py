"""Per-document parse budgets (the upload size itself is MAX_UPLOAD_BYTES, checked before parsing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aperag.config import Settings


@dataclass(frozen=True)
class ParseLimits:
    # PDF pages, PPTX slides, XLSX sheets, EPUB spine documents.
    max_pages: int = 2000
    # Sum of the uncompressed member sizes of a ZIP-based format (DOCX, PPTX, XLSX, EPUB): a small
    # upload can unpack to gigabytes (a "zip bomb"); we look at the directory before converting.
    max_unpacked_bytes: int = 200 * 1024 * 1024
    # Extracted text; beyond this a document is rejected rather than silently truncated.
    max_chars: int = 5_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ParseLimits:
        return cls(
            max_pages=settings.max_document_pages,
            max_unpacked_bytes=settings.max_document_unpacked_bytes,
            max_chars=settings.max_document_chars,
        )
