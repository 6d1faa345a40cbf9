"""Decoding of text files of unknown encoding, and the plain-text parser."""

from __future__ import annotations

import codecs
import unicodedata

from charset_normalizer import from_bytes

from search.ingestion.parsing.types import (
    DocumentBuilder,
    ParsedDocument,
    ParseError,
    split_paragraphs,
)

_NOT_TEXT = "The file does not look like text"
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ODD = {"Cc", "Cs", "Co", "Cn"}  # control, surrogate, private-use, unassigned; not Cf
# Characters a cp1252 decode of Western European text plausibly contains besides letters.
_WESTERN_SYMBOLS = set("€‚„…†‡•–—‘’“”«»‹›¡¿£¥§©®°±·×÷¢¤¦¨ª¬¯²³´µ¶¸¹º¼½¾™ˆ˜")


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding; ``ParseError`` when they are not text at all.

    UTF-8 and BOM-marked Unicode are certain. Otherwise charset-normalizer guesses, but on short
    Western European text it often prefers a wrong code page (cp1250, cp437) where cp1252 also
    fits, so cp1252 wins whenever it reads the bytes as cleanly (by chaos) as the best guess, and is
    tried when the guess recognises no language.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding))
            except UnicodeDecodeError:
                raise ParseError(f"{_NOT_TEXT}: it is not valid {encoding}.") from None
    if b"\x00" in data:
        raise ParseError(f"{_NOT_TEXT}: it contains binary data (NUL bytes).")
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    return _checked(_guess(data))


def _guess(data: bytes) -> str:
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise ParseError(f"{_NOT_TEXT}: no text encoding fits its bytes.")
    tied = [m.encoding for m in matches if m.chaos <= best.chaos]
    if "cp1252" in tied:
        return data.decode("cp1252")
    if not best.coherence and (western := _as_western(data)) is not None:
        return western
    return str(best)


def _as_western(data: bytes) -> str | None:
    """The cp1252 reading of ``data`` if it looks like a Western European language."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    letters = sum(ch.isalpha() for ch in text)
    foreign = [ch for ch in text if ord(ch) > 127]
    if not letters or sum(ch.isalpha() for ch in foreign) > 0.25 * letters:
        return None
    plausible = all(
        ch in _WESTERN_SYMBOLS or (ch.isalpha() and "LATIN" in unicodedata.name(ch, ""))
        for ch in foreign
    )
    return text if plausible else None


def _checked(text: str) -> str:
    """Reject decodes that are mostly control characters: those are binary files."""
    if text:
        odd = sum(
            1
            for ch in text
            if ch == "\ufffd" or (unicodedata.category(ch) in _ODD and ch not in "\t\n\r\f\v")
        )
        if odd > max(2, len(text) // 50):
            raise ParseError(f"{_NOT_TEXT}: it contains too many control characters.")
    return text.lstrip("\ufeff")


def parse_text(data: bytes) -> ParsedDocument:
    """Paragraphs are separated by blank lines; form feeds (``\\f``) separate pages."""
    text = decode_text(data)
    builder = DocumentBuilder()
    pages = text.split("\f")
    for page in pages:
        if len(pages) > 1:
            builder.new_page()
        for paragraph in split_paragraphs(page):
            builder.add(paragraph)
    return builder.build()
