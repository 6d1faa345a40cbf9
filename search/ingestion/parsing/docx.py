"""Word (.docx) → text with heading levels, list items, table rows and explicit page breaks."""

from __future__ import annotations

import io
import logging
import re

import docx
from docx.document import Document
from docx.table import Table
from docx.text.paragraph import Paragraph

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


def parse_docx(data: bytes) -> ParsedDocument:
    """Only the body is read: headers, footers, footnotes and comments are left out."""
    document = _open(data)
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


def _open(data: bytes) -> Document:
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ParseError(
            "This is a legacy Word (.doc) file, which is not supported; save it as .docx."
        )
    try:
        return docx.Document(io.BytesIO(data))
    except Exception as err:  # zipfile, python-docx and lxml each raise their own types
        logger.info("python-docx cannot open the file: %r", err)
        raise ParseError(f"The file is not a valid Word (.docx) document ({err}).") from err


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
