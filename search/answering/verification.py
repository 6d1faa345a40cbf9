"""Check that each answer sentence is backed by the passages it cites.

A generated answer can cite ``[n]`` for a claim passage n does not make; these checks flag
that without another language model. Two scores, higher is better, 1.0 for a copied sentence:

* ``"embedding"``: the highest cosine similarity (all-MiniLM-L6-v2) between the answer sentence
  and any sentence of a cited passage. It accepts paraphrases.
* ``"lexical"``: the share of the sentence's :func:`~search.retrieval.text_analysis.analyze`
  terms (stemmed, without stop words) that occur in the cited passages, i.e. token recall. It
  needs no model and is easy to explain, but misses paraphrases.

Thresholds (``EMBEDDING_THRESHOLD``, ``LEXICAL_THRESHOLD``), measured on the three passages of
``tests/test_extractive_verification`` with 7 faithful paraphrases and 8 wrong claims on the
same topics, each citing the passage it is about:

* a sentence copied from its passage scores 1.0 with both methods; citing an unrelated passage
  instead, 0.19 (embedding) and 0.0 (lexical);
* embedding: paraphrases 0.63-0.95, wrong claims 0.40-0.78. 0.6 accepts every paraphrase and
  rejects citations of the wrong passage, but no threshold rejects on-topic contradictions
  ("The cafeteria is closed on weekdays." scores 0.78): the score says "this passage is about
  that", not "this passage entails that";
* lexical: close paraphrases 0.71-0.89, free ones 0.17-0.20, wrong claims 0.20-0.86. 0.7 keeps
  the close paraphrases and rejects all wrong claims but one that swaps a single word
  ("Insulin is the first-line drug ..."); at 0.6 three wrong claims passed.

* ``"model"``: the trained support verifier (:mod:`search.answering.support_model`) reads
  the sentence with each window of three sentences of a cited passage, as it was trained,
  and gives the probability that the window supports it; it also says when a passage
  **contradicts** the sentence, which neither score can. ``MODEL_THRESHOLD`` applies to that
  probability. Only a single passage can support a sentence (the model reads one at a time),
  and a sentence that is one of the passage's own sentences is supported by it without
  asking (:func:`model_scores`): on PubMedQA the verifier called 29 sentences the
  extractive backend had copied from their passage "contradicted".

All methods also require every number in the sentence (a dose, a date, a percentage) to appear
in the passages it cites: neither score notices "1000 mg" where the passage says "500 mg"
(0.66 and 0.71 on the metformin passage of ``tests/test_answers``), and in clinical and
financial text a wrong number is the most harmful error there is.

A sentence that cites nothing is scored against every passage. It is unsupported, unless the
caller asks for ``attribute=True``: then the best passage backs it when that passage passes the
same check (a small model that states a passage's content without writing ``[n]``). A sentence
that no passage supports never gets a citation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from search.answering.citations import MARKER_LIKE
from search.answering.support_model import classify, load_verifier
from search.ingestion.embedding import get_embedder
from search.ingestion.sentences import split_sentences
from search.retrieval.text_analysis import analyze

Method = Literal["embedding", "lexical", "model"]
METHODS = ("embedding", "lexical", "model")

EMBEDDING_THRESHOLD = 0.6
LEXICAL_THRESHOLD = 0.7
MODEL_THRESHOLD = 0.5
MODEL_WINDOW = 3  # sentences per passage window: what the verifier was trained on
# An uncited sentence needs this many distinct terms to be given a citation: "HACKED." copied
# from an injected passage matches it fully, but a word or two is not a claim worth citing.
MIN_ATTRIBUTION_TERMS = 3

# Digits may touch a unit ("500mg", "10mmHg") but not other digits.
_NUMBER = re.compile(r"(?<![\d.,])\d+(?:[.,]\d+)*(?!\d)")


@dataclass(frozen=True)
class SentenceCheck:
    sentence: str
    cited: tuple[int, ...]
    supported: bool
    score: float  # against the cited passages; against the best passage when nothing is cited
    best_passage: int | None
    # The cited passages that back the sentence: each one reaching the threshold alone, or all
    # of them when only their union does (a claim drawing on two passages). Empty: unsupported.
    supporting: tuple[int, ...] = ()
    # Cited passages that contradict it ("model" only; never when it is supported).
    contradicted: tuple[int, ...] = ()


def strip_citations(sentence: str) -> str:
    """The claim alone: a marker such as ``[2]`` would otherwise count as the term "2"."""
    return MARKER_LIKE.sub("", sentence).strip()


def numbers_in(text: str) -> set[str]:
    """The numbers a text states, normalised so "1,000" and "1000" match."""
    return {m.group(0).replace(",", "") for m in _NUMBER.finditer(text)}


def _sentences(text: str) -> list[str]:
    return [" ".join(text[start:end].split()) for start, end in split_sentences(text)]


def _recall(terms: set[str], passage_terms: set[str]) -> float:
    return len(terms & passage_terms) / len(terms) if terms else 0.0


def lexical_support(sentence: str, passages_text: list[str]) -> float:
    """Share of the sentence's terms found in the passages taken together."""
    passage_terms = {term for text in passages_text for term in analyze(text)}
    return _recall(set(analyze(strip_citations(sentence))), passage_terms)


def embedding_support(sentence: str, passages_text: list[str]) -> float:
    """Highest cosine similarity between the sentence and any sentence of the passages."""
    pieces = [piece for text in passages_text for piece in _sentences(text)]
    claim = strip_citations(sentence)
    if not claim or not pieces:
        return 0.0
    vectors = get_embedder().encode([claim] + pieces)
    return float(np.max(vectors[1:] @ vectors[0]))


def support_score(sentence: str, passages_text: list[str], method: Method) -> float:
    """The score :func:`verify` compares with its threshold, for one sentence (the checks
    that need no trained model)."""
    if method == "embedding":
        return embedding_support(sentence, passages_text)
    if method == "lexical":
        return lexical_support(sentence, passages_text)
    raise ValueError(f"Unknown verification method {method!r}; use 'embedding' or 'lexical'.")


def _flat(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _quotes(flat_sentences: set[str], claim: str) -> bool:
    """Whether the claim is one of the passage's sentences (flattened), word for word, case
    and punctuation aside. A fragment does not count: "aspirin reduces mortality" inside "it
    is unclear whether aspirin reduces mortality" is not what the passage says."""
    flat = _flat(claim)
    return bool(flat) and flat in flat_sentences


def _windows(pieces: list[str], size: int) -> list[str]:
    """Every run of ``size`` consecutive sentences (all of them when fewer)."""
    return [" ".join(pieces[start:start + size])
            for start in range(max(len(pieces) - size + 1, 1))] if pieces else []


def model_scores(pairs: Sequence[tuple[str, str]], verifier: Path) -> list[tuple[float, float]]:
    """(support, contradiction) of each (claim, passage): the verifier's best probabilities
    over the passage's windows, in one batch of every (claim, window). Contradiction counts
    only where it is the winning label, whatever the support threshold; a claim the passage
    quotes is supported (1.0) without asking. Raises VerifierUnavailable even when nothing
    needs asking."""
    load_verifier(verifier)
    scores = [[0.0, 0.0] for _ in pairs]
    cells, asked = [], []
    split: dict[str, tuple[set[str], list[str]]] = {}  # passage -> its sentences, its windows
    for k, (claim, passage) in enumerate(pairs):
        if passage not in split:  # each passage split into sentences once
            pieces = _sentences(passage)
            split[passage] = ({_flat(piece) for piece in pieces}, _windows(pieces, MODEL_WINDOW))
        sentences, windows = split[passage]
        if _quotes(sentences, claim):
            scores[k][0] = 1.0
            continue
        for window in windows:
            cells.append(k)
            asked.append((claim, window))
    for k, judged in zip(cells, classify(verifier, asked) if asked else [], strict=True):
        scores[k][0] = max(scores[k][0], judged.probabilities["supports"])
        if judged.label == "contradicts":
            scores[k][1] = max(scores[k][1], judged.probabilities["contradicts"])
    return [(support, against) for support, against in scores]


def _model_matrices(claims: Sequence[str], passages: dict[int, str], needed: set[tuple[int, int]],
                    verifier: Path) -> tuple[np.ndarray, np.ndarray]:
    """``[i, j]``: :func:`model_scores` of claim i against the j-th passage (sorted order),
    for the ``needed`` cells only."""
    numbers = sorted(passages)
    supports = np.zeros((len(claims), len(numbers)), dtype=np.float32)
    contradicts = np.zeros_like(supports)
    cells = sorted(needed)
    scored = model_scores([(claims[i], passages[numbers[j]]) for i, j in cells], verifier)
    for (i, j), (support, against) in zip(cells, scored, strict=True):
        supports[i, j], contradicts[i, j] = support, against
    return supports, contradicts


def _embedding_matrix(claims: Sequence[str], passages: dict[int, str]) -> np.ndarray:
    """``[i, j]``: best similarity of claim i to a sentence of the j-th passage (sorted order).

    One ``encode`` call for every claim and passage sentence: model calls dominate the cost.
    """
    numbers = sorted(passages)
    pieces: list[str] = []
    owner: list[int] = []
    for column, number in enumerate(numbers):
        for piece in _sentences(passages[number]):
            pieces.append(piece)
            owner.append(column)
    matrix = np.zeros((len(claims), len(numbers)), dtype=np.float32)
    if not claims or not pieces:
        return matrix
    texts = [claim or " " for claim in claims]
    vectors = get_embedder().encode(texts + pieces)
    similarity = vectors[: len(texts)] @ vectors[len(texts) :].T
    owners = np.asarray(owner)
    for column in range(len(numbers)):
        mask = owners == column
        if mask.any():
            matrix[:, column] = similarity[:, mask].max(axis=1)
    matrix[[i for i, claim in enumerate(claims) if not claim]] = 0.0
    return matrix


def _needed(
    claim_terms: set[str], stated: set[str], cited: list[int], threshold: float,
    terms: dict[int, set[str]], numbers: dict[int, set[str]],
) -> tuple[int, ...]:
    """The cited passages a jointly supported claim needs: each one whose removal would leave
    the rest short of the threshold or of a number (ALCE's test for a necessary citation)."""
    keep = list(cited)
    for number in cited:
        rest = [n for n in keep if n != number]
        if rest and _recall(claim_terms, set().union(*(terms[n] for n in rest))) >= threshold \
                and stated <= set().union(*(numbers[n] for n in rest)):
            keep = rest
    return tuple(keep)


def verify(
    sentences: list[tuple[str, tuple[int, ...]]],
    passages: dict[int, str],
    method: Method,
    threshold: float,
    *,
    attribute: bool | Sequence[bool] = False,
    verifier: Path | None = None,
) -> list[SentenceCheck]:
    """One check per answer sentence; citations of numbers not in ``passages`` count as nothing.

    ``attribute`` (one flag, or one per sentence) lets an uncited sentence take the passage
    that passes the check for it. ``verifier`` is the model directory ``"model"`` needs; it
    raises :class:`~search.answering.support_model.VerifierUnavailable` when it cannot load.
    """
    flags = [attribute] * len(sentences) if isinstance(attribute, bool) else list(attribute)
    if method not in METHODS:
        raise ValueError(f"Unknown verification method {method!r}; use one of "
                         f"{', '.join(METHODS)}.")
    if method == "model" and verifier is None:
        raise ValueError("The 'model' verification needs the verifier's directory.")
    numbers = sorted(passages)
    column = {number: k for k, number in enumerate(numbers)}
    claims = [strip_citations(sentence) for sentence, _ in sentences]
    claim_terms = [set(analyze(claim)) for claim in claims]
    passage_terms = {number: set(analyze(passages[number])) for number in numbers}
    passage_numbers = {number: numbers_in(passages[number]) for number in numbers}
    claim_numbers = [numbers_in(claim) for claim in claims]
    against = np.zeros((len(claims), len(numbers)), dtype=np.float32)
    if method == "embedding":
        per_passage = _embedding_matrix(claims, passages)
    elif method == "model":
        # Only the cells the decision below reads: an uncited sentence is matched to passages
        # stating its numbers, and only when it is long enough to be given a citation.
        attributable = [
            flags[i] and not cited and len(claim_terms[i]) >= MIN_ATTRIBUTION_TERMS
            for i, (_, cited) in enumerate(sentences)
        ]
        needed = {
            (i, column[n])
            for i, (_, cited) in enumerate(sentences) if claims[i]
            for n in (cited if cited else numbers if attributable[i] else ()) if n in column
            and (cited or claim_numbers[i] <= passage_numbers[n])
        }
        per_passage, against = _model_matrices(claims, passages, needed, verifier)
    else:
        per_passage = np.array(
            [[_recall(terms, passage_terms[n]) for n in numbers] for terms in claim_terms],
            dtype=np.float32,
        ).reshape(len(claims), len(numbers))

    checks = []
    for i, (sentence, cited) in enumerate(sentences):
        known = [number for number in dict.fromkeys(cited) if number in column]
        stated = claim_numbers[i]
        # An uncited sentence is matched only to passages stating all of its numbers.
        pool = known if cited else [n for n in numbers if stated <= passage_numbers[n]]
        best = max(pool, key=lambda n: (per_passage[i, column[n]], -n), default=None)
        if best is None:
            score = 0.0
        elif method == "lexical" and cited:
            # Recall against the cited passages together: a claim may draw on two of them.
            score = _recall(claim_terms[i], set().union(*(passage_terms[n] for n in known)))
        else:
            score = float(per_passage[i, column[best]])
        attribute_this = flags[i]
        if (
            not cited and attribute_this and best is not None
            and len(claim_terms[i]) >= MIN_ATTRIBUTION_TERMS
        ):
            known = [best]  # judged as if it had cited its best passage
        cited_numbers = set().union(*(passage_numbers[n] for n in known))
        supported = (
            bool(known) and score >= threshold and stated <= cited_numbers
            and (bool(cited) or attribute_this)
        )
        alone = tuple(
            n for n in known
            if per_passage[i, column[n]] >= threshold and stated <= passage_numbers[n]
        )
        if method == "model":
            supported = supported and bool(alone)  # the model judges one passage at a time
        checks.append(
            SentenceCheck(
                sentence=sentence,
                cited=tuple(cited),
                supported=supported,
                score=round(score, 4),
                best_passage=best,
                supporting=(alone or _needed(claim_terms[i], stated, known, threshold,
                                             passage_terms, passage_numbers))
                if supported else (),
                # Only passages the sentence itself cites: one the check picked for an uncited
                # sentence is not what its author claimed.
                contradicted=() if supported else tuple(
                    n for n in dict.fromkeys(cited) if n in column and against[i, column[n]] > 0),
            )
        )
    return checks
