"""Snippets: the part of a chunk that best matches the query, with matches marked."""

from __future__ import annotations

import re
from html import escape

from search.retrieval.text_analysis import analyze

_WORD = re.compile(r"\w+")


def snippet(text: str, query_terms: set[str], width: int = 240) -> str:
    """HTML: a window of about ``width`` characters with the most query-term matches.

    Words match when they analyse (lower-case, stem) to a query term, so "screening" marks
    for the query "screen". Everything else is escaped.
    """
    matches = [
        m.span() for m in _WORD.finditer(text)
        if query_terms and (tokens := analyze(m.group())) and tokens[0] in query_terms
    ]
    start = _best_window(matches, width) if matches else 0
    start = _word_start(text, start)
    end = min(len(text), start + width)
    if end < len(text):
        end = text.rfind(" ", start, end) if " " in text[start:end] else end
    parts = ["…" if start > 0 else ""]
    cursor = start
    for m_start, m_end in matches:
        if m_start < start or m_end > end:
            continue
        parts.append(escape(text[cursor:m_start]))
        parts.append(f"<mark>{escape(text[m_start:m_end])}</mark>")
        cursor = m_end
    parts.append(escape(text[cursor:end]))
    parts.append("…" if end < len(text) else "")
    return "".join(parts).strip()


def _best_window(matches: list[tuple[int, int]], width: int) -> int:
    """Start of the window holding the most matches (two pointers over match starts)."""
    best_count, best_start, left = 0, matches[0][0], 0
    for right in range(len(matches)):
        while matches[right][1] - matches[left][0] > width:
            left += 1
        if right - left + 1 > best_count:
            best_count, best_start = right - left + 1, matches[left][0]
    return max(0, best_start - width // 6)


def _word_start(text: str, position: int) -> int:
    if position <= 0:
        return 0
    space = text.rfind(" ", 0, position)
    return space + 1 if space >= 0 else 0
