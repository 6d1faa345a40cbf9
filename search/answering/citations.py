"""Read the ``[n]`` citations out of a generated answer and map them to their sources.

The answer is split into sentences so each claim can be checked against the passages it
cites; a citation to a number that was never in the prompt is dropped but remembered, since
it means the model made it up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.answering.prompting import SourcePassage
from search.ingestion.sentences import TERMINAL, split_sentences

_NUMBER_OR_RANGE = r"\d+(?:\s*[-\u2013]\s*\d+)?"
_NUMBER_LIST = rf"{_NUMBER_OR_RANGE}(?:\s*[,;]\s*{_NUMBER_OR_RANGE})*"
_LABEL = r"(?:passages?|sources?|docs?|documents?|refs?|references?|citations?)"
# A citation as the parser reads it: "[1]", "[1, 3]", "[2-4]", "[1; 3\u20135]".
MARKER = re.compile(rf"\[\s*{_NUMBER_LIST}\s*\]")
# Anything that looks like one, with the white space before it: also "[Passage 2]", "[^1]",
# "[Sources 1, 2]". Removing these leaves the claim (verification, metrics) and keeps a marker
# that resolves to no source from reaching the reader; "[1.5 mg]" or "[n = 12]" are content.
MARKER_LIKE = re.compile(
    rf"\s*\[\s*(?:{_LABEL}\s*)?[#^]?\s*{_NUMBER_LIST}\s*\]", re.IGNORECASE
)
_MARKER_WITH_SPACE = re.compile(rf"[ \t]*{MARKER.pattern}")
_TRAILING_TERMINAL = re.compile(rf"(?:{TERMINAL.pattern})$")
_MAX_RANGE = 50  # a wider "range" is a typo or an attack, not a citation; keep its ends only


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of an answer: its text without markers, what it cites, where it is."""

    text: str
    cited: tuple[int, ...]
    invalid: tuple[int, ...]  # cited numbers that were not among the passages
    start: int  # answer[start:end] is the sentence, markers included
    end: int


@dataclass(frozen=True)
class Citation:
    """Where a cited passage came from, down to page and character offsets in the version."""

    number: int
    chunk_id: int
    document_id: int
    version_id: int
    title: str
    page: int | None
    page_end: int | None
    heading: str
    start_offset: int
    end_offset: int


def citation_for(passage: SourcePassage) -> Citation:
    chunk = passage.chunk
    return Citation(
        number=passage.number,
        chunk_id=chunk.chunk_id,
        document_id=chunk.document_id,
        version_id=chunk.version_id,
        title=passage.title,
        page=chunk.page,
        page_end=chunk.page_end,
        heading=chunk.heading,
        start_offset=chunk.start_offset,
        end_offset=chunk.end_offset,
    )


def marker_numbers(marker: str) -> list[int]:
    """The numbers in one marker: ``[1, 3-5]`` -> 1, 3, 4, 5."""
    numbers: list[int] = []
    for part in re.split(r"[,;]", marker.strip("[] \t")):
        ends = [int(n) for n in re.split(r"[-\u2013]", part)]
        if len(ends) == 2 and 0 <= ends[1] - ends[0] <= _MAX_RANGE:
            numbers.extend(range(ends[0], ends[1] + 1))
        else:
            numbers.extend(ends)
    return numbers


def _unique(numbers: list[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(numbers))


def parse_citations(text: str, valid: set[int]) -> list[AnswerSentence]:
    """The answer's sentences with the valid and invalid passage numbers each one cites.

    A piece holding only markers (e.g. ``[2]`` on its own line) adds to the sentence before.
    """
    sentences: list[AnswerSentence] = []
    for start, end in split_sentences(text, line_breaks=True, trailing=MARKER):
        piece = text[start:end]
        numbers = [n for m in MARKER.finditer(piece) for n in marker_numbers(m.group(0))]
        clean = _MARKER_WITH_SPACE.sub("", piece).strip()
        cited = [n for n in numbers if n in valid]
        invalid = [n for n in numbers if n not in valid]
        if not clean and sentences:
            previous = sentences[-1]
            sentences[-1] = AnswerSentence(
                previous.text,
                _unique([*previous.cited, *cited]),
                _unique([*previous.invalid, *invalid]),
                previous.start,
                end,
            )
            continue
        sentences.append(AnswerSentence(clean, _unique(cited), _unique(invalid), start, end))
    return sentences


def render(sentences: list[AnswerSentence]) -> str:
    """The answer with normalised ``[n]`` markers, placed before each sentence's final stop."""
    parts = []
    for sentence in sentences:
        markers = "".join(f"[{n}]" for n in sentence.cited)
        if not markers:
            parts.append(sentence.text)
            continue
        stop = _TRAILING_TERMINAL.search(sentence.text)
        cut = stop.start() if stop else len(sentence.text)
        body, tail = sentence.text[:cut].rstrip(), sentence.text[cut:]
        parts.append(f"{body} {markers}{tail}" if body else f"{markers}{tail}")
    return " ".join(parts)
