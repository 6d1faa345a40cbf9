"""Speed and equality check of :class:`BM25Index` against ``rank_bm25.BM25Okapi``.

Used by the tests (small corpora) and by a benchmark command (100k documents). The synthetic
corpus has a Zipfian vocabulary, so a handful of terms occur in more than half the documents
and exercise rank-bm25's negative-idf (epsilon) path, and it includes empty documents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from rank_bm25 import BM25Okapi

from search.bm25 import BM25Index, BM25Params

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


def compare_with_rank_bm25(
    n_docs: int, n_queries: int, seed: int, params: BM25Params | None = None
) -> dict:
    """Time rank-bm25 (get_scores + argsort) vs ``BM25Index.top_k`` for top-100 per query.

    Returns mean milliseconds per query for each, the speed ratio and whether every top-100
    id list (and the scores behind it) is identical.
    """
    params = params or BM25Params()
    k = 100
    corpus = synthetic_corpus(n_docs, seed)
    queries = synthetic_queries(n_queries, seed + 1)
    ids = list(range(1_000_000, 1_000_000 + n_docs))

    started = time.perf_counter()
    reference = BM25Okapi(corpus, k1=params.k1, b=params.b, epsilon=params.epsilon)
    reference_build_s = time.perf_counter() - started
    started = time.perf_counter()
    index = BM25Index.build(ids, corpus, params)
    index_build_s = time.perf_counter() - started

    reference_results: list[tuple[list[int], np.ndarray]] = []
    started = time.perf_counter()
    for query in queries:
        scores = reference.get_scores(query)
        reference_results.append((reference_top_k(scores, ids, k), scores))
    reference_ms = (time.perf_counter() - started) * 1000 / n_queries

    index_results: list[list[tuple[int, float]]] = []
    started = time.perf_counter()
    for query in queries:
        index_results.append(index.top_k(query, k))
    index_ms = (time.perf_counter() - started) * 1000 / n_queries

    identical = True
    for (ref_ids, ref_scores), hits in zip(reference_results, index_results, strict=True):
        hit_ids = [doc_id for doc_id, _ in hits]
        hit_scores = np.array([score for _, score in hits])
        positions = np.array([doc_id - ids[0] for doc_id in ref_ids], dtype=np.int64)
        if hit_ids != ref_ids or not np.array_equal(hit_scores, ref_scores[positions]):
            identical = False

    return {
        "n_docs": n_docs,
        "n_queries": n_queries,
        "seed": seed,
        "k": k,
        "rank_bm25_ms_per_query": reference_ms,
        "bm25_index_ms_per_query": index_ms,
        "speedup": reference_ms / index_ms if index_ms else float("inf"),
        "identical": identical,
        "rank_bm25_build_s": reference_build_s,
        "bm25_index_build_s": index_build_s,
        "n_terms": len(index.vocabulary),
        "n_postings": int(index.matrix.nnz),
    }
