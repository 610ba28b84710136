"""PDF text with pypdf, page budget checked before any page is read."""

from __future__ import annotations

import io

from aperag.parsing.errors import UnparsableDocument
from aperag.parsing.limits import ParseLimits


def pdf_to_text(data: bytes, limits: ParseLimits) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = len(reader.pages)
        if pages > limits.max_pages:
            raise UnparsableDocument(
                f"PDF has {pages} pages; the limit is {limits.max_pages} (MAX_DOCUMENT_PAGES)"
            )
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except UnparsableDocument:
        raise
    # pypdf raises its own errors for a damaged file, and plain ones (KeyError, RecursionError, ...)
    # from deep inside a malformed object tree.
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise UnparsableDocument(f"cannot read PDF: {type(exc).__name__}: {exc}") from exc
