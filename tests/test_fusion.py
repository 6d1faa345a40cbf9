"""Fusion arithmetic, checked by hand-computed values."""

import pytest

from search.retrieval.fusion import min_max, ranked, reciprocal_rank_fusion, weighted_fusion


def test_rrf_adds_reciprocal_ranks() -> None:
    fused = reciprocal_rank_fusion({"bm25": [1, 2, 3], "dense": [3, 1]}, k=60)
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert [item for item, _ in ranked(fused)] == [1, 3, 2]


def test_rrf_weights_and_bad_k() -> None:
    fused = reciprocal_rank_fusion({"a": [1], "b": [2]}, k=0, weights={"a": 2.0, "b": 1.0})
    assert fused == {1: 2.0, 2: 1.0}
    with pytest.raises(ValueError):
        reciprocal_rank_fusion({"a": [1]}, k=-1)


def test_min_max_and_weighted_fusion() -> None:
    assert min_max({1: 10.0, 2: 5.0, 3: 0.0}) == {1: 1.0, 2: 0.5, 3: 0.0}
    assert min_max({7: 3.0}) == {7: 1.0}
    assert min_max({}) == {}
    fused = weighted_fusion(
        {"bm25": {1: 10.0, 2: 0.0}, "dense": {2: 0.9, 3: 0.5}}, {"bm25": 0.3, "dense": 0.7}
    )
    assert fused == pytest.approx({1: 0.3, 2: 0.7, 3: 0.0})


def test_ranked_breaks_ties_by_id() -> None:
    assert ranked({5: 1.0, 2: 1.0, 9: 2.0}) == [(9, 2.0), (2, 1.0), (5, 1.0)]
