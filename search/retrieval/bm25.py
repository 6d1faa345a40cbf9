"""BM25Okapi scoring served from a precomputed sparse matrix.

The product requires rank-bm25's ``BM25Okapi`` scores (k1, b, epsilon), but rank-bm25 walks
every document in Python for every query term, which is far too slow at 100k chunks. Here the
per-(term, document) contribution is computed once at build time into a CSR matrix of
terms x documents; a query then only touches the postings of its own terms.

Scores are bit-for-bit equal to ``BM25Okapi(corpus).get_scores(query)``, not merely close:
idf uses ``math.log`` in the same form, the average idf is summed in rank-bm25's order
(vocabulary in first-occurrence order), every contribution is evaluated with the same float64
operations in the same order, and query terms are added one by one, with repetition, as
rank-bm25 does. Equal floats matter because ties and near-ties decide rankings.

One deliberate difference: where rank-bm25 divides 0 by 0 (a term absent from a document
whose length norm ``k1 * (1 - b + b * dl / avgdl)`` is 0, i.e. an empty document with b = 1,
or any document with k1 = 0) it returns NaN for that document on every non-empty query; here
the absent term contributes 0, as it does for every other document.

The index is immutable: updates are rebuilds from the database (per domain), saved under a new
version and swapped in atomically.
"""

from __future__ import annotations

import io
import json
import math
import re
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp

FORMAT_VERSION = 1
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class BM25Params:
    """rank-bm25 ``BM25Okapi`` parameters, with its defaults."""

    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25


def default_version() -> str:
    """A UTC timestamp to the microsecond: unique enough for rebuilds and sorts by age."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _check_version(version: str) -> str:
    """The version becomes part of a file name, so keep it to safe characters."""
    if not _VERSION_RE.match(version):
        raise ValueError(f"invalid BM25 index version {version!r}: use [A-Za-z0-9._-]")
    return version


def _encode_terms(terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Terms as one UTF-8 blob plus offsets: compact and safe for any token text."""
    encoded = [term.encode("utf-8") for term in terms]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return blob, offsets


def _decode_terms(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    bounds = offsets.tolist()
    return [raw[start:end].decode("utf-8") for start, end in zip(bounds, bounds[1:], strict=False)]


class BM25Index:
    """An immutable BM25Okapi index over documents identified by integer ids.

    ``ids[i]`` is the caller's id (e.g. a chunk primary key) of document position ``i``.
    """

    def __init__(
        self,
        *,
        ids: np.ndarray,
        vocabulary: dict[str, int],
        matrix: sp.csr_matrix,
        params: BM25Params,
        version: str,
        avgdl: float,
        average_idf: float,
    ) -> None:
        self.ids = ids
        self.vocabulary = vocabulary
        self.matrix = matrix
        self.params = params
        self.version = _check_version(version)
        self.avgdl = avgdl
        self.average_idf = average_idf
        # Raw CSR parts, read directly on the hot path.
        self._indptr = matrix.indptr
        self._indices = matrix.indices
        self._data = matrix.data

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"BM25Index(version={self.version!r}, docs={len(self)}, "
            f"terms={len(self.vocabulary)}, postings={self._data.shape[0]})"
        )

    @classmethod
    def build(
        cls,
        ids: Sequence[int],
        corpus_tokens: Sequence[Sequence[str]],
        params: BM25Params | None = None,
        version: str | None = None,
    ) -> BM25Index:
        """Index tokenized documents exactly as ``BM25Okapi(corpus_tokens, k1, b, epsilon)``."""
        params = params or BM25Params()
        version = _check_version(version or default_version())
        if len(ids) != len(corpus_tokens):
            raise ValueError(f"{len(ids)} ids for {len(corpus_tokens)} documents")
        id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        n_docs = len(corpus_tokens)

        # Term ids in order of first occurrence: rank-bm25 sums idfs in its dict's insertion
        # order, which is exactly this order, and float addition is order-sensitive.
        vocabulary: dict[str, int] = {}
        lookup = vocabulary.setdefault
        term_ids = array("q")  # 8 bytes per token, not a Python int object each
        doc_len = np.zeros(n_docs, dtype=np.int64)
        for position, doc in enumerate(corpus_tokens):
            doc_len[position] = len(doc)
            term_ids.extend([lookup(token, len(vocabulary)) for token in doc])
        n_terms = len(vocabulary)
        total_len = int(doc_len.sum())
        avgdl = total_len / n_docs if n_docs else 0.0

        # (term, doc) pairs -> term frequencies, sorted by term then doc: the CSR layout.
        terms = np.frombuffer(term_ids, dtype=np.int64) if term_ids else np.zeros(0, np.int64)
        docs = np.repeat(np.arange(n_docs, dtype=np.int64), doc_len)
        keys, tf = np.unique(terms * max(n_docs, 1) + docs, return_counts=True)
        posting_term = keys // max(n_docs, 1)
        posting_doc = keys - posting_term * max(n_docs, 1)
        doc_freq = np.bincount(posting_term, minlength=n_terms)

        idf, average_idf = _okapi_idf(doc_freq.tolist(), n_docs, params.epsilon)

        k1, b = params.k1, params.b
        # Same expression and evaluation order as BM25Okapi.get_scores, per posting.
        # avgdl is 0 only when there are no tokens at all, hence no postings to score.
        length_norm = k1 * (1 - b + b * doc_len / avgdl) if avgdl else np.zeros(n_docs)
        tf_float = tf.astype(np.float64)
        data = idf[posting_term] * (tf_float * (k1 + 1) / (tf_float + length_norm[posting_doc]))

        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(doc_freq, out=indptr[1:])
        index_dtype = np.int32 if max(n_docs, data.shape[0]) < 2**31 else np.int64
        matrix = sp.csr_matrix(
            (data, posting_doc.astype(index_dtype), indptr.astype(index_dtype)),
            shape=(n_terms, n_docs),
        )
        return cls(
            ids=id_array,
            vocabulary=vocabulary,
            matrix=matrix,
            params=params,
            version=version,
            avgdl=avgdl,
            average_idf=average_idf,
        )

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """One score per document position, equal to ``BM25Okapi.get_scores(query_tokens)``.

        Terms are added one at a time in query order, repeats included, because that is how
        rank-bm25 accumulates and it keeps the float sums identical. Unknown terms add 0.
        """
        scores = np.zeros(len(self), dtype=np.float64)
        indptr, indices, data = self._indptr, self._indices, self._data
        for token in query_tokens:
            term = self.vocabulary.get(token)
            if term is None:
                continue
            start, end = indptr[term], indptr[term + 1]
            # Column indices within a row are unique, so buffered fancy-index add is exact.
            scores[indices[start:end]] += data[start:end]
        return scores

    def top_k(
        self, query_tokens: Sequence[str], k: int, mask: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """The best ``k`` documents with score > 0 (and ``mask`` True) as ``(id, score)``.

        Order: score descending, then document position ascending, so ties are broken the
        same way on every call and every machine.
        """
        if k <= 0 or len(self) == 0:
            return []
        scores = self.scores(query_tokens)
        eligible = scores > 0
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != scores.shape:
                raise ValueError(f"mask has shape {mask.shape}, expected {scores.shape}")
            eligible &= mask
        positions = np.flatnonzero(eligible)
        if positions.shape[0] > k:
            candidate_scores = scores[positions]
            kth = -np.partition(-candidate_scores, k - 1)[k - 1]
            # Everything above the k-th score is in; ties at it are cut by position below.
            above = positions[candidate_scores > kth]
            tied = positions[candidate_scores == kth][: k - above.shape[0]]
            positions = np.concatenate([above, tied])
        ordered = positions[np.lexsort((positions, -scores[positions]))]
        return list(zip(self.ids[ordered].tolist(), scores[ordered].tolist(), strict=True))

    def write(self, handle: BinaryIO) -> None:
        """The index as an uncompressed ``.npz``: loading a 100k-document index is a few
        large reads, and the bytes are what nodes share (see ``index_artifacts``)."""
        terms = [""] * len(self.vocabulary)
        for term, term_id in self.vocabulary.items():
            terms[term_id] = term
        term_blob, term_offsets = _encode_terms(terms)
        meta = {
            "format": FORMAT_VERSION,
            "version": self.version,
            "params": asdict(self.params),
            "n_docs": len(self),
            "n_terms": len(self.vocabulary),
            "avgdl": self.avgdl,
            "average_idf": self.average_idf,
            "created": datetime.now(UTC).isoformat(),
        }
        np.savez(
            handle,
            meta=np.array(json.dumps(meta)),
            ids=self.ids,
            indptr=self._indptr,
            indices=self._indices,
            data=self._data,
            term_blob=term_blob,
            term_offsets=term_offsets,
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, source: Path | BinaryIO) -> BM25Index:
        """Read an index written by :meth:`write` from a file path or a binary stream."""
        path = source if hasattr(source, "read") else Path(source)
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported BM25 index format {meta.get('format')!r}")
            ids = archive["ids"]
            indptr = archive["indptr"]
            indices = archive["indices"]
            data = archive["data"]
            terms = _decode_terms(archive["term_blob"], archive["term_offsets"])
        matrix = sp.csr_matrix(
            (data, indices, indptr), shape=(meta["n_terms"], meta["n_docs"]), copy=False
        )
        return cls(
            ids=ids,
            vocabulary=dict(zip(terms, range(len(terms)), strict=True)),
            matrix=matrix,
            params=BM25Params(**meta["params"]),
            version=meta["version"],
            avgdl=meta["avgdl"],
            average_idf=meta["average_idf"],
        )


def _okapi_idf(doc_freq: Sequence[int], n_docs: int, epsilon: float) -> tuple[np.ndarray, float]:
    """rank-bm25's ``BM25Okapi._calc_idf``, same formula, same summation order.

    Negative idfs (terms in more than half the documents) are replaced by
    ``epsilon * average_idf``. ``math.log`` rather than ``np.log`` because NumPy's vectorized
    log may differ from libm in the last bit.
    """
    idf = [math.log(n_docs - freq + 0.5) - math.log(freq + 0.5) for freq in doc_freq]
    idf_sum = 0.0
    for value in idf:
        idf_sum += value
    average_idf = idf_sum / len(idf) if idf else 0.0
    eps = epsilon * average_idf
    return np.array([eps if value < 0 else value for value in idf], dtype=np.float64), average_idf
