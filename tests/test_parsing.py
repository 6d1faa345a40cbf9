"""Parsers: text, structure offsets and clear errors for every supported format."""

from __future__ import annotations

import io
import logging
import random
import zipfile
from collections.abc import Callable

import docx
import pytest
from docx.enum.text import WD_BREAK
from fpdf import FPDF
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from search.ingestion.parsing import (
    CSV,
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    SUPPORTED_MEDIA_TYPES,
    TEXT,
    ParsedDocument,
    ParseError,
    ParseLimits,
    decode_text,
    detect_media_type,
    parse,
)
from search.ingestion.parsing.markdown import parse_markdown
from search.ingestion.parsing.text import parse_text
from search.ingestion.sandbox import parse_untrusted
from tests.hostile_parsers import (
    docx_declaring_gib,
    docx_understating,
    docx_with_ratio,
    pdf_of_pages,
    small_docx,
)

# --- fixtures built in memory ------------------------------------------------------------------


def make_pdf(*, outline: bool = True) -> bytes:
    """Two pages; page 1 has a heading and two paragraphs, page 2 a sub-heading and one."""
    pdf = FPDF()
    pdf.set_title("Medication guide")
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    if outline:
        pdf.start_section("Dosing", level=0)
    pdf.cell(text="1. Dosing", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 6, "Adults take one tablet daily with water. " * 6, new_x="LMARGIN")
    pdf.ln(8)
    pdf.multi_cell(0, 6, "Do not exceed four tablets in one day. " * 4, new_x="LMARGIN")
    pdf.add_page()
    if outline:
        pdf.start_section("Children", level=1)
    pdf.cell(text="Children", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 6, "Children under twelve take half a tablet. " * 5, new_x="LMARGIN")
    return bytes(pdf.output())


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Staff Handbook", level=0)
    document.add_heading("Dosing", level=1)
    document.add_paragraph("Adults take one tablet.")
    document.add_heading("Children", level=2)
    document.add_paragraph("Half a tablet for children.")
    document.add_paragraph("Check the weight first", style="List Bullet")
    document.add_paragraph("Then measure the dose", style="List Number")
    table = document.add_table(rows=2, cols=3)
    for r, values in enumerate([("Age", "Dose", "Note"), ("5", "10 mg", "with food")]):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    document.add_page_break()
    document.add_heading("Storage", level=1)
    paragraph = document.add_paragraph("Keep below 25 °C.")
    paragraph.add_run().add_break(WD_BREAK.PAGE)
    paragraph.add_run("Away from children.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="windows-1252"><title>Clinic &ndash; Opening hours</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT-SECRET";</script></head>
<body>
<header><a href="/">BANNER-LOGO</a></header>
<nav><ul><li><a href="/a">NAV-LINK</a></li></ul></nav>
<div role="navigation">ROLE-NAV</div>
<main>
  <h1>Opening hours</h1>
  <p>We are open <b>Monday</b> to
     Friday.<br>Closed on holidays.</p>
  <h2>Caf\xe9 prices</h2>
  <table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td><td>2 \u20ac</td></tr></table>
  <ul><li>Bring your card</li><li>Arrive early</li></ul>
  <pre>line 1
  line 2</pre>
  <form>FORM-LOGIN</form><noscript>NOSCRIPT-TEXT</noscript>
</main>
<aside>ASIDE-AD</aside>
<footer>FOOTER-COPYRIGHT</footer>
</body></html>
""".encode("cp1252")

MARKDOWN_DOC = b"""Guide Title
===========

An intro with **bold**, *italic* and a [link](https://example.org).

Usage
-----

- first item
- second item

### Install

```bash
pip install kms
```

| Name | Value |
|------|-------|
| a    | 1     |
| b    | 2     |
"""

CSV_DOC = b"name,dose,unit\nParacetamol,500,mg\nIbuprofen,,mg\n"
TEXT_DOC = "First paragraph\nstill first.\n\nSecond paragraph.\fPage two text.\r\n\r\nMore.\n"

BUILDERS: dict[str, Callable[[], tuple[bytes, str]]] = {
    PDF: lambda: (make_pdf(), "guide.pdf"),
    DOCX: lambda: (make_docx(), "handbook.docx"),
    HTML: lambda: (HTML_PAGE, "hours.html"),
    MARKDOWN: lambda: (MARKDOWN_DOC, "guide.md"),
    TEXT: lambda: (TEXT_DOC.encode(), "notes.txt"),
    CSV: lambda: (CSV_DOC, "drugs.csv"),
}


def block_texts(document: ParsedDocument, kind: str | None = None) -> list[str]:
    return [document.text[b.start : b.end] for b in document.blocks if kind in (None, b.kind)]


def offset_of(document: ParsedDocument, needle: str) -> int:
    offset = document.text.find(needle)
    assert offset >= 0, f"{needle!r} not in {document.text!r}"
    return offset


def assert_invariants(document: ParsedDocument) -> None:
    text = document.text
    assert "\r" not in text
    assert document.blocks
    previous_end = 0
    for block in document.blocks:
        assert 0 <= block.start < block.end <= len(text)
        assert block.start >= previous_end, "blocks are sorted and do not overlap"
        assert text[block.start : block.end].strip()
        assert (1 <= block.level <= 9) if block.kind == "heading" else block.level == 0
        previous_end = block.end
    if document.pages:
        assert document.pages[0].start == 0
        assert document.pages[-1].end == len(text)
        for number, page in enumerate(document.pages, start=1):
            assert page.number == number
            assert page.start <= page.end
        for before, after in zip(document.pages, document.pages[1:], strict=False):
            assert before.end == after.start


# --- every format ------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", SUPPORTED_MEDIA_TYPES)
def test_block_invariants_for_every_format(media_type: str) -> None:
    data, filename = BUILDERS[media_type]()
    assert detect_media_type(data, filename) == media_type
    assert_invariants(parse(data, filename))
    assert_invariants(parse(data, filename, media_type=media_type))


# --- PDF ---------------------------------------------------------------------------------------


def test_pdf_pages_headings_and_paragraphs() -> None:
    document = parse(make_pdf(), "guide.pdf")
    assert [page.number for page in document.pages] == [1, 2]
    assert document.page_at(offset_of(document, "Adults take")) == 1
    assert document.page_at(offset_of(document, "Do not exceed")) == 1
    assert document.page_at(offset_of(document, "Children under twelve")) == 2
    assert document.title == "Medication guide"
    headings = [(document.text[b.start : b.end], b.level) for b in document.blocks if b.level]
    assert headings == [("1. Dosing", 1), ("Children", 2)]
    assert document.heading_path_at(offset_of(document, "half a tablet")) == [
        "1. Dosing",
        "Children",
    ]
    paragraphs = block_texts(document, "paragraph")
    assert len(paragraphs) == 3, "blank-line-free pypdf output is still split into paragraphs"
    assert paragraphs[1].startswith("Do not exceed")


def test_pdf_without_outline_has_no_headings() -> None:
    document = parse(make_pdf(outline=False), "guide.pdf")
    assert not block_texts(document, "heading")
    assert document.page_at(offset_of(document, "Children under twelve")) == 2


def test_pdf_with_only_an_owner_password_opens() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf())))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    assert "Adults take" in parse(buffer.getvalue(), "locked.pdf").text


def test_pdf_with_a_user_password_is_refused() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf())))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(ParseError, match="password-protected"):
        parse(buffer.getvalue(), "locked.pdf")


def test_pdf_without_text_asks_for_ocr() -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50, style="F")
    with pytest.raises(ParseError, match="no extractable text.*OCR is not supported"):
        parse(bytes(pdf.output()), "scan.pdf")


def test_pdf_warnings_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pypdf")  # settings may raise pypdf's level
    with pytest.raises(ParseError):
        parse(make_pdf()[:-200], "cut.pdf")
    assert any(record.name.startswith("pypdf") for record in caplog.records)


# --- DOCX --------------------------------------------------------------------------------------


def test_docx_headings_lists_tables_and_page_breaks() -> None:
    document = parse(make_docx(), "handbook.docx")
    assert document.title == "Staff Handbook"
    headings = [(document.text[b.start : b.end], b.level) for b in document.blocks if b.level]
    assert headings == [("Staff Handbook", 1), ("Dosing", 1), ("Children", 2), ("Storage", 1)]
    assert block_texts(document, "list_item") == ["Check the weight first", "Then measure the dose"]
    assert block_texts(document, "table_row") == ["Age | Dose | Note", "5 | 10 mg | with food"]
    assert document.heading_path_at(offset_of(document, "Half a tablet")) == ["Dosing", "Children"]
    assert document.heading_path_at(offset_of(document, "10 mg")) == ["Dosing", "Children"]
    assert document.heading_path_at(offset_of(document, "Keep below")) == ["Storage"]
    assert [page.number for page in document.pages] == [1, 2, 3]
    assert document.page_at(offset_of(document, "Adults take")) == 1
    assert document.page_at(offset_of(document, "Keep below")) == 2
    assert document.page_at(offset_of(document, "Away from children")) == 3


def test_docx_without_page_breaks_is_unpaged() -> None:
    document = docx.Document()
    document.add_paragraph("Just one paragraph.")
    buffer = io.BytesIO()
    document.save(buffer)
    parsed = parse(buffer.getvalue(), "short.docx")
    assert parsed.pages == []
    assert parsed.page_at(0) is None
    assert parsed.text == "Just one paragraph."


# --- HTML --------------------------------------------------------------------------------------


def test_html_keeps_main_text_only() -> None:
    document = parse(HTML_PAGE, "hours.html")
    for noise in ("SCRIPT-SECRET", "BANNER", "NAV", "FORM", "NOSCRIPT", "ASIDE", "FOOTER", "color"):
        assert noise not in document.text
    assert document.title == "Clinic – Opening hours"
    assert block_texts(document, "heading") == ["Opening hours", "Café prices"]
    assert "We are open Monday to Friday.\nClosed on holidays." in block_texts(document)
    assert block_texts(document, "table_row") == ["Item | Price", "Tea | 2 €"]
    assert block_texts(document, "list_item") == ["Bring your card", "Arrive early"]
    assert block_texts(document, "code") == ["line 1\n  line 2"]
    assert document.heading_path_at(offset_of(document, "Tea")) == [
        "Opening hours",
        "Café prices",
    ]


def test_html_title_falls_back_to_h1_and_body() -> None:
    document = parse(b"<html><body><h1>Only heading</h1>Loose <i>text</i>.</body></html>", "a.htm")
    assert document.title == "Only heading"
    assert block_texts(document) == ["Only heading", "Loose text."]


# --- Markdown ----------------------------------------------------------------------------------


def test_markdown_structure_and_plain_text() -> None:
    document = parse(MARKDOWN_DOC, "guide.md")
    assert document.title == "Guide Title"
    headings = [(document.text[b.start : b.end], b.level) for b in document.blocks if b.level]
    assert headings == [("Guide Title", 1), ("Usage", 2), ("Install", 3)]
    assert "An intro with bold, italic and a link." in block_texts(document, "paragraph")
    assert "**" not in document.text and "](" not in document.text
    assert block_texts(document, "list_item") == ["first item", "second item"]
    assert block_texts(document, "code") == ["pip install kms"]
    assert block_texts(document, "table_row") == ["Name | Value", "a | 1", "b | 2"]
    assert document.heading_path_at(offset_of(document, "pip install")) == [
        "Guide Title",
        "Usage",
        "Install",
    ]
    assert document.pages == []


def test_markdown_front_matter_is_not_text() -> None:
    document = parse(b"---\ntitle: Meta\n---\n# Real\n\nBody.\n", "a.markdown")
    assert document.text == "Real\n\nBody."


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_rows_name_their_columns() -> None:
    document = parse(CSV_DOC, "drugs.csv")
    assert block_texts(document, "table_row") == [
        "name: Paracetamol; dose: 500; unit: mg",
        "name: Ibuprofen; unit: mg",
    ]


def test_csv_dialect_is_sniffed() -> None:
    document = parse(b'city;note\nParis;"a; b"\nRome;c\n', "cities.csv")
    assert block_texts(document) == ["city: Paris; note: a; b", "city: Rome; note: c"]


# --- plain text and decoding -------------------------------------------------------------------


def test_text_paragraphs_and_form_feed_pages() -> None:
    document = parse(TEXT_DOC.encode(), "notes.txt")
    assert block_texts(document) == [
        "First paragraph\nstill first.",
        "Second paragraph.",
        "Page two text.",
        "More.",
    ]
    assert document.page_at(offset_of(document, "Second paragraph")) == 1
    assert document.page_at(offset_of(document, "More.")) == 2


def test_text_without_form_feeds_is_unpaged() -> None:
    assert parse(b"one\n\ntwo", "a.txt").pages == []


@pytest.mark.parametrize(
    "encoded",
    [
        "Caf\u00e9 cr\u00e8me \u2013 na\u00efve \u201cquotes\u201d for 5\u20ac".encode("cp1252"),
        "Gr\u00fc\u00dfe aus K\u00f6ln".encode("latin-1"),
        "Caf\u00e9 cr\u00e8me \u2013 na\u00efve".encode("utf-16"),
        "Caf\u00e9 cr\u00e8me \u2013 na\u00efve".encode("utf-8-sig"),
    ],
    ids=["cp1252", "latin-1", "utf-16", "utf-8-bom"],
)
def test_legacy_and_unicode_encodings_decode(encoded: bytes) -> None:
    document = parse(encoded, "legacy.txt")
    assert document.text in {
        "Caf\u00e9 cr\u00e8me \u2013 na\u00efve \u201cquotes\u201d for 5\u20ac",
        "Gr\u00fc\u00dfe aus K\u00f6ln",
        "Caf\u00e9 cr\u00e8me \u2013 na\u00efve",
    }


def test_cyrillic_code_page_is_not_mistaken_for_cp1252() -> None:
    text = "Привет, как дела? Это тестовый текст на русском языке."
    assert decode_text(text.encode("cp1251")) == text


# --- detection and bad input -------------------------------------------------------------------


def test_magic_bytes_beat_the_extension() -> None:
    assert detect_media_type(make_pdf(), "report.txt") == PDF
    assert detect_media_type(make_docx(), "upload.bin") == DOCX
    assert detect_media_type(b"a,b\n1,2\n", "DATA.CSV") == CSV


def test_unreliable_media_type_is_replaced_by_detection() -> None:
    document = parse(b"# Hi\n\nthere", "a.md", media_type="application/octet-stream")
    assert document.title == "Hi"


def corrupt_docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", b"\x00garbage\xff" * 50)
    return buffer.getvalue()


BAD_INPUTS = [
    pytest.param(b"", "empty.txt", "The file is empty", id="empty"),
    pytest.param(
        random.Random(1).randbytes(4096), "x.pdf", r"'x\.pdf' is not a valid PDF", id="not-pdf"
    ),
    pytest.param(make_pdf()[:900], "cut.pdf", "corrupt or truncated", id="truncated-pdf"),
    pytest.param(corrupt_docx(), "bad.docx", r"not a valid Word \(\.docx\) document", id="docx"),
    pytest.param(b"PK\x03\x04" + b"\x01" * 200, "zip.docx", "not a valid Word", id="bad-zip"),
    pytest.param(
        random.Random(2).randbytes(4096), "blob.txt", "does not look like text", id="binary-txt"
    ),
    pytest.param(
        bytes(range(1, 32)) * 20, "ctrl.md", "does not look like text", id="control-chars"
    ),
    pytest.param(b"hello", "photo.jpeg", r"Unsupported file type.*Supported types: PDF", id="ext"),
    pytest.param(b"hello", "README", r"no extension.*Supported types", id="no-ext"),
    pytest.param(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" * 8, "old.doc", "legacy", id="legacy-doc"),
    pytest.param(b"name,dose\n", "header.csv", "header row but no data rows", id="header-only"),
    pytest.param(b" \n\n\t\n", "blank.txt", "No text could be extracted", id="blank-text"),
    pytest.param(b"<script>x()</script>", "s.html", "No text could be extracted", id="no-html"),
]


@pytest.mark.parametrize(("data", "filename", "message"), BAD_INPUTS)
def test_bad_input_raises_a_helpful_parse_error(data: bytes, filename: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(data, filename)


def test_explicit_pdf_type_on_non_pdf_bytes_is_refused() -> None:
    with pytest.raises(ParseError, match="not a valid PDF"):
        parse(b"plain words", "notes.txt", media_type=PDF)


# --- limits against hostile files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: docx_declaring_gib(12), r"unpack to 12,289 MiB.*KMS_ZIP_MAX_UNCOMPRESSED_MB"),
        (docx_with_ratio, r"compressed 1,029 to 1.*KMS_ZIP_MAX_RATIO"),
        (docx_understating, r"unpacks to more than its declared"),
    ],
    ids=["declared-size", "ratio", "understated"],
)
def test_docx_zip_bombs_are_refused_before_unpacking(build, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(build(), "bomb.docx")


def test_docx_zip_limits_are_configurable() -> None:
    data = docx_with_ratio(2)
    with pytest.raises(ParseError, match="KMS_ZIP_MAX_RATIO"):
        parse(data, "zeros.docx")
    relaxed = ParseLimits(zip_max_ratio=5000)
    assert parse(data, "zeros.docx", limits=relaxed).text == "A harmless paragraph."
    with pytest.raises(ParseError, match=r"unpack to \d MiB; the limit is 1 MiB"):
        parse(data, "zeros.docx", limits=ParseLimits(zip_max_ratio=5000, zip_max_uncompressed_mb=1))


def test_docx_member_compressed_with_bzip2_is_refused() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(small_docx())) as source,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as target,
    ):
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    with pytest.raises(ParseError, match=r"unsupported compression method \(12\)"):
        parse(buffer.getvalue(), "bz.docx")


@pytest.mark.parametrize(
    ("declared", "message"),
    [(None, r"The PDF has 50,000 pages"), (1, r"The PDF has more than 5,000 pages")],
    ids=["honest-count", "lying-count"],
)
def test_pdf_page_cap(declared: int | None, message: str) -> None:
    with pytest.raises(ParseError, match=message + r"; the limit is 5,000 \(KMS_PDF_MAX_PAGES\)"):
        parse(pdf_of_pages(50_000, declared=declared), "pages.pdf")


def test_pdf_page_cap_counts_real_pages() -> None:
    limits = ParseLimits(pdf_max_pages=1)
    with pytest.raises(ParseError, match=r"The PDF has 2 pages; the limit is 1"):
        parse(make_pdf(), "guide.pdf", limits=limits)
    assert len(parse(make_pdf(), "guide.pdf", limits=ParseLimits(pdf_max_pages=2)).pages) == 2


def test_pdf_text_limit_stops_at_the_page_that_passes_it() -> None:
    with pytest.raises(ParseError, match=r"more than 500 characters; the limit is 500"):
        parse(make_pdf(), "guide.pdf", limits=ParseLimits(max_text_chars=500))


def test_text_limit_applies_to_every_format() -> None:
    with pytest.raises(ParseError, match=r"has 11 characters; the limit is 10 \(KMS_MAX_TEXT"):
        parse(b"hello world", "a.txt", limits=ParseLimits(max_text_chars=10))
    assert parse(b"hello worl", "a.txt", limits=ParseLimits(max_text_chars=10)).text


# --- the same results through the sandbox ------------------------------------------------------


@pytest.mark.parametrize("media_type", SUPPORTED_MEDIA_TYPES)
def test_sandbox_parses_every_format_exactly_as_parse_does(media_type: str) -> None:
    data, filename = BUILDERS[media_type]()
    for claimed in (None, media_type, "application/octet-stream"):
        document, used = parse_untrusted(data, filename, claimed, limits=ParseLimits())
        assert used == media_type
        assert document == parse(data, filename, claimed)


@pytest.mark.parametrize(("data", "filename", "message"), BAD_INPUTS)
def test_sandbox_gives_the_same_errors(data: bytes, filename: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_untrusted(data, filename, limits=ParseLimits())


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_text_and_markdown_invariants_hold_for_any_text(text: str) -> None:
    data = text.encode("utf-8")
    for parser in (parse_text, parse_markdown):
        try:
            document = parser(data)
        except ParseError:
            continue  # control-character-heavy input is refused, which is fine
        if document.blocks:
            assert_invariants(document)
