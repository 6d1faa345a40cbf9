"""Combining ranked lists: reciprocal rank fusion and weighted, normalised score fusion.

Both take one ranking per retriever (best first) and return fused scores by item id. Pure
functions so they can be tuned and tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[int]], k: int = 60,
    weights: Mapping[str, float] | None = None,
) -> dict[int, float]:
    """score(d) = sum over retrievers of weight / (k + rank), ranks starting at 1 (Cormack 2009)."""
    if k < 0:
        raise ValueError("RRF k must be >= 0")
    fused: dict[int, float] = {}
    for name, ranking in rankings.items():
        weight = 1.0 if weights is None else weights.get(name, 0.0)
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return fused


def min_max(scores: Mapping[int, float]) -> dict[int, float]:
    """Scale scores to [0, 1]; a list whose scores are all equal maps to 1."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return {item: 1.0 for item in scores}
    return {item: (score - low) / (high - low) for item, score in scores.items()}


def weighted_fusion(
    scores: Mapping[str, Mapping[int, float]], weights: Mapping[str, float]
) -> dict[int, float]:
    """sum of weight x min-max-normalised score; an item a retriever did not return adds 0."""
    fused: dict[int, float] = {}
    for name, retriever_scores in scores.items():
        weight = weights.get(name, 0.0)
        for item, score in min_max(retriever_scores).items():
            fused[item] = fused.get(item, 0.0) + weight * score
    return fused


def ranked(fused: Mapping[int, float]) -> list[tuple[int, float]]:
    """Best first; ties by id so results are deterministic."""
    return sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
