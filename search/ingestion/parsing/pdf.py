"""PDF → text per page with pypdf; outline (bookmark) titles become headings."""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from itertools import islice

from pypdf import PasswordType, PdfReader, apply_configuration, get_configuration
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError
from pypdf.generic import Destination, EncodedStreamObject, StreamObject

from search.ingestion.parsing.detect import is_pdf
from search.ingestion.parsing.limits import ParseLimits, text_too_long
from search.ingestion.parsing.types import (
    BlockKind,
    DocumentBuilder,
    ParsedDocument,
    ParseError,
    split_paragraphs,
)

logger = logging.getLogger(__name__)
# pypdf logs every recoverable defect as a warning; without a handler Python prints those to
# stderr. A NullHandler keeps them in the logging tree (root handlers still see them) only.
logging.getLogger("pypdf").addHandler(logging.NullHandler())

_PASSWORD = "The PDF is password-protected; upload a copy without a password."
_SENTENCE_END = re.compile(r"[.!?:;][\"'”’)\]]*$")
_BULLET = re.compile(r"^(?:[•▪◦‣●■\-–*]\s|\(?\d{1,3}[.)]\s|\(?[a-z][.)]\s)")
_SECTION_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z]\.|[IVXLC]+\.)\s+")
_PYPDF_TREE_ENTRIES = get_configuration().page_tree_maximum_entries  # pypdf's own bound


@dataclass
class _Heading:
    title: str
    level: int
    page: int | None  # 0-based page index, None when the destination cannot be resolved


def parse_pdf(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    """Pages become ``pages``; paragraphs and outline headings become blocks.

    Pages are read one at a time and the streams pypdf parsed for a page are released before
    the next (see ``_release``), so memory follows the text, not the file's content streams.
    """
    limits = limits or ParseLimits()
    if not is_pdf(data, lenient=True):
        raise ParseError("The file is not a valid PDF: it does not start with %PDF-.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Bound the page tree walk itself, so a lying /Count cannot make it visit millions.
        with apply_configuration(
            page_tree_maximum_entries=min(2 * limits.pdf_max_pages + 1000, _PYPDF_TREE_ENTRIES)
        ):
            reader = _open(data, limits)
        headings = _outline(reader)
        metadata_title = _metadata_title(reader)
        builder = DocumentBuilder()
        first_heading: str | None = None
        has_text = False
        for index in range(len(reader.pages)):
            text = _page_text(reader, index)
            has_text = has_text or bool(text.strip())
            builder.new_page()
            page_headings = [h for h in headings if h.page in (index, None)]
            for line_group, heading in _blocks(text, page_headings):
                if heading:
                    headings.remove(heading)  # each outline entry marks one place only
                    builder.add(line_group, "heading", heading.level)
                    first_heading = first_heading or line_group
                else:
                    kind: BlockKind = "list_item" if _BULLET.match(line_group) else "paragraph"
                    builder.add(line_group, kind)
            if builder.length > limits.max_text_chars:
                raise ParseError(text_too_long(limits.max_text_chars, limits, at_least=True))
    for warning in caught:
        logger.debug("pypdf: %s", warning.message)
    if not has_text:
        raise ParseError("The PDF has no extractable text (a scanned image? OCR is not supported).")
    return builder.build(metadata_title or first_heading)


def _open(data: bytes, limits: ParseLimits) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ParseError(_PASSWORD)
        _check_declared_pages(reader, limits)
        page_count = len(reader.pages)
    except (ParseError, MemoryError):
        raise
    except DependencyError as err:
        raise ParseError(
            "The PDF is encrypted with a method this server cannot decrypt "
            f"({err}); upload a copy without encryption."
        ) from err
    except FileNotDecryptedError as err:
        raise ParseError(_PASSWORD) from err
    except LimitReachedError as err:
        if "page tree entry limit" not in str(err):
            raise ParseError(f"The PDF is too complex to read ({err}).") from err
        raise ParseError(
            f"The PDF has more than {limits.pdf_max_pages:,} pages; the limit is "
            f"{limits.pdf_max_pages:,} (KMS_PDF_MAX_PAGES)."
        ) from err
    except Exception as err:  # pypdf raises many types for damaged files
        logger.info("pypdf cannot open the PDF: %r", err)
        raise ParseError(f"The PDF is corrupt or truncated and cannot be read ({err}).") from err
    if not page_count:
        raise ParseError("The PDF has no pages (it may be truncated or corrupt).")
    _check_page_count(page_count, limits)
    return reader


def _check_declared_pages(reader: PdfReader, limits: ParseLimits) -> None:
    """Refuse on the page tree's own /Count before building a page object for every page."""
    try:
        declared = int(reader.root_object["/Pages"].get_object()["/Count"])
    except MemoryError:
        raise
    except Exception:  # a missing or damaged /Count: the walk of the tree decides
        return
    _check_page_count(declared, limits)


def _check_page_count(count: int, limits: ParseLimits) -> None:
    if count > limits.pdf_max_pages:
        raise ParseError(
            f"The PDF has {count:,} pages; the limit is {limits.pdf_max_pages:,} "
            "(KMS_PDF_MAX_PAGES)."
        )


def _page_text(reader: PdfReader, index: int) -> str:
    """One damaged page should not lose the whole document, so its failure is only logged."""
    cached = len(reader.resolved_objects)
    try:
        return reader.pages[index].extract_text() or ""
    except MemoryError:
        raise
    except Exception as err:
        logger.warning("Cannot extract text from PDF page %d: %r", index + 1, err)
        return ""
    finally:
        _release(reader, cached)


def _release(reader: PdfReader, cached: int) -> None:
    """Drop the streams (content, forms, fonts) pypdf cached while reading the last page.

    ``resolved_objects`` keeps every object pypdf parsed, and a stream keeps its decoded
    bytes (``decoded_self``) too, so without this a long PDF holds all its content streams
    decompressed at once. Dicts (pages, resources) stay cached: they are small and shared.
    Objects are appended in order, so the ones added since ``cached`` entries are the last.
    A dropped stream is simply read again from the file if another page needs it.
    """
    objects = reader.resolved_objects
    added = list(islice(reversed(objects), max(len(objects) - cached, 0)))
    for key in added:
        obj = objects[key]
        if isinstance(obj, StreamObject):
            del objects[key]
            if isinstance(obj, EncodedStreamObject):
                obj.decoded_self = None


def _outline(reader: PdfReader) -> list[_Heading]:
    headings: list[_Heading] = []

    def visit(items: list, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, level + 1)
            elif isinstance(item, Destination) and (item.title or "").strip():
                headings.append(_Heading(item.title, min(level, 9), _page_number(reader, item)))

    try:
        visit(reader.outline, 1)
    except MemoryError:
        raise
    except Exception as err:  # headings are optional; the text still counts
        logger.info("Ignoring the unreadable PDF outline: %r", err)
    return headings


def _page_number(reader: PdfReader, destination: Destination) -> int | None:
    try:
        page = reader.get_destination_page_number(destination)
    except MemoryError:
        raise
    except Exception:  # a broken bookmark only loses its page
        return None
    return page if page >= 0 else None


def _metadata_title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        return (metadata.title or "").strip() or None if metadata else None
    except MemoryError:
        raise
    except Exception:  # a damaged info dictionary only loses the title
        return None


def _blocks(text: str, headings: list[_Heading]) -> list[tuple[str, _Heading | None]]:
    """Paragraphs of one page; lines that match an outline title stand alone as headings."""
    result: list[tuple[str, _Heading | None]] = []
    for paragraph in split_paragraphs(text):
        lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
        group: list[str] = []
        width = max(len(line) for line in lines)
        for i, line in enumerate(lines):
            heading = _match_heading(line, headings)
            if heading:
                if group:
                    result.append(("\n".join(group), None))
                    group = []
                result.append((line, heading))
                continue
            group.append(line)
            following = lines[i + 1] if i + 1 < len(lines) else None
            if following is None or _ends_paragraph(line, following, width):
                result.append(("\n".join(group), None))
                group = []
    return result


def _ends_paragraph(line: str, following: str, width: int) -> bool:
    """pypdf rarely emits blank lines, so guess breaks: the next word would have fit here."""
    if _BULLET.match(following):
        return True
    room_used = len(line) + 1 + len(following.split()[0])
    return room_used <= 0.7 * width or (room_used <= width and bool(_SENTENCE_END.search(line)))


def _match_heading(line: str, headings: list[_Heading]) -> _Heading | None:
    key = _key(line)
    unnumbered = _key(_SECTION_NUMBER.sub("", line))
    for heading in headings:
        if _key(heading.title) in (key, unnumbered):
            return heading
    return None


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()
