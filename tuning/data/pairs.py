"""Query/passage pairs to fine-tune on, where they came from, and a leak-free held-out split.

A pair's ``positive`` is the text as it is embedded (``passage_text``: title, then text), so
training sees what search sees. ``group`` is what the held-out split keys on: every pair of
one query (or, for pairs made from a document, of one document) lands on the same side.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from search.ingestion.sentences import split_sentences

SOURCES = ("dataset", "synthetic-title", "synthetic-sentence", "curated", "feedback")
SYNTHETIC_KINDS = ("title", "sentence")
# A sentence shorter than this many words ("Methods.", "Results:") says too little to be a
# query, and a document with fewer than this many sentences would be mostly lost without it.
MIN_SENTENCE_WORDS = 6
MIN_SENTENCES = 3


@dataclass(frozen=True)
class TrainingPair:
    """One training example: a query, a passage that answers it, and optional hard negatives."""

    query: str
    positive: str
    source: str
    group: str
    negatives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {self.source!r}")
        if not self.query.strip() or not self.positive.strip():
            raise ValueError("a training pair needs a non-empty query and positive")


def dataset_pairs(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    passages: Mapping[str, str],
) -> list[TrainingPair]:
    """One pair per relevant (relevance > 0) judged passage of each query, grouped by query id.

    Judgements naming a query or passage that is not given are skipped, not errors: a corpus
    may have lost documents since it was judged.
    """
    pairs = []
    for query_id in sorted(qrels):
        query = queries.get(query_id, "")
        if not query.strip():
            continue
        for passage_id, relevance in sorted(qrels[query_id].items()):
            passage = passages.get(passage_id, "")
            if relevance > 0 and passage.strip():
                pairs.append(TrainingPair(query, passage, "dataset", query_id))
    return pairs


def synthetic_pairs(
    documents: Iterable[tuple[str, str, str]],
    *,
    kinds: Sequence[str] = SYNTHETIC_KINDS,
    seed: int,
    limit: int | None = None,
) -> list[TrainingPair]:
    """Label-free pairs made from the corpus alone, grouped by document id.

    ``title``: the title finds the text (without the title, or the query would be a copy).
    ``sentence``: one sentence of a document finds the title and the rest of the document
    (without that sentence, for the same reason). Documents are sampled in a seeded order;
    ``limit`` caps the number of pairs (all kinds together).
    """
    unknown = set(kinds) - set(SYNTHETIC_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {SYNTHETIC_KINDS}; got {kinds!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0; got {limit}")
    ordered = sorted(documents, key=lambda document: document[0])
    rng = random.Random(seed)
    rng.shuffle(ordered)
    pairs: list[TrainingPair] = []
    for document_id, title, text in ordered:
        title, text = title.strip(), text.strip()
        if not text:
            continue
        if "title" in kinds and title:
            pairs.append(TrainingPair(title, text, "synthetic-title", document_id))
        if "sentence" in kinds:
            pair = _sentence_pair(document_id, title, text, rng)
            if pair is not None:
                pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            return pairs[:limit]
    return pairs


def _sentence_pair(
    document_id: str, title: str, text: str, rng: random.Random
) -> TrainingPair | None:
    """A random long-enough sentence as the query, the document without it as the positive."""
    spans = split_sentences(text)
    if len(spans) < MIN_SENTENCES:
        return None
    eligible = [
        index
        for index, (start, end) in enumerate(spans)
        if len(text[start:end].split()) >= MIN_SENTENCE_WORDS
    ]
    if not eligible:
        return None
    chosen = rng.choice(eligible)
    start, end = spans[chosen]
    rest = " ".join(text[s:e] for index, (s, e) in enumerate(spans) if index != chosen)
    positive = f"{title}\n{rest}" if title else rest
    return TrainingPair(text[start:end], positive, "synthetic-sentence", document_id)


def split_held_out(
    pairs: Sequence[TrainingPair], fraction: float, seed: int
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """``(train, held_out)`` with about ``fraction`` of the groups held out, the same for the
    same pairs and seed, so a held-out query is never trained on (not even with another of
    its passages)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1); got {fraction}")
    groups = sorted({pair.group for pair in pairs})
    random.Random(seed).shuffle(groups)
    held = set(groups[: round(fraction * len(groups))])
    train = [pair for pair in pairs if pair.group not in held]
    held_out = [pair for pair in pairs if pair.group in held]
    return train, held_out


def positives_from_qrels(
    qrels: Mapping[str, Mapping[str, int]],
) -> Callable[[TrainingPair], Collection[str]]:
    """The passage ids that must never be a pair's negative: every judged-relevant passage of
    its query, or for pairs made from a document, that document itself."""

    def positives_of(pair: TrainingPair) -> Collection[str]:
        if pair.source.startswith("synthetic"):
            return {pair.group}
        return {pid for pid, relevance in qrels.get(pair.group, {}).items() if relevance > 0}

    return positives_of
