"""An answer built from the passages' own sentences, for when no language model is available.

Every sentence of the answer is copied verbatim from a retrieved passage and cited with that
passage's marker, so the answer cannot state anything the passages do not say; the price is
that it cannot combine or rephrase them.

Scoring: cosine similarity between the question and each sentence (all-MiniLM-L6-v2, one
``encode`` call for the question and every sentence) plus ``LEXICAL_WEIGHT`` times the share of
the question's :func:`~search.retrieval.text_analysis.analyze` terms the sentence contains.
The bonus only breaks near-ties in favour of sentences that name what was asked; the
``min_similarity`` gate looks at the cosine alone, so word overlap never lets an off-topic
sentence through.

``min_similarity = 0.35``, measured on the three hand-written passages of
``tests/test_extractive_verification``: the sentences that answer a question scored 0.65-0.78,
the best sentence for an unrelated question ("capital of Australia", "football world cup")
0.04-0.09, other sentences of the passages 0.0-0.25 except close context (0.50-0.62, e.g. "what
metformin is" for a question on its dose). 0.35 sits well clear of both ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from search.answering.generation.base import NO_ANSWER, GenerationRequest, Passage
from search.ingestion.embedding import get_embedder
from search.ingestion.sentences import split_sentences
from search.retrieval.text_analysis import analyze

LEXICAL_WEIGHT = 0.1
# Sentences this similar to one already picked repeat it (overlapping chunks, boilerplate).
DUPLICATE_SIMILARITY = 0.92


@dataclass(frozen=True)
class _Candidate:
    passage: int
    position: int
    text: str


def passage_sentences(text: str) -> list[str]:
    """The sentences of a passage with inner line breaks folded (PDF text wraps mid-sentence)."""
    return [" ".join(text[start:end].split()) for start, end in split_sentences(text)]


def _lexical_share(question_terms: set[str], sentence: str) -> float:
    if not question_terms:
        return 0.0
    return len(question_terms & set(analyze(sentence))) / len(question_terms)


class ExtractiveGenerator:
    """Answers with the passage sentences closest to the question, each followed by ``[n]``."""

    name = "extractive"

    def __init__(self, max_sentences: int = 3, min_similarity: float = 0.35) -> None:
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        self.max_sentences = max_sentences
        self.min_similarity = min_similarity

    def select(self, question: str, passages: Iterable[Passage]) -> list[_Candidate]:
        """The chosen sentences in reading order (passage number, then position)."""
        candidates = [
            _Candidate(passage.number, position, sentence)
            for passage in sorted(passages, key=lambda p: p.number)
            for position, sentence in enumerate(passage_sentences(passage.text))
        ]
        if not candidates or not question.strip():
            return []
        vectors = get_embedder().encode([question] + [c.text for c in candidates])
        similarity = vectors[1:] @ vectors[0]
        terms = set(analyze(question))
        scores = [
            float(sim) + LEXICAL_WEIGHT * _lexical_share(terms, c.text)
            for sim, c in zip(similarity, candidates, strict=True)
        ]
        # Ties go to the earlier passage and sentence, so the choice never depends on chance.
        ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        chosen: list[int] = []
        for i in ranked:
            if len(chosen) == self.max_sentences:
                break
            if similarity[i] < self.min_similarity or any(
                float(np.dot(vectors[i + 1], vectors[j + 1])) >= DUPLICATE_SIMILARITY
                or candidates[i].text == candidates[j].text
                for j in chosen
            ):
                continue
            chosen.append(i)
        return [candidates[i] for i in sorted(chosen)]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        chosen = self.select(request.question, request.passages)
        if not chosen:
            yield NO_ANSWER
            return
        for k, candidate in enumerate(chosen):
            yield ("" if k == 0 else " ") + candidate.text
            yield f" [{candidate.passage}]"
