"""Encoder backends side by side: throughput, query latency, agreement with torch, quality.

Every backend encodes the same texts (a domain's served chunks, as ingestion embeds them)
and the same queries in one run. Quality is measured offline so that no backend's vectors
are written into the domain: dense rankings by exact cosine over that backend's chunk
vectors, hybrid by fusing them with the domain's BM25 rankings (from ``search`` itself) with
the fusion rule and settings ``search`` uses. Exact search is what HNSW approximates, so the
backends are compared without the index's own noise; ``evaluate`` gives the served figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kms.access import Access, chunk_filter
from kms.store.models import Chunk, Domain
from search.evaluation import stats
from search.evaluation.retrieval import (
    QrelsDict,
    candidate_count,
    doc_key,
    document_ranking,
    evaluate_run,
)
from search.ingestion.embedding import Embedder, checked_model_path, passage_text
from search.retrieval.search import FusionOptions, best_chunk_per_document, fuse

EVALUATION = Access.everything("encoder benchmark")
K = 100  # documents ranked per query, as ``evaluate``
QUALITY_TOLERANCE = 0.005  # hybrid nDCG@10 a faster backend may lose against torch

OnProgress = Callable[[str], None]


@dataclass
class Corpus:
    """A domain's served chunks: what is embedded, and whose document each one is."""

    chunk_ids: np.ndarray
    document_ids: np.ndarray
    texts: list[str]
    keys: dict[int, str]  # document id -> BEIR id (or a never-relevant placeholder)


@dataclass
class BackendRow:
    backend: str
    used: str  # the backend that really ran (torch after a fallback)
    space: str
    load_seconds: float
    chunks: int
    encode_seconds: float
    query_ms: dict[str, float]
    agreement: dict[str, float] = field(default_factory=dict)  # cosine with torch's vectors
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> metric

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.encode_seconds if self.encode_seconds else 0.0


def load_corpus(domain: Domain, source_prefix: str, limit: int | None = None) -> Corpus:
    rows = list(
        Chunk.objects.filter(chunk_filter(EVALUATION, domain))
        .order_by("pk")
        .values_list("pk", "document_id", "document__source", "document__title", "heading",
                     "text")[:limit]
    )
    if not rows:
        raise ValueError(f"Domain {domain.slug} has no served chunks to encode.")
    return Corpus(
        chunk_ids=np.array([row[0] for row in rows], dtype=np.int64),
        document_ids=np.array([row[1] for row in rows], dtype=np.int64),
        texts=[passage_text(title, heading, text) for *_, title, heading, text in rows],
        keys={row[1]: doc_key(row[2], row[1], source_prefix) for row in rows},
    )


def bm25_rankings(queries: Mapping[str, str], domain: Domain, corpus: Corpus,
                  source_prefix: str) -> dict[str, list[tuple[int, float]]]:
    """Each query's BM25 document ranking, as hybrid search fuses it."""
    return {
        qid: document_ranking(text, domain=domain, mode="bm25",
                              candidates=candidate_count(K, None),
                              source_prefix=source_prefix, keys=corpus.keys)
        for qid, text in queries.items()
    }


def compare_backends(
    backends: Sequence[str],
    corpus: Corpus,
    queries: Mapping[str, str],
    *,
    qrels: QrelsDict | None = None,
    bm25: Mapping[str, list[tuple[int, float]]] | None = None,
    model_path: Path | None = None,
    batch_size: int = 32,
    on_progress: OnProgress | None = None,
) -> list[BackendRow]:
    """One row per backend, torch first (the reference for agreement and quality)."""
    path = checked_model_path(model_path)
    order = ["torch", *[b for b in backends if b != "torch"]]
    reference: np.ndarray | None = None
    rows = []
    report = on_progress or (lambda _: None)
    for backend in order:
        report(f"{backend}: loading")
        started = time.perf_counter()
        embedder = Embedder(path, backend)
        embedder.encode(corpus.texts[:batch_size], batch_size)  # load and warm up
        load_seconds = time.perf_counter() - started
        report(f"{backend}: encoding {len(corpus.texts)} chunk texts")
        started = time.perf_counter()
        vectors = embedder.encode(corpus.texts, batch_size)
        encode_seconds = time.perf_counter() - started
        report(f"{backend}: {len(queries)} queries, one at a time")
        latencies, query_vectors = [], []
        for text in queries.values():
            started = time.perf_counter()
            query_vectors.append(embedder.encode([text], batch_size)[0])
            latencies.append((time.perf_counter() - started) * 1000)
        row = BackendRow(
            backend=backend, used=embedder.backend_used, space=embedder.version,
            load_seconds=load_seconds, chunks=len(corpus.texts), encode_seconds=encode_seconds,
            query_ms=stats.percentiles(latencies, (50, 95)),
        )
        if reference is None:
            reference = vectors
        cosines = np.sum(vectors * reference, axis=1)
        row.agreement = {"mean": float(cosines.mean()), "p1": float(np.percentile(cosines, 1)),
                         "min": float(cosines.min())}
        if qrels is not None and bm25 is not None:
            row.metrics = quality(corpus, dict(zip(queries, query_vectors, strict=True)),
                                  vectors, qrels, bm25)
        rows.append(row)
    return rows


def rankings(corpus: Corpus, query_vectors: Mapping[str, np.ndarray], vectors: np.ndarray,
             bm25: Mapping[str, list[tuple[int, float]]]) -> dict[str, dict[str, dict]]:
    """Dense and hybrid runs of one backend's vectors: exact cosine, then search's rules
    (best chunk per document, the configured fusion) on the same candidate counts."""
    candidates = candidate_count(K, None)
    fusion = FusionOptions.from_settings().validate()
    owners = dict(zip(corpus.chunk_ids.tolist(), corpus.document_ids.tolist(), strict=True))
    runs: dict[str, dict[str, dict[str, float]]] = {"dense": {}, "hybrid": {}}
    for qid, query in query_vectors.items():
        scores = vectors @ query
        top = np.argpartition(-scores, min(candidates, len(scores) - 1))[:candidates]
        top = top[np.lexsort((corpus.chunk_ids[top], -scores[top]))]
        dense_chunks = [(int(corpus.chunk_ids[i]), float(scores[i])) for i in top]
        dense = best_chunk_per_document(dense_chunks, owners)
        for mode in ("dense", "hybrid"):
            ranking = fuse(mode, bm25.get(qid, []), dense, fusion)[:K]
            runs[mode][qid] = {corpus.keys[doc]: score for doc, score in ranking}
    return runs


def quality(corpus: Corpus, query_vectors: Mapping[str, np.ndarray], vectors: np.ndarray,
            qrels: QrelsDict, bm25: Mapping[str, list[tuple[int, float]]]) -> dict:
    """Dense and hybrid metrics of one backend's vectors."""
    runs = rankings(corpus, query_vectors, vectors, bm25)
    return {mode: evaluate_run(qrels, run) for mode, run in runs.items()}


def fastest_within(rows: Sequence[BackendRow], tolerance: float = QUALITY_TOLERANCE
                   ) -> BackendRow | None:
    """The fastest backend whose hybrid nDCG@10 is within ``tolerance`` of torch's."""
    torch_row = next((row for row in rows if row.backend == "torch"), None)
    if torch_row is None or "hybrid" not in torch_row.metrics:
        return None
    floor = torch_row.metrics["hybrid"]["ndcg@10"] - tolerance
    eligible = [row for row in rows if row.used == row.backend
                and row.metrics.get("hybrid", {}).get("ndcg@10", -1.0) >= floor]
    return max(eligible, key=lambda row: row.chunks_per_second, default=None)


def format_table(rows: Sequence[BackendRow]) -> str:
    base = rows[0].chunks_per_second if rows else 0.0
    header = (f"{'backend':<10} {'ran':<10} {'load s':>7} {'chunks/s':>9} {'x torch':>8} "
              f"{'query p50':>10} {'p95 ms':>7} {'cos mean':>9} {'cos min':>8} "
              f"{'dense nDCG':>11} {'hybrid nDCG':>12}")
    lines = [header, "-" * len(header)]
    for row in rows:
        metrics = [row.metrics.get(mode, {}).get("ndcg@10") for mode in ("dense", "hybrid")]
        quality_cells = " ".join(
            f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"
            for value, width in zip(metrics, (11, 12), strict=True)
        )
        lines.append(
            f"{row.backend:<10} {row.used:<10} {row.load_seconds:>7.1f} "
            f"{row.chunks_per_second:>9.1f} {row.chunks_per_second / base:>8.2f} "
            f"{row.query_ms['p50']:>10.2f} {row.query_ms['p95']:>7.2f} "
            f"{row.agreement['mean']:>9.5f} {row.agreement['min']:>8.5f} {quality_cells}"
        )
    return "\n".join(lines)
