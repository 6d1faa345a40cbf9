"""Word (.docx) → text with heading levels, list items, table rows and explicit page breaks."""

from __future__ import annotations

import io
import logging
import re
import struct
import zipfile
import zlib

import docx
from docx.document import Document
from docx.table import Table
from docx.text.paragraph import Paragraph

from search.ingestion.parsing.limits import MIB, ParseLimits
from search.ingestion.parsing.types import BlockKind, DocumentBuilder, ParsedDocument, ParseError

logger = logging.getLogger(__name__)

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
# Deleted text, field codes, drawings and text boxes (whose text Word stores twice).
_SKIP = {
    _W + "pPr", _W + "rPr", _W + "del", _W + "moveFrom", _W + "delText", _W + "instrText",
    _W + "drawing", _W + "pict", _W + "object", _MC + "AlternateContent",
}  # fmt: skip
_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.I)
_FALSE = {"0", "false", "off"}
_RATIO_CHECK_FROM = MIB  # smaller members cannot hurt, whatever they compress to
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header
_CHUNK = 1 << 16


def parse_docx(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    """Only the body is read: headers, footers, footnotes and comments are left out."""
    document = _open(data, limits or ParseLimits())
    body = document.element.body
    builder = DocumentBuilder()
    if body.xpath('.//w:br[@w:type="page"] | .//w:pageBreakBefore'):
        builder.new_page()
    title: str | None = None
    for element in _content(body):
        if element.tag == _W + "tbl":
            _add_table(builder, Table(element, document))
            continue
        paragraph = Paragraph(element, document)
        kind, level = _kind(paragraph)
        segments = _segments(element)
        for i, segment in enumerate(segments):
            if i and builder.has_pages:
                builder.new_page()
            builder.add(segment, kind, level)
        if title is None and _style_name(paragraph) == "Title":
            title = " ".join("".join(segments).split()) or None
    return builder.build(title or (document.core_properties.title or "").strip() or None)


def _open(data: bytes, limits: ParseLimits) -> Document:
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ParseError(
            "This is a legacy Word (.doc) file, which is not supported; save it as .docx."
        )
    check_zip(data, limits)
    try:
        return docx.Document(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as err:  # zipfile, python-docx and lxml each raise their own types
        if "Memory allocation failed" in str(err):  # libxml2 out of memory, as lxml says it
            raise MemoryError(str(err)) from err
        logger.info("python-docx cannot open the file: %r", err)
        raise ParseError(f"The file is not a valid Word (.docx) document ({err}).") from err


def check_zip(data: bytes, limits: ParseLimits) -> None:
    """Refuse zip bombs before python-docx unpacks anything.

    The declared sizes are checked first (total and per-member ratio). They bound what
    ``zipfile`` returns, but not what it allocates: ``ZipFile.read`` inflates a whole member in
    one call of up to 2 GiB and only then cuts it to the declared size, so a member that
    understates its size could still exhaust memory. Each deflated member is therefore inflated
    once in small chunks here, stopping as soon as it exceeds its declared size. Word writes
    only stored and deflated members; other methods (bzip2, LZMA) cannot be bounded that way.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except MemoryError:
        raise
    except Exception:  # not a zip: python-docx reports it as an invalid document
        return
    total = sum(member.file_size for member in members)
    if total > limits.zip_max_uncompressed_mb * MIB:
        raise ParseError(
            f"The Word file would unpack to {total / MIB:,.0f} MiB; the limit is "
            f"{limits.zip_max_uncompressed_mb:,} MiB (KMS_ZIP_MAX_UNCOMPRESSED_MB)."
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > _RATIO_CHECK_FROM and ratio > limits.zip_max_ratio:
            raise ParseError(
                f"The Word file's part {member.filename!r} is compressed {ratio:,.0f} to 1 "
                f"({member.file_size / MIB:,.0f} MiB); the limit is {limits.zip_max_ratio:g} "
                "to 1 (KMS_ZIP_MAX_RATIO). It looks like a zip bomb."
            )
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ParseError(
                f"The Word file's part {member.filename!r} uses an unsupported compression "
                f"method ({member.compress_type}); Word writes only stored and deflated parts."
            )
        if member.compress_type == zipfile.ZIP_DEFLATED:
            _check_inflated_size(data, member)


def _check_inflated_size(data: bytes, member: zipfile.ZipInfo) -> None:
    """Inflate ``member`` in bounded chunks, refusing it once it outgrows its declared size."""
    header = data[member.header_offset : member.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size:
        return  # a damaged archive: python-docx reports it
    fields = _LOCAL_HEADER.unpack(header)
    start = member.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    compressed = memoryview(data)[start : start + member.compress_size]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced = 0
    try:
        for offset in range(0, len(compressed), _CHUNK):
            pending: bytes | memoryview = compressed[offset : offset + _CHUNK]
            while True:  # until this input is used up and no output is held back
                produced += len(output := inflater.decompress(pending, _CHUNK))
                if produced > member.file_size:
                    raise ParseError(
                        f"The Word file's part {member.filename!r} unpacks to more than its "
                        f"declared {member.file_size:,} bytes; the file is damaged or a zip bomb."
                    )
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and len(output) < _CHUNK):
                    break
            if inflater.eof:
                return
    except zlib.error:
        return  # corrupt data: zipfile raises on it when python-docx reads the part


def _content(parent):
    """Body paragraphs and tables in order, including those inside content controls."""
    for child in parent:
        if child.tag in (_W + "p", _W + "tbl"):
            yield child
        elif child.tag == _W + "sdt":
            for content in child.iterchildren(_W + "sdtContent"):
                yield from _content(content)


def _style_name(paragraph: Paragraph) -> str:
    try:
        return paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, AttributeError, ValueError):
        return ""


def _kind(paragraph: Paragraph) -> tuple[BlockKind, int]:
    name = _style_name(paragraph)
    if name == "Title":
        return "heading", 1
    if match := _HEADING_STYLE.match(name):
        return "heading", int(match.group(1))
    outline = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")
    if outline and outline[0].isdigit() and int(outline[0]) < 9:
        return "heading", int(outline[0]) + 1
    if name.startswith("List") or paragraph._p.xpath("./w:pPr/w:numPr"):
        return "list_item", 0
    return "paragraph", 0


def _segments(paragraph) -> list[str]:
    """The paragraph's text split at page breaks (a break before it gives an empty first part)."""
    segments = [""]
    before = paragraph.xpath("./w:pPr/w:pageBreakBefore")
    if before and before[0].get(_W + "val", "1").lower() not in _FALSE:
        segments.append("")

    def visit(element) -> None:
        for child in element:
            tag = child.tag
            if tag in _SKIP:
                continue
            if tag == _W + "t":
                segments[-1] += child.text or ""
            elif tag == _W + "tab":
                segments[-1] += "\t"
            elif tag == _W + "noBreakHyphen":
                segments[-1] += "-"
            elif tag in (_W + "br", _W + "cr"):
                if child.get(_W + "type") == "page":
                    segments.append("")
                else:
                    segments[-1] += "\n"
            else:
                visit(child)

    visit(paragraph)
    return segments


def _add_table(builder: DocumentBuilder, table: Table) -> None:
    """One block per row, cells joined with `` | ``; merged cells appear once."""
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is not previous:  # a cell spanning columns is repeated once per column
                cells.append(" ".join(cell.text.split()))
            previous = cell._tc
        if any(cells):
            builder.add(" | ".join(cells), "table_row")
