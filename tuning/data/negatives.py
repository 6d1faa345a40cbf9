"""Hard negatives: passages a retriever ranks high for a query that do not answer it.

In-batch negatives are mostly easy (another topic); a near miss from the retriever that will
be served teaches the model the distinctions it actually gets wrong. The retriever is
injected, so the same code mines from the served hybrid search or from an offline index.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from tuning.data.pairs import TrainingPair


def mine_hard_negatives(
    pairs: Sequence[TrainingPair],
    retrieve: Callable[[str], list[str]],
    passages: Mapping[str, str],
    *,
    per_pair: int,
    skip_top: int = 0,
    positives_of: Callable[[TrainingPair], Collection[str]] | None = None,
) -> list[TrainingPair]:
    """The pairs with up to ``per_pair`` negatives each, taken in the retriever's order.

    ``retrieve(query)`` returns passage ids, best first; ``passages`` maps them to text.
    ``skip_top`` ignores the first ranks, where unjudged relevant passages (false negatives)
    are most likely. A passage is never a negative of a query if it is one of that query's
    positives, by id (``positives_of``) or by text (any pair of the same query). The
    retriever is called once per distinct query.
    """
    if per_pair < 0 or skip_top < 0:
        raise ValueError(f"per_pair and skip_top must be >= 0; got {per_pair}, {skip_top}")
    positive_texts: dict[str, set[str]] = {}
    positive_ids: dict[str, set[str]] = {}
    for pair in pairs:
        positive_texts.setdefault(pair.query, set()).add(pair.positive.strip())
        if positives_of is not None:
            positive_ids.setdefault(pair.query, set()).update(positives_of(pair))
    retrieved: dict[str, list[str]] = {}
    mined = []
    for pair in pairs:
        if per_pair == 0:
            mined.append(pair)
            continue
        if pair.query not in retrieved:
            retrieved[pair.query] = retrieve(pair.query)
        excluded_ids = positive_ids.get(pair.query, set())
        excluded_texts = positive_texts[pair.query]
        negatives: list[str] = []
        for passage_id in retrieved[pair.query][skip_top:]:
            text = passages.get(passage_id, "").strip()
            if (
                not text
                or passage_id in excluded_ids
                or text in excluded_texts
                or text in negatives
            ):
                continue
            negatives.append(text)
            if len(negatives) == per_pair:
                break
        mined.append(replace(pair, negatives=tuple(negatives)))
    return mined
