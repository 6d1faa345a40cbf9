"""The one text analyzer for BM25: the same function must tokenize chunks and queries.

Any difference between indexing-time and query-time analysis silently loses matches, so every
caller goes through :func:`analyze`. Steps: Unicode NFKC (full-width letters, ligatures and
compatibility digits fold onto their plain forms), lower-casing, ``\\w+`` word runs (numbers
and alphanumerics such as ``covid19`` are kept), English stop-word removal, Snowball English
stemming (PyStemmer).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import Stemmer

# Lucene's classic English stop set (the list bm25s uses for stopwords="en"). It is short on
# purpose: BM25's idf already discounts common words, and a long list would drop words such as
# "above" or "against" that carry meaning in technical text.
STOP_WORDS: frozenset[str] = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into",
        "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then",
        "there", "these", "they", "this", "to", "was", "will", "with",
    }
)  # fmt: skip

_WORD_RE = re.compile(r"\w+")
_local = threading.local()


def _stemmer() -> Stemmer.Stemmer:
    """PyStemmer objects are not safe to share between threads, so each thread gets its own."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


@lru_cache(maxsize=1 << 18)
def _stem(word: str) -> str:
    """Word frequencies are Zipfian, so a cache answers most words without calling Snowball."""
    return _stemmer().stemWord(word)


def analyze(text: str) -> list[str]:
    """Turn text into BM25 terms; used unchanged for both documents and queries."""
    if not text:
        return []
    normalized = unicodedata.normalize("NFKC", text).lower()
    return [_stem(word) for word in _WORD_RE.findall(normalized) if word not in STOP_WORDS]


def analyze_many(texts: Iterable[str]) -> list[list[str]]:
    """Analyze a batch (e.g. all chunks of a domain at rebuild time)."""
    return [analyze(text) for text in texts]
