"""Labelled (sentence, passage) pairs for the citation-support verifier, from SciFact claims.

SciFact's claim files give, for each claim and cited abstract, a SUPPORT or CONTRADICT label
and the rationale sentences (indices into the abstract's sentence list). A pair is what
serving checks: one statement against one passage of a few sentences, so passages are
windows of ``window`` consecutive sentences:

* ``rationale``: the window around a rationale set, labelled with its label;
* ``other-sentences``: a window of the same cited abstract without any rationale sentence,
  not enough information (on topic, but not the evidence);
* ``retrieved``: the BM25-nearest window of an abstract the claim does not cite, not enough
  information (a hard negative: shares words, says nothing about the claim);
* ``noinfo``: the BM25-nearest window of an abstract a NOINFO claim cites;
* ``copied`` (training only): a sentence of an abstract against the window holding it,
  supports, because a statement copied from its passage is what an extractive answer writes;
* ``reversed`` (training only): a supported rationale claim or copied sentence turned
  around by :func:`reverse` (a direction word swapped, a ``not`` dropped, a number moved by
  one), contradicts. Its rules are not those of :func:`contradict`, which makes the held-out
  contradiction set, so that set measures what the model learned, not the rule it was shown.

The split is by claim (``held_out_claims``), so no claim has pairs on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.answering.support_model import LABELS
from search.retrieval.bm25 import BM25Index
from search.retrieval.text_analysis import analyze

SUPPORTS, CONTRADICTS, NOT_ENOUGH_INFO = LABELS  # the names serving reads from the model
_FROM_SCIFACT = {"SUPPORT": SUPPORTS, "CONTRADICT": CONTRADICTS}
KINDS = ("rationale", "other-sentences", "retrieved", "noinfo", "copied", "reversed")
CLAIMS_FILE = "claims_train.jsonl"
SENTENCES_FILE = "corpus_sentences.jsonl.gz"


class ClaimsError(ValueError):
    """The claims data is missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class Abstract:
    doc_id: int
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class Rationale:
    doc_id: int
    label: str  # SUPPORTS or CONTRADICTS
    sentences: tuple[int, ...]


@dataclass(frozen=True)
class Claim:
    id: int
    text: str
    rationales: tuple[Rationale, ...]  # empty: NOINFO
    cited: tuple[int, ...]


@dataclass(frozen=True)
class LabelledPair:
    sentence: str
    passage: str
    label: str
    kind: str
    claim_id: int


def read_claims(directory: Path) -> list[Claim]:
    path = Path(directory) / CLAIMS_FILE
    if not path.is_file():
        raise ClaimsError(f"No claims file at {path}: the verifier is trained on SciFact's "
                          f"{CLAIMS_FILE} (see ../shared/data/README.md); pass --dataset DIR.")
    claims = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rationales = tuple(
                    Rationale(int(doc), _FROM_SCIFACT[entry["label"]],
                              tuple(int(i) for i in entry["sentences"]))
                    for doc, entries in (row.get("evidence") or {}).items() for entry in entries
                )
                claims.append(Claim(int(row["id"]), str(row["claim"]).strip(), rationales,
                                    tuple(int(d) for d in row.get("cited_doc_ids", ()))))
            except (ValueError, KeyError, TypeError) as exc:
                raise ClaimsError(f"{path}, line {number}: not a SciFact claim ({exc!r}).") \
                    from exc
    if not claims:
        raise ClaimsError(f"{path} holds no claims.")
    return claims


def read_abstracts(directory: Path) -> dict[int, Abstract]:
    path = Path(directory) / SENTENCES_FILE
    if not path.is_file():
        raise ClaimsError(f"No sentence-split corpus at {path}: the rationale indices point "
                          f"into it (see ../shared/data/README.md).")
    abstracts = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                abstracts[int(row["doc_id"])] = Abstract(
                    int(row["doc_id"]), str(row["title"]).strip(),
                    tuple(" ".join(s.split()) for s in row["abstract"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ClaimsError(f"{path}, line {number}: not an abstract ({exc!r}).") from exc
    return abstracts


def held_out_claims(claims: Sequence[Claim], share: float, seed: int = 13
                    ) -> tuple[list[Claim], list[Claim]]:
    """(train, held out) by a stable hash of the claim id: the same claims are held out on
    every run and machine, so a later run is never judged on what an earlier one trained on."""
    def held(claim: Claim) -> bool:
        digest = hashlib.sha256(f"{seed}:{claim.id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share
    return [c for c in claims if not held(c)], [c for c in claims if held(c)]


def windows(abstract: Abstract, size: int) -> list[tuple[int, int]]:
    """Every run of ``size`` consecutive sentences (the whole abstract when shorter)."""
    n = len(abstract.sentences)
    return [(start, min(start + size, n)) for start in range(max(n - size + 1, 1))]


def _text(abstract: Abstract, span: tuple[int, int]) -> str:
    return " ".join(abstract.sentences[span[0]:span[1]])


def _around(abstract: Abstract, indices: Iterable[int], size: int) -> tuple[int, int]:
    """The smallest window of at least ``size`` sentences holding every index."""
    first, last = min(indices), max(indices) + 1
    n = len(abstract.sentences)
    while last - first < min(size, n):
        if first > 0:
            first -= 1
        if last - first < size and last < n:
            last += 1
    return first, last


class WindowSearch:
    """BM25 over every window of the corpus: the nearest window a claim does not cite."""

    def __init__(self, abstracts: dict[int, Abstract], size: int) -> None:
        self.spans = [(doc, span) for doc, abstract in abstracts.items()
                      for span in windows(abstract, size)]
        self.abstracts = abstracts
        self.index = BM25Index.build(range(len(self.spans)), [
            analyze(_text(abstracts[doc], span)) for doc, span in self.spans], version="claims")

    def nearest(self, claim: str, *, among: set[int] | None = None,
                excluding: set[int] = frozenset()) -> tuple[int, tuple[int, int]] | None:
        mask = None
        if among is not None:
            mask = np.fromiter((doc in among for doc, _ in self.spans), bool, len(self.spans))
        for position, _ in self.index.top_k(analyze(claim), 50, mask=mask):
            doc, span = self.spans[position]
            if doc not in excluding:
                return doc, span
        return None


def labelled_pairs(claims: Sequence[Claim], abstracts: dict[int, Abstract], *,
                   window: int = 3, copied: bool = False, seed: int = 13,
                   search: WindowSearch | None = None) -> list[LabelledPair]:
    """Every pair the claims give (see the module docstring); ``copied`` adds, for training
    and never for judging, one copied sentence per claim with evidence and the ``reversed``
    form of every supported pair that :func:`reverse` can turn around."""
    rng = random.Random(seed)
    search = search or WindowSearch(abstracts, window)
    pairs: list[LabelledPair] = []
    for claim in claims:
        cited = {doc for doc in claim.cited if doc in abstracts}
        for rationale in claim.rationales:
            abstract = abstracts.get(rationale.doc_id)
            if abstract is None or not rationale.sentences:
                continue
            if max(rationale.sentences) >= len(abstract.sentences):
                raise ClaimsError(f"Claim {claim.id} points at sentence "
                                  f"{max(rationale.sentences)} of abstract {abstract.doc_id}, "
                                  f"which has {len(abstract.sentences)}.")
            span = _around(abstract, rationale.sentences, window)
            pairs.append(LabelledPair(claim.text, _text(abstract, span), rationale.label,
                                      "rationale", claim.id))
        for doc in sorted({r.doc_id for r in claim.rationales} & cited):
            evidence = {i for r in claim.rationales if r.doc_id == doc for i in r.sentences}
            free = [s for s in windows(abstracts[doc], window)
                    if not evidence & set(range(*s))]
            if free:
                pairs.append(LabelledPair(claim.text, _text(abstracts[doc], rng.choice(free)),
                                          NOT_ENOUGH_INFO, "other-sentences", claim.id))
        if claim.rationales:
            found = search.nearest(claim.text, excluding=cited)
            if found is not None:
                pairs.append(LabelledPair(claim.text, _text(abstracts[found[0]], found[1]),
                                          NOT_ENOUGH_INFO, "retrieved", claim.id))
        else:
            found = search.nearest(claim.text, among=cited)
            if found is not None:
                pairs.append(LabelledPair(claim.text, _text(abstracts[found[0]], found[1]),
                                          NOT_ENOUGH_INFO, "noinfo", claim.id))
        if copied and claim.rationales:
            abstract = abstracts.get(claim.rationales[0].doc_id)
            if abstract is not None and abstract.sentences:
                index = rng.randrange(len(abstract.sentences))
                pairs.append(LabelledPair(abstract.sentences[index],
                                          _text(abstract, _around(abstract, [index], window)),
                                          SUPPORTS, "copied", claim.id))
    if copied:
        pairs += [LabelledPair(turned, pair.passage, CONTRADICTS, "reversed", pair.claim_id)
                  for pair in pairs if pair.label == SUPPORTS
                  for turned in [reverse(pair.sentence)] if turned is not None]
    return pairs


# --- contradictions made for training ----------------------------------------------------------

_OPPOSITES = dict(pair for a, b in [
    ("increase", "decrease"), ("increases", "decreases"), ("increased", "decreased"),
    ("increasing", "decreasing"), ("higher", "lower"), ("more", "less"), ("high", "low"),
    ("reduces", "increases"), ("reduced", "increased"), ("reduce", "increase"),
    ("improves", "worsens"), ("improved", "worsened"), ("inhibits", "activates"),
    ("inhibit", "activate"), ("promotes", "inhibits"), ("enhances", "reduces"),
    ("positive", "negative"), ("positively", "negatively"), ("upregulates", "downregulates"),
    ("up-regulates", "down-regulates"), ("prevents", "causes"), ("better", "worse"),
    ("greater", "smaller"), ("fewer", "more"), ("induces", "suppresses"),
    ("suppresses", "induces"), ("benefit", "harm"), ("efficient", "inefficient"),
    ("effective", "ineffective"), ("required", "dispensable"),
] for pair in [(a, b), (b, a)])
_DIRECTION = re.compile(r"\b(" + "|".join(map(re.escape, sorted(_OPPOSITES, key=len,
                                                                     reverse=True))) + r")\b",
                        re.IGNORECASE)
_NOT = re.compile(r"\s+not\b|n't\b", re.IGNORECASE)
_INTEGER = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def reverse(sentence: str) -> str | None:
    """The sentence made false for training, or None when no rule applies. In order:

    1. the first direction word becomes its opposite (``increases`` -> ``decreases``,
       ``higher`` -> ``lower``);
    2. else its first ``not`` (or ``n't``) is dropped;
    3. else its last whole number moves by one (``12`` -> ``13``).
    """
    word = _DIRECTION.search(sentence)
    if word:
        opposite = _OPPOSITES[word.group(1).lower()]
        if word.group(1)[:1].isupper():
            opposite = opposite[:1].upper() + opposite[1:]
        return sentence[:word.start(1)] + opposite + sentence[word.end(1):]
    negation = _NOT.search(sentence)
    if negation:
        return sentence[:negation.start()] + sentence[negation.end():]
    numbers = list(_INTEGER.finditer(sentence))
    if numbers:
        last = numbers[-1]
        return sentence[:last.start(1)] + str(int(last.group(1)) + 1) + sentence[last.end(1):]
    return None


# --- the contradiction test set ----------------------------------------------------------------

_AUXILIARY = re.compile(
    r"\b(is|are|was|were|can|could|does|do|did|has|have|had|will|would|may|might|should|must)"
    r"\b(?!\s+not\b)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])")


def contradict(claim: str) -> tuple[str, str]:
    """(the claim made false, the rule used). The rule, in order:

    1. a number in the claim is changed: the first one is multiplied by ten (``5`` -> ``50``,
       ``0.5`` -> ``5.0``), a different quantity;
    2. else ``not`` follows the first auxiliary verb (``is`` -> ``is not``, ``can`` ->
       ``can not``);
    3. else the claim is prefixed with ``It is not true that``.
    """
    number = _NUMBER.search(claim)
    if number:
        value = number.group(1)
        changed = str(float(value) * 10) if "." in value else str(int(value) * 10)
        return claim[:number.start(1)] + changed + claim[number.end(1):], "number"
    auxiliary = _AUXILIARY.search(claim)
    if auxiliary:
        return claim[:auxiliary.end()] + " not" + claim[auxiliary.end():], "negation"
    return f"It is not true that {claim[:1].lower()}{claim[1:]}", "prefix"


def contradiction_pairs(pairs: Iterable[LabelledPair]) -> list[tuple[LabelledPair, str]]:
    """Each SUPPORT rationale pair with its claim made false (label contradicts), and the rule."""
    made = []
    for pair in pairs:
        if pair.kind == "rationale" and pair.label == SUPPORTS:
            sentence, rule = contradict(pair.sentence)
            made.append((LabelledPair(sentence, pair.passage, CONTRADICTS, "contradiction",
                                      pair.claim_id), rule))
    return made
