"""Markdown → plain text with headings, list items, code and table rows as blocks."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from markdown_it.token import Token

from search.ingestion.parsing.text import decode_text
from search.ingestion.parsing.types import BlockKind, DocumentBuilder, ParsedDocument

# YAML front matter (``---`` / ``key: value`` lines / ``---``) is metadata, not text.
_FRONT_MATTER = re.compile(
    r"\A---[ \t]*\n[A-Za-z_][\w -]*:.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S
)
_BR = re.compile(r"<br\s*/?>", re.I)


def parse_markdown(data: bytes) -> ParsedDocument:
    """Markup is reduced to its text; the title is the first level-1 heading."""
    source = _FRONT_MATTER.sub("", decode_text(data))
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    builder = DocumentBuilder()
    title: str | None = None
    list_depth = 0
    cells: list[str] = []
    for i, token in enumerate(tokens):
        if token.type == "list_item_open":
            list_depth += 1
        elif token.type == "list_item_close":
            list_depth -= 1
        elif token.type == "heading_open":
            level = int(token.tag[1])
            heading = " ".join(_inline_text(tokens[i + 1]).split())
            builder.add(heading, "heading", level)
            if level == 1 and title is None and heading:
                title = heading
        elif token.type == "paragraph_open":
            kind: BlockKind = "list_item" if list_depth else "paragraph"
            builder.add(_inline_text(tokens[i + 1]), kind)
        elif token.type in ("fence", "code_block"):
            builder.add(token.content, "code")
        elif token.type == "tr_open":
            cells = []
        elif token.type in ("th_open", "td_open"):
            cells.append(" ".join(_inline_text(tokens[i + 1]).split()))
        elif token.type == "tr_close" and any(cells):
            builder.add(" | ".join(cells), "table_row")
        elif token.type == "html_block":
            builder.add(BeautifulSoup(token.content, "html.parser").get_text())
    return builder.build(title)


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: emphasis and link markup dropped, image alt text kept."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child) if child.children else child.content)
        elif child.type == "html_inline" and _BR.fullmatch(child.content.strip()):
            parts.append("\n")
    return "".join(parts)
