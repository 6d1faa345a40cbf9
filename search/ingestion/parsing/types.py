"""The shape every parser returns: plain text plus the structure citations need.

Offsets are character offsets into ``ParsedDocument.text``. Chunks store them, so a citation
can point back at the exact page and section a passage came from.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Literal

BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "code"]


class ParseError(ValueError):
    """The file cannot be turned into text; ``str(err)`` is shown to the user as the reason."""


@dataclass(frozen=True)
class Block:
    """A structural unit of the text (a paragraph, a heading, a table row): ``text[start:end]``."""

    start: int
    end: int
    kind: BlockKind = "paragraph"
    level: int = 0  # heading level (1 = top) for headings, 0 otherwise


@dataclass(frozen=True)
class Page:
    """A page of a paged format (PDF); ``number`` is 1-based as people cite pages."""

    number: int
    start: int
    end: int


@dataclass
class ParsedDocument:
    text: str
    blocks: list[Block]
    pages: list[Page] = field(default_factory=list)
    title: str | None = None

    def page_at(self, offset: int) -> int | None:
        """The page holding ``offset``, or None for unpaged formats."""
        if not self.pages:
            return None
        i = bisect.bisect_right([p.start for p in self.pages], offset) - 1
        return self.pages[max(i, 0)].number

    def heading_path_at(self, offset: int) -> list[str]:
        """Headings in force at ``offset``, outermost first (e.g. ``["Dosing", "Children"]``)."""
        path: list[tuple[int, str]] = []
        for block in self.blocks:
            if block.start > offset:
                break
            if block.kind == "heading":
                while path and path[-1][0] >= block.level:
                    path.pop()
                path.append((block.level, self.text[block.start : block.end].strip()))
        return [heading for _, heading in path]


_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and ``\\r`` become ``\\n`` and NULs go, so offsets mean the same everywhere."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def split_paragraphs(text: str) -> list[str]:
    """Split on blank lines (lines holding at most spaces and tabs)."""
    return [part for part in _BLANK_LINES.split(normalise_newlines(text)) if part.strip()]


class DocumentBuilder:
    """Appends blocks to one text and records their spans, so parsers never count offsets.

    Blocks are separated by a blank line, consecutive table rows by a single newline.
    Pages exist only once ``new_page`` is called; they are contiguous and cover the text.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self._last_kind: str | None = None
        self.blocks: list[Block] = []
        self._page_starts: list[int] = []

    def add(self, text: str, kind: BlockKind = "paragraph", level: int = 0) -> Block | None:
        """Append one block; blank text is skipped (every block must have content)."""
        text = _clean(text, keep_indent=kind == "code")
        if not text:
            return None
        if self._length:
            tight = kind == "table_row" and self._last_kind == "table_row"
            self._append("\n" if tight else "\n\n")
        start = self._length
        self._append(text)
        block = Block(start, self._length, kind, max(level, 1) if kind == "heading" else 0)
        self.blocks.append(block)
        self._last_kind = kind
        return block

    def new_page(self) -> None:
        """Start the next page at the current end of the text (page 1 must be started too)."""
        self._page_starts.append(self._length)
        self._last_kind = None

    @property
    def has_pages(self) -> bool:
        return bool(self._page_starts)

    @property
    def length(self) -> int:
        """Characters of text so far (lets a parser stop early at a size limit)."""
        return self._length

    def build(self, title: str | None = None) -> ParsedDocument:
        text = "".join(self._parts)
        starts = self._page_starts
        ends = [*starts[1:], len(text)] if starts else []
        pages = [
            Page(number, start, end)
            for number, (start, end) in enumerate(zip(starts, ends, strict=True), start=1)
        ]
        title = " ".join(title.split()) if title else None
        return ParsedDocument(text=text, blocks=list(self.blocks), pages=pages, title=title or None)

    def _append(self, piece: str) -> None:
        self._parts.append(piece)
        self._length += len(piece)


def _clean(text: str, *, keep_indent: bool) -> str:
    lines = [line.rstrip() for line in normalise_newlines(text).split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    cleaned = "\n".join(lines)
    return cleaned if keep_indent else cleaned.strip()
