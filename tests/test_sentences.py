"""The one sentence splitter, in its document mode (chunking) and its answer mode (citations)."""

from __future__ import annotations

import pytest

from search.answering.citations import MARKER, MARKER_LIKE, parse_citations
from search.answering.verification import strip_citations
from search.ingestion.sentences import split_sentences


def document(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


def answer(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text, line_breaks=True, trailing=MARKER)]


# --- rules both modes share ------------------------------------------------------------------


@pytest.mark.parametrize("split", [document, answer])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Give 2.5 mg daily. Rest.", ["Give 2.5 mg daily.", "Rest."]),  # a decimal point
        ("See Fig. 2 and Dr. Smith. Then rest.", ["See Fig. 2 and Dr. Smith.", "Then rest."]),
        ("Use NSAIDs, e.g. Ibuprofen. Rest.", ["Use NSAIDs, e.g. Ibuprofen.", "Rest."]),
        ("Approved in the U.S. Food law.", ["Approved in the U.S. Food law."]),
        ("It costs approx. five euros.", ["It costs approx. five euros."]),  # lower case goes on
        ("As J. R. Smith and Smith J. wrote. Yes.", ["As J. R. Smith and Smith J. wrote.", "Yes."]),
        ("Arabidopsis thaliana (L.) Heynh. grows.", ["Arabidopsis thaliana (L.) Heynh. grows."]),
        ("Take vitamin D. It helps.", ["Take vitamin D.", "It helps."]),  # a name, not an initial
        ("Scanned at 3 T. Data follow.", ["Scanned at 3 T.", "Data follow."]),  # a unit
        ("Tested within 24 h. Then read.", ["Tested within 24 h.", "Then read."]),
        ("See No. 5 first. No. It is not.", ["See No. 5 first.", "No.", "It is not."]),
        ("Apples, pears, etc. Then rice.", ["Apples, pears, etc.", "Then rice."]),
        ("Wait\u2026 Then go! Why? Because.", ["Wait\u2026", "Then go!", "Why?", "Because."]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("1. Take it. 2. Rest.", ["1. Take it.", "2. Rest."]),  # a list item's number
        ("Take it.\n2. Rest it.", ["Take it.", "2. Rest it."]),
        ("Born in 2019. Then more.", ["Born in 2019.", "Then more."]),  # not at a line start
    ],
)
def test_shared_rules(split, text: str, expected: list[str]) -> None:
    assert split(text) == expected


# --- document mode -------------------------------------------------------------------------------


def test_documents_break_only_at_blank_lines() -> None:
    text = "The dose is\nwrapped mid-sentence. Next\none.\n\nNew paragraph\n  \nand another"
    assert document(text) == [
        "The dose is\nwrapped mid-sentence.",
        "Next\none.",
        "New paragraph",
        "and another",
    ]


def test_documents_keep_a_marker_glued_to_the_stop_and_split_before_a_spaced_one() -> None:
    assert document("As shown.[12] Then more.") == ["As shown.[12] Then more."]
    assert document("As shown. [12] Then more.") == ["As shown.", "[12] Then more."]


def test_document_spans_cover_a_slice_and_every_character() -> None:
    text = "xx  First one. Second one.  yy"
    assert [text[s:e] for s, e in split_sentences(text, 2, 27)] == ["First one.", "Second one."]
    assert split_sentences("") == [] and split_sentences(" \n\n ") == []
    text = "A b. C d!\n\nE f? G h\n\n\n1. I j. K."
    spans = split_sentences(text)
    covered = {i for s, e in spans for i in range(s, e)}
    assert all(i in covered or text[i].isspace() for i in range(len(text)))
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))


# --- answer mode ---------------------------------------------------------------------------------


def test_answers_break_at_every_line_end() -> None:
    assert answer("First claim\nsecond claim\n\n- third") == [
        "First claim",
        "second claim",
        "- third",
    ]


def test_answers_keep_markers_after_the_stop_with_the_sentence_before() -> None:
    text = "Stated. [2] Next one.[1][3] Last [4]. Tail"
    assert answer(text) == ["Stated. [2]", "Next one.[1][3]", "Last [4].", "Tail"]


def test_a_marker_after_the_stop_confirms_an_end_unless_lower_case_follows() -> None:
    assert answer("Use approx. [1] Two.") == ["Use approx. [1]", "Two."]
    assert answer("Use e.g. [1] ibuprofen.") == ["Use e.g. [1] ibuprofen."]
    assert document("Use approx. [1] Two.") == ["Use approx. [1] Two."]


def test_parse_citations_uses_the_answer_mode() -> None:
    sentences = parse_citations("Take 24 h. [1] Dr. Smith agrees [2].\n1. Rest [3].", {1, 2, 3})
    assert [(s.text, s.cited) for s in sentences] == [
        ("Take 24 h.", (1,)),
        ("Dr. Smith agrees.", (2,)),
        ("1. Rest.", (3,)),
    ]


# --- markers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker", ["[1]", "[ 1, 3 ]", "[2-4]", "[1; 3\u20135]", "[Passage 2]", "[^1]", "[sources 1, 2]",
               "[Ref 3]", "[#4]"],
)
def test_marker_like_covers_the_strict_markers_and_labelled_ones(marker: str) -> None:
    assert MARKER_LIKE.fullmatch(f" {marker}")
    assert strip_citations(f"Rest is advised {marker}.") == "Rest is advised."


def test_strict_markers_are_numbers_only_and_content_stays() -> None:
    assert MARKER.fullmatch("[1, 2-3]") and not MARKER.fullmatch("[Passage 2]")
    assert strip_citations("Give 2 mg [1.5 mg/kg] daily [2].") == "Give 2 mg [1.5 mg/kg] daily."
