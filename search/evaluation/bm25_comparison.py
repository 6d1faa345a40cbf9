"""Speed and equality check of :class:`BM25Index` against ``rank_bm25.BM25Okapi``.

Used by the tests (small corpora) and by a benchmark command (100k documents). The synthetic
corpus has a Zipfian vocabulary, so a handful of terms occur in more than half the documents
and exercise rank-bm25's negative-idf (epsilon) path, and it includes empty documents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rank_bm25 import BM25Okapi

from search.retrieval.bm25 import BM25Index, BM25Params

UNKNOWN_TERM = "zz-not-in-vocabulary"


def synthetic_corpus(
    n_docs: int,
    seed: int,
    *,
    vocab_size: int = 30_000,
    mean_len: int = 80,
    zipf_s: float = 1.0,
    empty_fraction: float = 0.01,
) -> list[list[str]]:
    """Documents of ~``mean_len`` tokens drawn from a Zipf(``zipf_s``) vocabulary."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"t{rank}" for rank in range(vocab_size)]
    weights = 1.0 / np.arange(1, vocab_size + 1) ** zipf_s
    cumulative = np.cumsum(weights / weights.sum())
    lengths = np.maximum(rng.poisson(mean_len, n_docs), 1)
    lengths[rng.random(n_docs) < empty_fraction] = 0
    draws = np.searchsorted(cumulative, rng.random(int(lengths.sum())), side="right")
    draws = np.minimum(draws, vocab_size - 1).tolist()
    corpus: list[list[str]] = []
    start = 0
    for length in lengths.tolist():
        corpus.append([vocabulary[i] for i in draws[start : start + length]])
        start += length
    return corpus


def synthetic_queries(
    n_queries: int, seed: int, *, vocab_size: int = 30_000, zipf_s: float = 1.0
) -> list[list[str]]:
    """1-6 terms, mixing frequent (Zipf) and rare (uniform) terms, repeats and unknown terms."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab_size + 1) ** zipf_s
    cumulative = np.cumsum(weights / weights.sum())
    queries: list[list[str]] = []
    for _ in range(n_queries):
        length = int(rng.integers(1, 7))
        zipf_terms = np.searchsorted(cumulative, rng.random(length), side="right")
        uniform_terms = rng.integers(0, vocab_size, length)
        picks = np.where(rng.random(length) < 0.5, zipf_terms, uniform_terms)
        query = [f"t{min(int(rank), vocab_size - 1)}" for rank in picks]
        if rng.random() < 0.25:
            query.append(query[int(rng.integers(0, len(query)))])
        if rng.random() < 0.1:
            query.insert(int(rng.integers(0, len(query) + 1)), UNKNOWN_TERM)
        queries.append(query)
    return queries


def reference_top_k(scores: np.ndarray, ids: Sequence[int], k: int) -> list[int]:
    """rank-bm25 scores ranked like ``BM25Index.top_k``: score > 0, score desc, position asc."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0][:k]
    return [ids[i] for i in order.tolist()]


@dataclass(frozen=True)
class RankBM25Comparison:
    queries: int
    k: int
    rank_bm25_ms: float
    bm25_index_ms: float
    speedup: float
    identical: bool  # every top-k id list equal, in order
    scores_identical: bool  # and the scores behind them bit-for-bit equal
    rank_bm25_build_s: float


def compare_rank_bm25(
    index: BM25Index, corpus: Sequence[Sequence[str]], queries: Sequence[Sequence[str]],
    k: int = 100,
) -> RankBM25Comparison:
    """Time ``BM25Okapi.get_scores`` + top-k against ``BM25Index.top_k`` on the same tokens.

    ``corpus`` must be the token lists ``index`` was built from, in its id order.
    """
    ids = index.ids.tolist()
    params = index.params
    started = time.perf_counter()
    reference = BM25Okapi(corpus, k1=params.k1, b=params.b, epsilon=params.epsilon)
    build_s = time.perf_counter() - started

    expected: list[tuple[list[int], np.ndarray]] = []
    started = time.perf_counter()
    for terms in queries:
        scores = reference.get_scores(terms)
        expected.append((reference_top_k(scores, ids, k), scores))
    reference_ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)

    served: list[list[tuple[int, float]]] = []
    started = time.perf_counter()
    for terms in queries:
        served.append(index.top_k(terms, k))
    index_ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)

    position = {doc_id: i for i, doc_id in enumerate(ids)}
    identical = scores_identical = True
    for (want_ids, want_scores), hits in zip(expected, served, strict=True):
        got_ids = [doc_id for doc_id, _ in hits]
        if got_ids != want_ids:
            identical = scores_identical = False
            continue
        at = np.array([position[doc_id] for doc_id in got_ids], dtype=np.int64)
        got_scores = np.array([score for _, score in hits], dtype=np.float64)
        if not np.array_equal(got_scores, want_scores[at]):
            scores_identical = False
    return RankBM25Comparison(
        len(queries), k, reference_ms, index_ms,
        reference_ms / index_ms if index_ms else float("inf"), identical, scores_identical,
        build_s,
    )


def compare_with_rank_bm25(
    n_docs: int, n_queries: int, seed: int, params: BM25Params | None = None
) -> RankBM25Comparison:
    """The comparison on a synthetic Zipfian corpus (no database needed)."""
    corpus = synthetic_corpus(n_docs, seed)
    index = BM25Index.build(range(1_000_000, 1_000_000 + n_docs), corpus, params or BM25Params())
    return compare_rank_bm25(index, corpus, synthetic_queries(n_queries, seed + 1))
