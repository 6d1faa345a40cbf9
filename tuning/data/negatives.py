"""Negatives for training: passages that do not answer a query.

In-batch negatives are mostly easy (another topic); a near miss from the retriever that will
be served (a hard negative) teaches the model the distinctions it actually gets wrong. A
reranker trained on hard negatives alone learns little on SciFact (many near misses are
unjudged answers); a random passage beside each hard one keeps the contrast clear. The
retriever is injected, so the same code mines from the served hybrid search or from an
offline index.
"""

from __future__ import annotations

import random as random_module
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from tuning.data.pairs import TrainingPair


def mine_negatives(
    pairs: Sequence[TrainingPair],
    retrieve: Callable[[str], list[str]],
    passages: Mapping[str, str],
    *,
    hard: int,
    random: int = 0,
    skip_top: int = 0,
    seed: int = 13,
    positives_of: Callable[[TrainingPair], Collection[str]] | None = None,
) -> list[TrainingPair]:
    """The pairs with up to ``hard`` negatives each, taken in the retriever's order, then
    ``random`` passages drawn (seeded) from the rest of ``passages``.

    ``retrieve(query)`` returns passage ids, best first; ``passages`` maps them to text.
    ``skip_top`` ignores the first ranks, where unjudged relevant passages (false negatives)
    are most likely. A passage is never a negative of a query if it is one of that query's
    positives, by id (``positives_of``) or by text (any pair of the same query). The
    retriever is called once per distinct query, and not at all when ``hard`` is 0.
    """
    if hard < 0 or random < 0 or skip_top < 0:
        raise ValueError(f"hard, random and skip_top must be >= 0; got {hard}, {random}, "
                         f"{skip_top}")
    if hard == 0 and random == 0:
        return list(pairs)
    positive_texts: dict[str, set[str]] = {}
    positive_ids: dict[str, set[str]] = {}
    for pair in pairs:
        positive_texts.setdefault(pair.query, set()).add(pair.positive.strip())
        if positives_of is not None:
            positive_ids.setdefault(pair.query, set()).update(positives_of(pair))
    draw = random_module.Random(seed)
    keys = sorted(passages)
    retrieved: dict[str, list[str]] = {}
    mined = []
    for pair in pairs:
        if hard and pair.query not in retrieved:
            retrieved[pair.query] = retrieve(pair.query)
        excluded_ids = positive_ids.get(pair.query, set())
        excluded_texts = positive_texts[pair.query]
        negatives: list[str] = []
        ranked = retrieved.get(pair.query, [])[skip_top:]
        drawn = draw.sample(keys, min(len(keys), 4 * random + 8)) if random else []
        for candidates, count in ((ranked, hard), (drawn, random)):
            wanted = len(negatives) + count
            for passage_id in candidates:
                if len(negatives) == wanted:
                    break
                text = passages.get(passage_id, "").strip()
                if (text and passage_id not in excluded_ids and text not in excluded_texts
                        and text not in negatives):
                    negatives.append(text)
        mined.append(replace(pair, negatives=tuple(negatives)))
    return mined
