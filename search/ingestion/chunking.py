"""Cut a parsed document into token-budgeted passages for embedding, retrieval and citation.

Every chunk is an exact span of ``ParsedDocument.text`` (so a citation can quote and locate it),
fits the embedding model's token budget (so nothing is silently truncated when embedded), and
follows the document's structure: sections start new chunks, whole blocks are kept together
when they fit, and long blocks break at sentences before they break inside one.

The text is tokenized once; the token count of any span is then two binary searches, which
keeps chunking cheap next to embedding when thousands of documents are ingested.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from search.ingestion.parsing.types import Block, ParsedDocument
from search.ingestion.sentences import PARAGRAPH_BREAK, split_sentences, trim_span

MIN_MAX_TOKENS = 16
HEADING_SEPARATOR = " > "


class Tokenizer(Protocol):
    """Anything that can say where its tokens are; chunking only needs the character spans."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text``, in order, without special tokens."""
        ...


class HFTokenizer:
    """The embedding model's own tokenizer, so chunk budgets match what the model will see."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("character offsets need a fast (Rust-backed) tokenizer")
        self._tokenizer = tokenizer

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Token spans of the whole text: no truncation, and no warning about the model's limit
        (the chunker is what brings each passage under it)."""
        if not text:
            return []
        encoding = self._tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            truncation=False,
            verbose=False,
        )
        return [(int(start), int(end)) for start, end in encoding["offset_mapping"]]


def load_tokenizer(model_path: str | Path) -> HFTokenizer:
    """The tokenizer stored with a local model; loaded once per path because loading is slow."""
    return _load_tokenizer(str(Path(model_path)))


@lru_cache(maxsize=8)
def _load_tokenizer(model_path: str) -> HFTokenizer:
    from transformers import AutoTokenizer  # heavy import, only needed for the real model

    return HFTokenizer(AutoTokenizer.from_pretrained(model_path, use_fast=True))


@dataclass(frozen=True)
class ChunkPiece:
    """One passage: ``text == doc.text[start:end]``; pages are None for unpaged formats."""

    ordinal: int
    start: int
    end: int
    text: str
    page: int | None
    page_end: int | None
    heading: str
    token_count: int


# --- sentences -----------------------------------------------------------------------------


def _split_lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Code breaks at line ends: sentence punctuation means nothing there."""
    spans = []
    for match in re.finditer(r"[^\n]+", text[start:end]):
        span_start, span_end = trim_span(text, start + match.start(), start + match.end())
        if span_start < span_end:
            spans.append((span_start, span_end))
    return spans


# --- tokens ----------------------------------------------------------------------------------


class _TokenIndex:
    """Token spans of the whole text, answering "how many tokens in [start, end)" by bisection."""

    def __init__(self, text: str, offsets: Iterable[tuple[int, int]]) -> None:
        spans = sorted((s, e) for s, e in offsets if 0 <= s <= e <= len(text))
        self.text = text
        self.starts = [s for s, _ in spans]
        self.ends = []  # running maximum, so it stays sorted even if a tokenizer's spans overlap
        highest = 0
        for _, e in spans:
            highest = max(highest, e)
            self.ends.append(highest)

    def count(self, start: int, end: int) -> int:
        """Tokens touching ``[start, end)``: a span cut at token edges counts exactly."""
        return max(0, bisect.bisect_left(self.starts, end) - bisect.bisect_right(self.ends, start))

    def is_word_end(self, k: int) -> bool:
        """Whether cutting after token ``k`` keeps words whole (so re-tokenizing agrees)."""
        if k + 1 >= len(self.starts):
            return True
        end, following = self.ends[k], self.starts[k + 1]
        if following > end or end == 0:
            return True
        return not (self.text[end - 1].isalnum() and self.text[following].isalnum())


# --- sections ----------------------------------------------------------------------------------


@dataclass
class _Section:
    """A run of headings and the blocks they introduce; chunks never cross sections."""

    heading: str = ""
    headings: list[tuple[int, int]] = field(default_factory=list)
    body: list[tuple[int, int, str]] = field(default_factory=list)


def _blocks_of(doc: ParsedDocument) -> list[Block]:
    if doc.blocks:
        return sorted(doc.blocks, key=lambda block: block.start)
    # No structure from the parser: blank lines are the only paragraph signal left.
    blocks, position = [], 0
    for match in PARAGRAPH_BREAK.finditer(doc.text):
        blocks.append(Block(position, match.start()))
        position = match.end()
    blocks.append(Block(position, len(doc.text)))
    return blocks


def _sections(doc: ParsedDocument) -> list[_Section]:
    """Group blocks into sections, merging consecutive headings so none is left on its own."""
    text = doc.text
    sections = [_Section()]
    path: list[tuple[int, str]] = []
    previous_end = 0
    for block in _blocks_of(doc):
        start, end = trim_span(text, max(block.start, previous_end, 0), min(block.end, len(text)))
        if start >= end:
            continue
        previous_end = end
        current = sections[-1]
        if block.kind == "heading":
            while path and path[-1][0] >= block.level:
                path.pop()
            path.append((block.level, text[start:end]))
            if current.body:  # a heading after text opens a section; after a heading it joins
                current = _Section()
                sections.append(current)
            current.headings.append((start, end))
            current.heading = HEADING_SEPARATOR.join(title for _, title in path)
        else:
            current.body.append((start, end, block.kind))
    return [section for section in sections if section.headings or section.body]


# --- packing -----------------------------------------------------------------------------------

_BLOCK, _SENTENCE, _TOKEN = 0, 1, 2  # cut quality, best first


class _SectionPacker:
    """Greedy packing of one section into spans that fit ``max_tokens``."""

    def __init__(
        self, index: _TokenIndex, section: _Section, max_tokens: int, overlap_tokens: int
    ) -> None:
        self.index = index
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        if section.body:
            self.prefix = section.headings
            self.body = section.body
        else:  # the document ends on headings: they are all there is to index
            self.prefix = []
            self.body = [(start, end, "heading") for start, end in section.headings]
        self.body_ends = [end for _, end, _ in self.body]
        every = sorted([(s, e) for s, e in self.prefix] + [(s, e) for s, e, _ in self.body])
        self.all_starts = [s for s, _ in every]
        self.all_ends = [e for _, e in every]
        self.section_end = self.all_ends[-1]
        self._sentences: dict[int, list[tuple[int, int]]] = {}
        self._sentence_starts: list[int] | None = None

    def sentences(self, i: int) -> list[tuple[int, int]]:
        if i not in self._sentences:
            start, end, kind = self.body[i]
            splitter = _split_lines if kind == "code" else split_sentences
            self._sentences[i] = splitter(self.index.text, start, end)
        return self._sentences[i]

    def sentence_starts(self) -> list[int]:
        if self._sentence_starts is None:
            self._sentence_starts = [
                start for i in range(len(self.body)) for start, _ in self.sentences(i)
            ]
        return self._sentence_starts

    def fits(self, start: int, end: int) -> bool:
        return self.index.count(start, end) <= self.max_tokens

    def spans(self) -> list[tuple[int, int]]:
        """Chunk spans of the section, in order, each strictly further on than the last."""
        spans: list[tuple[int, int]] = []
        fresh = self.all_starts[0]  # everything before this is already in a chunk
        previous_quality = _BLOCK
        while True:
            i = bisect.bisect_right(self.all_ends, fresh)
            if i == len(self.all_ends):
                return spans
            first_new, _ = trim_span(
                self.index.text, max(fresh, self.all_starts[i]), self.all_ends[i]
            )
            overlaps = self.overlap_starts(*spans[-1]) if spans else []
            start, end, previous_quality = self.best_cut(
                overlaps, first_new, fresh, previous_quality
            )
            spans.append((start, end))
            fresh = end

    def best_cut(
        self, overlaps: Sequence[int], first_new: int, fresh: int, previous_quality: int
    ) -> tuple[int, int, int]:
        """The longest overlap whose cut is no worse than both starting afresh at ``first_new``
        and the cut that ended the previous chunk: overlap may not break a block that would fit
        whole, but once a block is broken, carrying context across the break is what counts.

        Starting earlier never lets more fit, so the fresh start's cut is the best possible.
        """
        end, quality = self.cut(first_new, fresh)
        acceptable = max(quality, previous_quality)
        for start in overlaps:
            overlap_end, overlap_quality = self.cut(start, fresh)
            if overlap_quality <= acceptable:
                return start, overlap_end, overlap_quality
        return first_new, end, quality

    def cut(self, start: int, fresh: int) -> tuple[int, int]:
        """Furthest end after ``fresh`` for a chunk from ``start``, and how clean a cut it is."""
        i = bisect.bisect_right(self.body_ends, fresh)
        end = None
        for j in range(i, len(self.body)):  # whole blocks while they fit
            if not self.fits(start, self.body_ends[j]):
                break
            end = self.body_ends[j]
        if end is not None:
            return end, _BLOCK
        if i < len(self.body):  # the next block is too long: its sentences, then its tokens
            for _, sentence_end in self.sentences(i):
                if sentence_end <= fresh:
                    continue
                if not self.fits(start, sentence_end):
                    break
                end = sentence_end
            if end is not None:
                return end, _SENTENCE
            end = self.token_cut(start, max(fresh, self.body[i][0]), self.body_ends[i])
            if end is not None:
                return end, _TOKEN
        # Only when the headings alone overflow the budget: cut them at tokens too.
        end = self.token_cut(start, fresh, self.section_end)
        if end is None:
            first = bisect.bisect_right(self.index.ends, fresh)
            has_token = first < len(self.index.ends) and self.index.ends[first] <= self.section_end
            end = self.index.ends[first] if has_token else self.section_end
        return end, _TOKEN

    def token_cut(self, start: int, low: int, high: int) -> int | None:
        """Furthest token end in ``(low, high]`` within budget from ``start``, at a word end
        if one is near (cutting inside a word changes how the piece re-tokenizes)."""
        ends = self.index.ends
        first = bisect.bisect_right(ends, low)
        last = bisect.bisect_right(ends, high) - 1
        if first > last or not self.fits(start, ends[first]):
            return None
        while first < last:
            middle = (first + last + 1) // 2
            if self.fits(start, ends[middle]):
                first = middle
            else:
                last = middle - 1
        floor = max(bisect.bisect_right(ends, low), first - self.max_tokens // 4)
        for k in range(first, floor - 1, -1):
            if self.index.is_word_end(k):
                return ends[k]
        return ends[first]

    def overlap_starts(self, previous_start: int, previous_end: int) -> list[int]:
        """Where the next chunk may begin inside the previous one, longest overlap first:
        trailing whole sentences within ``overlap_tokens``, or failing that trailing tokens."""
        if self.overlap_tokens == 0 or not self.body:
            return []
        low = max(previous_start + 1, self.body[0][0])  # never repeat the headings
        starts = self.sentence_starts()
        found = []
        k = bisect.bisect_left(starts, previous_end) - 1
        while k >= 0 and starts[k] >= low:
            if self.index.count(starts[k], previous_end) > self.overlap_tokens:
                break
            found.append(starts[k])
            k -= 1
        if found:
            return found[::-1]
        token_start = self.token_overlap_start(low, previous_end)
        return [] if token_start is None else [token_start]

    def token_overlap_start(self, low: int, previous_end: int) -> int | None:
        index = self.index
        last = bisect.bisect_left(index.starts, previous_end) - 1
        first = bisect.bisect_left(index.starts, low)
        if first > last:
            return None
        top = last
        while first < top:  # earliest token start keeping the overlap within budget
            middle = (first + top) // 2
            if index.count(index.starts[middle], previous_end) <= self.overlap_tokens:
                top = middle
            else:
                first = middle + 1
        if index.count(index.starts[first], previous_end) > self.overlap_tokens:
            return None
        word_start = next(
            (k for k in range(first, last + 1) if k == 0 or index.is_word_end(k - 1)), first
        )  # start at a word rather than inside one, unless the whole overlap is one word
        start, _ = trim_span(index.text, index.starts[word_start], previous_end)
        return start if start < previous_end else None


def _validate(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be at least {MIN_MAX_TOKENS}, got {max_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must not be negative, got {overlap_tokens}")
    if overlap_tokens >= max_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be below half of max_tokens ({max_tokens // 2}), "
            f"got {overlap_tokens}"
        )


def chunk_document(
    doc: ParsedDocument, tokenizer: Tokenizer, max_tokens: int = 200, overlap_tokens: int = 32
) -> list[ChunkPiece]:
    """Cut ``doc`` into passages of at most ``max_tokens`` tokens, in document order.

    A heading group starts a new chunk together with the first text it introduces; whole
    blocks are packed while they fit; a block that does not fit on its own starts a chunk and
    is split at sentences, a sentence that does not fit at tokens (at word ends when possible).
    Within a section each chunk begins with the previous chunk's trailing sentences (or tokens)
    of at most ``overlap_tokens``, so context carries across the cut; the overlap shrinks or
    goes rather than split a block (or sentence) that starting afresh would keep whole, unless
    the previous chunk was already cut that finely. No overlap crosses a heading.

    ``heading`` is the heading path the chunk's text sits under, including every heading of a
    leading group ("Dosing > Children" for a chunk opening with both headings).
    """
    _validate(max_tokens, overlap_tokens)
    text = doc.text
    if not text.strip():
        return []
    index = _TokenIndex(text, tokenizer.offsets(text))
    page_starts = [page.start for page in doc.pages]

    def page_at(offset: int) -> int | None:
        if not doc.pages:
            return None
        return doc.pages[max(bisect.bisect_right(page_starts, offset) - 1, 0)].number

    pieces: list[ChunkPiece] = []
    for section in _sections(doc):
        packer = _SectionPacker(index, section, max_tokens, overlap_tokens)
        for raw_start, raw_end in packer.spans():
            start, end = trim_span(text, raw_start, raw_end)
            if start >= end:
                continue
            pieces.append(
                ChunkPiece(
                    ordinal=len(pieces),
                    start=start,
                    end=end,
                    text=text[start:end],
                    page=page_at(start),
                    page_end=page_at(end - 1),
                    heading=section.heading,
                    token_count=index.count(start, end),
                )
            )
    return pieces
