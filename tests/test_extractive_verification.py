"""The extractive answer backend and citation verification, on hand-written passages.

These tests load the real embedding model (about 4 s once per session), so they are not
marked slow.
"""

from __future__ import annotations

import re

import pytest

from search.answering.generation.base import GenerationRequest, Passage, generate
from search.answering.generation.extractive import NO_ANSWER, ExtractiveGenerator, passage_sentences
from search.answering.verification import (
    EMBEDDING_THRESHOLD,
    LEXICAL_THRESHOLD,
    embedding_support,
    lexical_support,
    verify,
)

PASSAGES = {
    1: "The hospital cafeteria is open from 7 a.m. to 7 p.m. on weekdays. Visitors can pay by "
    "card or cash. Parking for visitors is in the north garage.",
    2: "Metformin is the first-line drug for type 2 diabetes. The usual starting dose is 500 mg "
    "once or twice daily with meals, e.g. with breakfast and dinner. Common side effects "
    "include nausea and diarrhoea.",
    3: "Influenza vaccines are recommended every year for adults over 65. The vaccine takes "
    "about two weeks to become effective. Mild soreness at the injection site is common.",
}
DOSE = (
    "The usual starting dose is 500 mg once or twice daily with meals, "
    "e.g. with breakfast and dinner."
)
THRESHOLDS = {"embedding": EMBEDDING_THRESHOLD, "lexical": LEXICAL_THRESHOLD}


def _request(question: str, passages: dict[int, str] = PASSAGES) -> GenerationRequest:
    return GenerationRequest(
        messages=(),
        question=question,
        passages=tuple(Passage(number, text) for number, text in passages.items()),
    )


def _cited_sentences(answer: str) -> list[tuple[str, int]]:
    return [(s.strip(), int(n)) for s, n in re.findall(r"(.+?) \[(\d+)\]", answer)]


def test_sentence_splitter_keeps_abbreviations_and_decimals() -> None:
    text = "Take 2.5 mg daily, e.g. with food. Dr. Smith agrees!\nIt\nhelps."
    assert passage_sentences(text) == [
        "Take 2.5 mg daily, e.g. with food.",
        "Dr. Smith agrees!",
        "It helps.",
    ]


@pytest.mark.parametrize(
    ("question", "expected", "number"),
    [
        ("What is the starting dose of metformin?", DOSE, 2),
        (
            "How long does the flu vaccine take to work?",
            "The vaccine takes about two weeks to become effective.",
            3,
        ),
        (
            "When is the cafeteria open?",
            "The hospital cafeteria is open from 7 a.m. to 7 p.m. on weekdays.",
            1,
        ),
    ],
)
def test_extractive_answers_with_the_right_sentence_and_citation(
    question: str, expected: str, number: int
) -> None:
    answer = generate(ExtractiveGenerator(), _request(question))
    cited = _cited_sentences(answer)
    assert (expected, number) in cited
    assert {n for _, n in cited} == {number}  # nothing from the unrelated passages
    assert answer.endswith(f" [{number}]")


def test_extractive_streams_in_passage_order_with_a_marker_after_each_sentence() -> None:
    pieces = list(ExtractiveGenerator().stream(_request("What is the starting dose of metformin?")))
    assert pieces[1::2] == [" [2]"] * (len(pieces) // 2)
    answer = "".join(pieces)
    sentences = [s for s, _ in _cited_sentences(answer)]
    assert sentences == sorted(sentences, key=PASSAGES[2].index)
    assert len(sentences) <= 3


def test_max_sentences_limits_the_answer() -> None:
    answer = generate(
        ExtractiveGenerator(max_sentences=1), _request("What is the starting dose of metformin?")
    )
    assert answer == f"{DOSE} [2]"


@pytest.mark.parametrize(
    "question", ["What is the capital of Australia?", "Who won the football world cup in 2018?"]
)
def test_unrelated_question_gets_the_no_answer_sentence(question: str) -> None:
    assert generate(ExtractiveGenerator(), _request(question)) == NO_ANSWER


def test_no_passages_gets_the_no_answer_sentence() -> None:
    assert generate(ExtractiveGenerator(), _request("What is metformin?", {})) == NO_ANSWER


def test_duplicate_sentences_are_given_once() -> None:
    passages = {1: PASSAGES[2], 2: PASSAGES[2]}
    answer = generate(ExtractiveGenerator(), _request("What is the starting dose?", passages))
    assert answer.count(DOSE) == 1
    assert f"{DOSE} [1]" in answer  # the earlier passage wins the tie


def test_extractive_is_deterministic() -> None:
    generator = ExtractiveGenerator()
    request = _request("How long does the flu vaccine take to work?")
    assert len({generate(generator, request) for _ in range(3)}) == 1


@pytest.mark.parametrize("method", ["embedding", "lexical"])
def test_copied_sentence_is_supported_only_by_its_own_passage(method: str) -> None:
    right, wrong, uncited = verify(
        [(DOSE, (2,)), (DOSE, (1,)), (DOSE, ())], PASSAGES, method, THRESHOLDS[method]
    )
    assert right.supported and right.best_passage == 2
    assert right.score == pytest.approx(1.0, abs=1e-3)
    assert not wrong.supported and wrong.best_passage == 1
    assert wrong.score < 0.3
    assert not uncited.supported and uncited.cited == ()
    assert uncited.best_passage == 2


def test_citation_markers_inside_the_sentence_are_ignored() -> None:
    (check,) = verify([(f"{DOSE} [2]", (2,))], PASSAGES, "lexical", LEXICAL_THRESHOLD)
    assert check.supported and check.score == 1.0


def test_citing_a_missing_passage_is_unsupported() -> None:
    (check,) = verify([(DOSE, (9,))], PASSAGES, "embedding", EMBEDDING_THRESHOLD)
    assert not check.supported and check.best_passage is None and check.score == 0.0


def test_paraphrase_is_supported_by_embedding_but_not_by_lexical() -> None:
    paraphrase = (
        "Treatment with metformin typically begins at 500 mg, taken once or twice a day "
        "alongside food."
    )  # measured: 0.67 by embedding, 0.42 by lexical
    (by_embedding,) = verify([(paraphrase, (2,))], PASSAGES, "embedding", EMBEDDING_THRESHOLD)
    (by_lexical,) = verify([(paraphrase, (2,))], PASSAGES, "lexical", LEXICAL_THRESHOLD)
    assert by_embedding.supported and by_embedding.best_passage == 2
    assert not by_lexical.supported


def test_single_sentence_scores_match_verify() -> None:
    (check,) = verify([(DOSE, (1, 2))], PASSAGES, "embedding", EMBEDDING_THRESHOLD)
    assert check.best_passage == 2
    assert embedding_support(DOSE, [PASSAGES[1], PASSAGES[2]]) == pytest.approx(check.score, 1e-3)
    assert lexical_support(DOSE, [PASSAGES[1]]) == 0.0
