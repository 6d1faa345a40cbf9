"""Turn uploaded bytes into text with page and heading structure (see ``types``)."""

from search.parsing.types import Block, Page, ParsedDocument, ParseError

__all__ = ["Block", "Page", "ParseError", "ParsedDocument"]
