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
from search.ingestion.parsing.limits import ParseLimits, text_too_long
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
    "ParseLimits",
    "ParsedDocument",
    "decode_text",
    "check_document",
    "detect_media_type",
    "parse",
    "parse_with_media_type",
]

_PARSERS: dict[str, Callable[[bytes, ParseLimits], ParsedDocument]] = {
    PDF: parse_pdf,
    DOCX: parse_docx,
    HTML: lambda data, _limits: parse_html(data),
    MARKDOWN: lambda data, _limits: parse_markdown(data),
    TEXT: lambda data, _limits: parse_text(data),
    CSV: lambda data, _limits: parse_csv(data),
}


def parse(
    data: bytes, filename: str, media_type: str | None = None, limits: ParseLimits | None = None
) -> ParsedDocument:
    """Parse an upload; every failure is a ``ParseError`` whose message can go to the user.

    ``media_type`` is trusted only when it is one of ``SUPPORTED_MEDIA_TYPES`` (parameters
    such as ``; charset=`` ignored); anything else, e.g. a browser's
    ``application/octet-stream``, is replaced by detection from the bytes and the name.
    This runs in the calling process: untrusted files go through ``search.ingestion.sandbox``.
    """
    return parse_with_media_type(data, filename, media_type, limits)[0]


def parse_with_media_type(
    data: bytes, filename: str, media_type: str | None = None, limits: ParseLimits | None = None
) -> tuple[ParsedDocument, str]:
    """``parse`` that also returns the media type it parsed the file as."""
    limits = limits or ParseLimits()
    if not data:
        raise ParseError("The file is empty.")
    media_type = normalise_media_type(media_type)
    if media_type not in _PARSERS:
        media_type = detect_media_type(data, filename)
    document = _PARSERS[media_type](data, limits)
    return check_document(document, filename, limits), media_type


def normalise_media_type(media_type: str | None) -> str:
    return (media_type or "").split(";")[0].strip().lower()


def check_document(document: ParsedDocument, filename: str, limits: ParseLimits) -> ParsedDocument:
    """The checks every parser's result must pass, whichever parser produced it."""
    if not document.blocks:
        raise ParseError(f"No text could be extracted from {filename!r}.")
    if len(document.text) > limits.max_text_chars:
        raise ParseError(text_too_long(len(document.text), limits))
    return document
