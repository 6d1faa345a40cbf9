"""HTML → the page's main text; navigation, banners and scripts are left out."""

from __future__ import annotations

import codecs
import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PageElement, PreformattedString

from search.ingestion.parsing.text import decode_text
from search.ingestion.parsing.types import BlockKind, DocumentBuilder, ParsedDocument

_DROP_TAGS = [
    "script", "style", "noscript", "template", "nav", "footer", "aside", "form", "iframe", "svg",
]  # fmt: skip
_DROP_ROLES = re.compile(r"^(navigation|banner|contentinfo)$", re.I)
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {
    "address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "header", "hr", "html", "li", "main", "ol", "p",
    "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "ul",
}  # fmt: skip
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_WHITESPACE = re.compile(r"\s+")


def parse_html(data: bytes) -> ParsedDocument:
    """Text of ``<main>``, else ``<article>``, else ``<body>``; title from ``<title>`` or h1."""
    soup = BeautifulSoup(_decode(data), "lxml")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    for element in soup.find_all(_DROP_TAGS):
        element.decompose()
    for element in soup.find_all(attrs={"role": _DROP_ROLES}):
        element.decompose()
    for element in soup.find_all("header"):
        if not element.find_parent(["main", "article"]):  # a page banner, not an article's own
            element.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    walker = _Walker()
    walker.walk(root)
    if not title and (h1 := root.find("h1")):
        title = h1.get_text(" ", strip=True)
    return walker.builder.build(title or None)


def _decode(data: bytes) -> str:
    """A BOM wins, then ``<meta charset>``, then guessing (as browsers do)."""
    match = _META_CHARSET.search(data[:4096])
    if match and not data.startswith(_BOMS):
        try:
            encoding = codecs.lookup(match.group(1).decode("ascii")).name
        except LookupError:
            encoding = ""
        if encoding in {"ascii", "latin-1", "iso8859-1"}:
            encoding = "cp1252"  # what browsers use for these labels
        if encoding and not encoding.startswith("utf-16"):
            return data.decode(encoding, errors="replace")
    return decode_text(data)


class _Walker:
    """Collects inline text until a block boundary, then emits it as one block.

    Iterative with an explicit stack: lxml keeps arbitrarily deep nesting, recursion would not.
    """

    def __init__(self) -> None:
        self.builder = DocumentBuilder()
        self._inline: list[str] = []

    def walk(self, root: Tag) -> None:
        # ``None`` marks the end of a block element, where its pending inline text is flushed.
        stack: list[tuple[PageElement | None, BlockKind]] = [
            (child, "paragraph") for child in reversed(root.contents)
        ]
        while stack:
            node, kind = stack.pop()
            if node is None:
                self.flush(kind)
            elif isinstance(node, NavigableString):
                if not isinstance(node, PreformattedString):  # comments, doctype, CDATA
                    self._inline.append(_WHITESPACE.sub(" ", str(node)))
            elif isinstance(node, Tag) and not self._leaf(node, kind):
                inner: BlockKind = "list_item" if node.name == "li" else kind
                if node.name in _BLOCKS:
                    self.flush(kind)
                    stack.append((None, inner))
                stack.extend((child, inner) for child in reversed(node.contents))
        self.flush("paragraph")

    def flush(self, kind: BlockKind) -> None:
        lines = "".join(self._inline).split("\n")
        self._inline = []
        self.builder.add("\n".join(line.strip() for line in lines), kind)

    def _leaf(self, tag: Tag, kind: BlockKind) -> bool:
        """Handle elements whose whole text is one unit; False means: walk the children."""
        name = tag.name
        if name == "br":
            self._inline.append("\n")
        elif name in _HEADINGS:
            self.flush(kind)
            self.builder.add(tag.get_text(" ", strip=True), "heading", int(name[1]))
        elif name == "pre":
            self.flush(kind)
            self.builder.add(tag.get_text(), "code")
        elif name == "tr":
            self.flush(kind)
            cells = [
                _WHITESPACE.sub(" ", cell.get_text(" ", strip=True))
                for cell in tag.find_all(["td", "th"], recursive=False)
            ]
            if any(cells):
                self.builder.add(" | ".join(cells), "table_row")
        else:
            return False
        return True
