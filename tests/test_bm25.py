"""BM25Index must rank exactly like rank_bm25.BM25Okapi, and the analyzer must be stable.

No database: run with ``pytest -p no:django tests/test_bm25.py``.
"""

from __future__ import annotations

import io
import itertools
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from search.evaluation.bm25_comparison import (
    UNKNOWN_TERM,
    compare_with_rank_bm25,
    reference_top_k,
    synthetic_corpus,
    synthetic_queries,
)
from search.retrieval.bm25 import BM25Index, BM25Params
from search.retrieval.text_analysis import STOP_WORDS, analyze, analyze_many

K = 100


# --- analyzer -------------------------------------------------------------------------------


def test_analyze_lowercases_and_stems() -> None:
    assert analyze("Running RUNS runner") == ["run", "run", "runner"]
    assert analyze("Studies") == ["studi"]


def test_analyze_drops_stop_words() -> None:
    assert analyze("The effect of the drug on the patients") == ["effect", "drug", "patient"]
    assert analyze("the THE a An of") == []
    assert all(analyze(word) == [] for word in STOP_WORDS)


def test_analyze_empty_and_punctuation_only() -> None:
    assert analyze("") == []
    assert analyze("   \n\t ") == []
    assert analyze("... -- !!") == []


def test_analyze_keeps_numbers_and_alphanumerics() -> None:
    assert analyze("COVID19 raised IL-6 by 2.5 in 2020") == [
        "covid19", "rais", "il", "6", "2", "5", "2020",
    ]  # fmt: skip


def test_analyze_unicode_nfkc() -> None:
    # Full-width letters and digits, ligatures and composed/decomposed accents fold together.
    assert analyze("ＣＯＶＩＤ１９") == ["covid19"]
    assert analyze("ﬁnancial") == analyze("financial")
    assert analyze("Cafe\u0301") == analyze("Café") == ["café"]
    assert analyze("Straße München") == ["straße", "münchen"]
    assert analyze("Ünïcödé") == analyze("ünïcödé")


def test_analyze_is_deterministic_and_batch_matches() -> None:
    texts = ["Running dogs", "", "The cat sat on the mat", "ＡＢＣ 123"]
    assert analyze_many(texts) == [analyze(text) for text in texts]
    assert analyze_many(texts) == analyze_many(texts)


# --- equality with rank_bm25 ----------------------------------------------------------------


def assert_same_as_rank_bm25(
    corpus: list[list[str]],
    queries: list[list[str]],
    params: BM25Params,
    ids: list[int] | None = None,
) -> None:
    ids = ids if ids is not None else list(range(len(corpus)))
    reference = BM25Okapi(corpus, k1=params.k1, b=params.b, epsilon=params.epsilon)
    index = BM25Index.build(ids, corpus, params)
    assert len(index) == len(corpus)
    empty_docs = np.array([not doc for doc in corpus])
    for query in queries:
        with np.errstate(invalid="ignore"):
            expected = reference.get_scores(query)
        actual = index.scores(query)
        # rank_bm25 computes 0/0 = NaN for empty documents when b == 1 (the documented
        # deviation); they score 0 here, as a document without the term should.
        nan = np.isnan(expected)
        assert not nan.any() or (params.b == 1.0 and np.array_equal(nan, empty_docs)), query
        assert not actual[nan].any()
        expected = np.where(nan, 0.0, expected)
        assert np.allclose(actual, expected, rtol=1e-9, atol=1e-12), query
        # Stronger than required: the float operations are replicated, so bits are equal.
        assert np.array_equal(actual, expected), query
        hits = index.top_k(query, K)
        assert [doc_id for doc_id, _ in hits] == reference_top_k(expected, ids, K), query
        assert [score for _, score in hits] == sorted(
            (float(s) for s in expected if s > 0), reverse=True
        )[:K]


@pytest.fixture(scope="module")
def zipf_corpus() -> list[list[str]]:
    return synthetic_corpus(3_000, seed=7, vocab_size=5_000, mean_len=60)


def test_zipf_corpus_matches_rank_bm25(zipf_corpus: list[list[str]]) -> None:
    n_docs = len(zipf_corpus)
    doc_freq = Counter(term for doc in zipf_corpus for term in set(doc))
    # The corpus must exercise the tricky paths, or the test proves little.
    assert any(freq > n_docs / 2 for freq in doc_freq.values()), "no negative-idf terms"
    assert sum(1 for doc in zipf_corpus if not doc) >= 5, "no empty documents"
    queries = synthetic_queries(200, seed=8, vocab_size=5_000)
    assert any(len(set(q)) < len(q) for q in queries), "no repeated query terms"
    assert any(UNKNOWN_TERM in q for q in queries), "no unknown query terms"
    frequent = [term for term, freq in doc_freq.items() if freq > n_docs / 2]
    queries.append(frequent[:3])  # only negative-idf (epsilon) terms
    queries.append([frequent[0]] * 4 + ["t4999"])
    ids = [10_000 + 3 * i for i in range(n_docs)]
    assert_same_as_rank_bm25(zipf_corpus, queries, BM25Params(), ids)


def test_epsilon_path_idf_matches(zipf_corpus: list[list[str]]) -> None:
    reference = BM25Okapi(zipf_corpus)
    index = BM25Index.build(range(len(zipf_corpus)), zipf_corpus)
    assert index.average_idf == reference.average_idf
    eps = 0.25 * reference.average_idf
    assert sum(1 for value in reference.idf.values() if value == eps) > 0


SUBJECTS = [
    "The patient",
    "Our research team",
    "A new vaccine",
    "The COVID-19 outbreak",
    "Interleukin 6 (IL-6)",
    "The hospital's ICU",
    "This clinical trial",
    "Running shoes",
    "The database server",
    "A Django application",
    "The search engine",
    "Renewable energy",
    "The central bank",
    "Inflation in 2023",
    "Solar panels",
    "The supply chain",
    "Machine-learning models",
    "Customer support",
    "The municipal council",
    "Café owners",
]
VERBS = [
    "reported",
    "increased",
    "reduced",
    "was linked to",
    "depends on",
    "improved",
    "caused",
    "is measured by",
    "failed because of",
    "runs faster than",
    "replaced",
    "was studied with",
    "predicts",
    "does not affect",
    "triggered",
]
OBJECTS = [
    "severe inflammation",
    "the blood pressure of older adults",
    "query latency",
    "interest rates",
    "battery storage costs",
    "patient outcomes after surgery",
    "the number of hospital admissions",
    "BM25 ranking quality",
    "energy prices in Europe",
    "the response time of the API",
    "cytokine levels",
    "shipping delays",
    "the accuracy of the classifier",
    "public trust",
    "running costs",
    "Straße repairs",
]
TAILS = [
    "", " in 2020.", " during the winter.", " according to the report.", " for 12 weeks.",
    " despite the warnings.", " again and again.", " in most cases, but not all.",
    " — see table 3.", " (p < 0.05).",
]  # fmt: skip


def sentence_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS))
    picked = rng.sample(combos, n)
    texts = [f"{s} {v} {o}{t}" for s, v, o, t in picked]
    texts[10] = "The and of the"  # analyzes to an empty document
    texts[20] = ""
    texts[30] = texts[31]  # exact duplicates tie; position decides
    return texts


def test_sentence_corpus_matches_rank_bm25() -> None:
    texts = sentence_corpus(400, seed=3)
    corpus = analyze_many(texts)
    rng = random.Random(4)
    words = sorted({w for text in texts for w in text.split()})
    queries = [analyze(" ".join(rng.sample(words, rng.randint(1, 5)))) for _ in range(195)]
    queries += [
        analyze("running costs running"),
        analyze("IL-6 inflammation"),
        analyze("the"),
        analyze("COVID-19 hospital admissions in 2020"),
        analyze("quantum chromodynamics"),
    ]
    assert_same_as_rank_bm25(corpus, queries, BM25Params())


@pytest.mark.parametrize(
    "params",
    [
        BM25Params(k1=1.2),
        BM25Params(b=0.3),
        BM25Params(epsilon=0.5),
        BM25Params(k1=0.9, b=1.0, epsilon=0.0),
        BM25Params(k1=2.0, b=0.0, epsilon=0.1),
    ],
    ids=["k1", "b", "epsilon", "b=1", "b=0"],
)
def test_params_are_honoured(params: BM25Params, zipf_corpus: list[list[str]]) -> None:
    corpus = zipf_corpus[:800]
    queries = synthetic_queries(40, seed=9, vocab_size=5_000)
    assert_same_as_rank_bm25(corpus, queries, params)
    default = BM25Index.build(range(len(corpus)), corpus)
    changed = BM25Index.build(range(len(corpus)), corpus, params)
    query = ["t0", "t1", "t40", "t300"]
    assert not np.allclose(default.scores(query), changed.scores(query))


def test_random_small_corpora_match() -> None:
    # Tiny corpora over a tiny alphabet: many ties, many negative idfs, random parameters.
    rng = random.Random(12)
    for _ in range(300):
        corpus = [
            [rng.choice("abcdefgh") for _ in range(rng.randint(0, 12))]
            for _ in range(rng.randint(1, 25))
        ]
        if not any(corpus):
            continue  # rank_bm25 divides by zero on an empty vocabulary
        query = [rng.choice("abcdefghxy") for _ in range(rng.randint(0, 6))]
        k1, b, epsilon = rng.uniform(0.0, 3.0), rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)
        reference = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
        index = BM25Index.build(range(len(corpus)), corpus, BM25Params(k1, b, epsilon))
        expected = reference.get_scores(query)
        assert np.array_equal(index.scores(query), expected)
        ids = list(range(len(corpus)))
        assert [i for i, _ in index.top_k(query, 5)] == reference_top_k(expected, ids, 5)


# --- top_k behaviour ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_index() -> BM25Index:
    texts = sentence_corpus(300, seed=11)
    return BM25Index.build([5_000 + i for i in range(300)], analyze_many(texts), version="t1")


def test_mask_returns_only_allowed_ids(small_index: BM25Index) -> None:
    query = analyze("patient inflammation running costs")
    mask = np.zeros(len(small_index), dtype=bool)
    mask[::3] = True
    allowed = set(small_index.ids[mask].tolist())
    hits = small_index.top_k(query, 50, mask=mask)
    assert hits and {doc_id for doc_id, _ in hits} <= allowed
    unmasked = [h for h in small_index.top_k(query, len(small_index)) if h[0] in allowed]
    assert hits == unmasked[:50]
    assert small_index.top_k(query, 10, mask=np.zeros(len(small_index), dtype=bool)) == []
    with pytest.raises(ValueError, match="mask"):
        small_index.top_k(query, 10, mask=np.ones(3, dtype=bool))


def test_k_larger_than_matches(small_index: BM25Index) -> None:
    query = analyze("inflammation")
    scores = small_index.scores(query)
    hits = small_index.top_k(query, 10_000)
    assert len(hits) == int((scores > 0).sum()) < len(small_index)
    assert all(score > 0 for _, score in hits)


def test_empty_and_unknown_queries(small_index: BM25Index) -> None:
    assert small_index.top_k([], 10) == []
    assert small_index.top_k(analyze("the of and"), 10) == []
    assert small_index.top_k(["no-such-term"], 10) == []
    assert small_index.top_k(analyze("patient"), 0) == []
    assert not small_index.scores([]).any()


def test_ties_break_by_position_even_at_the_cut() -> None:
    # 50 identical documents tie; ids descend so an id-based tie-break would differ.
    corpus = [["alpha", "beta"]] * 50 + [["alpha", "alpha", "gamma"]] + [["delta"]] * 60
    ids = list(range(1_000, 1_000 - len(corpus), -1))
    index = BM25Index.build(ids, corpus)
    hits = index.top_k(["alpha"], 10)
    assert hits[0][0] == ids[50]
    assert [doc_id for doc_id, _ in hits[1:]] == ids[:9]
    assert len({score for _, score in hits[1:]}) == 1


def test_empty_indexes() -> None:
    empty = BM25Index.build([], [])
    assert len(empty) == 0
    assert empty.top_k(["a"], 5) == []
    assert empty.scores(["a"]).shape == (0,)
    blank = BM25Index.build([1, 2], [[], []])
    assert blank.top_k(["a"], 5) == []
    assert not blank.scores(["a"]).any()


def test_build_rejects_mismatched_ids_and_bad_versions() -> None:
    with pytest.raises(ValueError, match="ids"):
        BM25Index.build([1, 2], [["a"]])
    with pytest.raises(ValueError, match="version"):
        BM25Index.build([1], [["a"]], version="../evil")


# --- persistence ----------------------------------------------------------------------------


def _saved(index: BM25Index, path: Path) -> Path:
    with path.open("wb") as handle:
        index.write(handle)
    return path


def test_write_load_round_trip(tmp_path: Path, small_index: BM25Index) -> None:
    path = _saved(small_index, tmp_path / "index.npz")
    assert BM25Index.load(io.BytesIO(small_index.to_bytes())).top_k(["alpha"], 3) == \
        small_index.top_k(["alpha"], 3)
    loaded = BM25Index.load(path)
    assert loaded.version == "t1"
    assert loaded.params == small_index.params
    assert loaded.vocabulary == small_index.vocabulary
    assert np.array_equal(loaded.ids, small_index.ids)
    assert loaded.avgdl == small_index.avgdl
    rng = random.Random(5)
    terms = sorted(small_index.vocabulary)
    mask = np.arange(len(small_index)) % 2 == 0
    for _ in range(30):
        query = rng.sample(terms, rng.randint(1, 4))
        assert np.array_equal(loaded.scores(query), small_index.scores(query))
        assert loaded.top_k(query, 20) == small_index.top_k(query, 20)
        assert loaded.top_k(query, 20, mask=mask) == small_index.top_k(query, 20, mask=mask)


def test_parameters_and_unicode_terms_survive_a_round_trip(tmp_path: Path) -> None:
    corpus = [["ünïcödé", "térm"], ["plain"], []]
    first = BM25Index.build([1, 2, 3], corpus, BM25Params(k1=1.2), version="1")
    second = BM25Index.build([1, 2, 3], corpus[::-1], version="2")
    first_path = _saved(first, tmp_path / "1.npz")
    second_path = _saved(second, tmp_path / "2.npz")
    assert BM25Index.load(first_path).params == BM25Params(k1=1.2)
    assert BM25Index.load(first_path).version == "1"
    assert BM25Index.load(first_path).top_k(["ünïcödé"], 3) == first.top_k(["ünïcödé"], 3)
    assert BM25Index.load(second_path).top_k(["plain"], 3) == [(2, second.scores(["plain"])[1])]


def test_default_version_is_a_sortable_timestamp() -> None:
    index = BM25Index.build([1], [["a"]])
    assert index.version[:8].isdigit() and index.version.endswith("Z")


# --- benchmark helper -----------------------------------------------------------------------


def test_compare_with_rank_bm25_small() -> None:
    result = compare_with_rank_bm25(n_docs=2_000, n_queries=10, seed=1)
    assert result.identical is True and result.scores_identical is True
    assert result.rank_bm25_ms > 0 and result.bm25_index_ms > 0
