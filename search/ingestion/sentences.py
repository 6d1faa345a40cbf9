"""The one sentence splitter: document text for chunking and verification, and answers.

Both uses share the rules for what ends a sentence: ``.``, ``!``, ``?`` or ``…`` (then any
closing quotes or brackets) followed by white space, except after an abbreviation ("e.g.",
"Dr.", "No. 5"), an initial ("J. Smith", but "vitamin D." ends a sentence), the number of a
list item opening a line or sentence ("1. Take ...") or before a lower-case word ("approx.
five"); a point inside a number ("2.5") has no space after it. They differ only in what the
text around the sentences looks like:

* documents (the default): lines wrap mid-sentence (PDF text), so only a blank line is a break;
* answers (``line_breaks=True``, ``trailing=`` the citation marker pattern): a model ends its
  sentences at line ends, and writes markers after the full stop ("... stated. [2] Next"),
  which belong to the sentence before.

When in doubt the splitter does not split: a missed split only makes a sentence longer (a
chunk then cuts it at tokens), while a wrong one breaks a statement apart (and an answer's
fragment without its citation is dropped as unsupported).
"""

from __future__ import annotations

import re

# Words whose trailing period rarely ends a sentence: lower case, without that period.
# "etc." is not among them: followed by a capital it mostly does end one (lower case is kept).
# fmt: off
ABBREVIATIONS = frozenset({
    "al", "approx", "ca", "cf", "co", "dept", "dr", "eq", "eqs", "est", "fig", "figs", "inc",
    "incl", "jr", "ltd", "mr", "mrs", "ms", "p", "pp", "prof", "resp", "sr", "st", "v", "viz",
    "vol", "vols", "vs",
})
# fmt: on
# Abbreviations only before a number ("No. 5", "c. 1900", "Sec. 3"), since as words or units
# they end sentences too: "No. It is not.", "40 per sec. This".
NUMBER_ABBREVIATIONS = frozenset({"c", "ch", "no", "nos", "sec"})
CLOSERS = "\"'\u201d\u2019)]"
TERMINAL = re.compile(rf"[.!?\u2026]+[{re.escape(CLOSERS)}]*")
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_LINE_BREAK = re.compile(r"\n")
_DOTTED_ABBREVIATION = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, a.m, u.s
_NAME_WORDS = frozenset({"and", "by"})  # lower-case words that often precede an initial
_OPENERS = "([{\"'\u201c\u2018"
_SPACE = re.compile(r"[ \t]*")


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` narrowed past white space at both ends."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _past_trailing(text: str, position: int, end: int, trailing: re.Pattern[str] | None) -> int:
    """Where the run of ``trailing`` matches (each after spaces or tabs) from ``position`` ends."""
    if trailing is None:
        return position
    while True:
        match = trailing.match(text, _SPACE.match(text, position, end).end(), end)
        if not match or match.end() == position:
            return position
        position = match.end()


def _is_initial(text: str, segment_start: int, word_start: int, word: str) -> bool:
    """Whether a capital letter before a point is an initial ("J. Smith", "Smith J.",
    "M. D. Anderson", "(S. Typhi)"): after a lower-case word or a number it is a name or a unit
    instead ("vitamin D.", "meiosis I.", "3 T."), which ends sentences as often as any word."""
    if len(word) != 1 or not word.isupper():
        return False
    end = word_start
    while end > segment_start and text[end - 1].isspace():
        end -= 1
    start = end
    while start > segment_start and not text[start - 1].isspace():
        start -= 1
    previous = text[start:end]
    if text[word_start] in "([{" or not previous or not previous[-1].isalnum():
        return True  # the start of a sentence, a list or a bracket
    first = next((ch for ch in previous if ch.isalnum()), "")
    return previous in _NAME_WORDS or not (first.islower() or first.isdigit())


def _ends_sentence(
    text: str, segment: tuple[int, int], sentence_start: int, punct: re.Match[str], after: int
) -> bool:
    """Whether the terminal punctuation ``punct`` closes the sentence begun at
    ``sentence_start``; ``after`` is past it and any trailing markers, ``segment`` the
    paragraph or line it is in."""
    segment_start, segment_end = segment
    end = punct.end()
    if after == end and end < segment_end and not text[end].isspace():
        return False  # "2.5", "e.g.,", or a bracket that is not a marker
    following = after
    while following < segment_end and text[following].isspace():
        following += 1
    if following < segment_end and text[following].islower():
        return False  # "e.g. the", "approx. five": a new sentence would start upper-case
    if after > end:
        return True  # the writer put a citation after the stop: the claim is complete
    if text[punct.start() : end].rstrip(CLOSERS) != ".":
        return True  # "!", "?", "...", "…" are not abbreviations
    word_start = punct.start()
    while word_start > segment_start and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start : punct.start()].lstrip(_OPENERS)
    lower = word.lower()
    if lower in ABBREVIATIONS or _DOTTED_ABBREVIATION.fullmatch(lower):
        return False
    if lower in NUMBER_ABBREVIATIONS and following < segment_end and text[following].isdigit():
        return False
    if _is_initial(text, segment_start, word_start, word):
        return False
    if not word.isdigit():
        return True
    line_start = text.rfind("\n", sentence_start, word_start) + 1
    return bool(text[max(line_start, sentence_start) : word_start].strip())  # "1. Take", "2. Rest"


def split_sentences(
    text: str,
    start: int = 0,
    end: int | None = None,
    *,
    line_breaks: bool = False,
    trailing: re.Pattern[str] | None = None,
) -> list[tuple[int, int]]:
    """Trimmed sentence spans of ``text[start:end]``, in order; every non-space character is
    in one.

    ``line_breaks``: every line end ends a sentence (answers), not only a blank line
    (documents). ``trailing``: what may follow the terminal punctuation and still belong to
    the sentence (citation markers, optionally after spaces or tabs).
    """
    end = len(text) if end is None else end
    breaks = _LINE_BREAK if line_breaks else PARAGRAPH_BREAK
    cuts: list[int] = []
    segment_start = start
    for segment_break in [*breaks.finditer(text, start, end), None]:
        segment_end = segment_break.start() if segment_break else end
        segment, sentence_start = (segment_start, segment_end), segment_start
        for punct in TERMINAL.finditer(text, segment_start, segment_end):
            after = _past_trailing(text, punct.end(), segment_end, trailing)
            if _ends_sentence(text, segment, sentence_start, punct, after):
                cuts.append(after)
                sentence_start = after
        if segment_break:
            cuts.append(segment_break.end())
            segment_start = segment_break.end()
    spans = []
    position = start
    for cut in [*cuts, end]:
        span_start, span_end = trim_span(text, position, cut)
        if span_start < span_end:
            spans.append((span_start, span_end))
        position = max(position, cut)
    return spans
