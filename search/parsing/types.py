"""The shape every parser returns: plain text plus the structure citations need.

Offsets are character offsets into ``ParsedDocument.text``. Chunks store them, so a citation
can point back at the exact page and section a passage came from.
"""

from __future__ import annotations

import bisect
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
