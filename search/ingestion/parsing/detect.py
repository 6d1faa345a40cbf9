"""Decide which parser gets a file: trust the bytes first, the file name second."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePath

from search.ingestion.parsing.types import ParseError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
CSV = "text/csv"

SUPPORTED_MEDIA_TYPES: tuple[str, ...] = (PDF, DOCX, HTML, MARKDOWN, TEXT, CSV)
SUPPORTED_DESCRIPTION = "PDF, Word (.docx), HTML, Markdown, plain text (.txt) and CSV"

_EXTENSIONS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".text": TEXT,
    ".csv": CSV,
}
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc/.xls containers


def is_pdf(data: bytes, *, lenient: bool = False) -> bool:
    """Does ``data`` start like a PDF? ``lenient`` allows junk before the header, as readers do."""
    if lenient:
        return b"%PDF-" in data[:1024]
    return data[:1024].lstrip()[:5] == b"%PDF-"


def is_docx(data: bytes) -> bool:
    if not data.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def detect_media_type(data: bytes, filename: str) -> str:
    """Return one of ``SUPPORTED_MEDIA_TYPES`` or raise ``ParseError`` saying what is supported."""
    if is_pdf(data):
        return PDF
    if is_docx(data):
        return DOCX
    name = PurePath(filename or "").name
    extension = PurePath(name.lower()).suffix
    media_type = _EXTENSIONS.get(extension)
    if media_type == PDF:
        if is_pdf(data, lenient=True):
            return PDF
        raise ParseError(f"{name!r} is not a valid PDF: the file does not start with %PDF-.")
    if media_type:
        return media_type
    if data.startswith(_OLE_MAGIC) or extension in {".doc", ".xls", ".ppt"}:
        raise ParseError(
            f"{name!r} is a legacy Microsoft Office file, which is not supported; "
            f"save it as .docx or PDF. Supported types: {SUPPORTED_DESCRIPTION}."
        )
    what = f"extension {extension!r}" if extension else "no extension"
    raise ParseError(
        f"Unsupported file type ({what}) for {name!r}. Supported types: {SUPPORTED_DESCRIPTION}."
    )
