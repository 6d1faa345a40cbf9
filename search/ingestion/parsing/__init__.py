"""Turn uploaded bytes into text with page and heading structure (see ``types``)."""

from __future__ import annotations

from collections.abc import Callable

from search.ingestion.parsing.detect import (
    CSV,
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    SUPPORTED_MEDIA_TYPES,
    TEXT,
    detect_media_type,
)
from search.ingestion.parsing.docx import parse_docx
from search.ingestion.parsing.html import parse_html
from search.ingestion.parsing.markdown import parse_markdown
from search.ingestion.parsing.pdf import parse_pdf
from search.ingestion.parsing.tabular import parse_csv
from search.ingestion.parsing.text import decode_text, parse_text
from search.ingestion.parsing.types import Block, Page, ParsedDocument, ParseError

__all__ = [
    "CSV",
    "DOCX",
    "HTML",
    "MARKDOWN",
    "PDF",
    "SUPPORTED_MEDIA_TYPES",
    "TEXT",
    "Block",
    "Page",
    "ParseError",
    "ParsedDocument",
    "decode_text",
    "detect_media_type",
    "parse",
]

_PARSERS: dict[str, Callable[[bytes], ParsedDocument]] = {
    PDF: parse_pdf,
    DOCX: parse_docx,
    HTML: parse_html,
    MARKDOWN: parse_markdown,
    TEXT: parse_text,
    CSV: parse_csv,
}


def parse(data: bytes, filename: str, media_type: str | None = None) -> ParsedDocument:
    """Parse an upload; every failure is a ``ParseError`` whose message can go to the user.

    ``media_type`` is trusted only when it is one of ``SUPPORTED_MEDIA_TYPES`` (parameters
    such as ``; charset=`` ignored); anything else, e.g. a browser's
    ``application/octet-stream``, is replaced by detection from the bytes and the name.
    """
    if not data:
        raise ParseError("The file is empty.")
    media_type = (media_type or "").split(";")[0].strip().lower()
    if media_type not in _PARSERS:
        media_type = detect_media_type(data, filename)
    document = _PARSERS[media_type](data)
    if not document.blocks:
        raise ParseError(f"No text could be extracted from {filename!r}.")
    return document
