"""Retrieval quality on BEIR datasets: runs, ranx metrics, fusion tuning and reports.

Plain functions so the ``evaluate`` command, notebooks and tests share one definition of
"the numbers". Runs go through :func:`search.retrieval.search.search`, i.e. exactly the documents
users get; only the fusion grid search re-fuses the BM25 and dense rankings offline (with
search's own fusion rule), because re-querying per setting would cost minutes per point.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.conf import settings

from kms.access import Access
from kms.store.models import Domain
from search.evaluation import stats
from search.ingestion import spaces
from search.ingestion.beir import beir_prefix
from search.retrieval import index_cache
from search.retrieval import index_store as bm25_store
from search.retrieval.reranking import Reranker
from search.retrieval.search import FusionOptions, SearchError, fuse, search

METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
METRIC_LABELS = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10",
                 "map@100": "MAP@100"}
RRF_KS = (10, 20, 40, 60, 100)
BM25_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Documents of the domain that are not from the dataset keep their rank in the run under a key
# no BEIR id can equal, so they count as non-relevant instead of silently moving others up.
OTHER_PREFIX = "<other>:"

# Evaluation measures the ranking itself, over every document of the dataset.
EVALUATION = Access.everything("retrieval evaluation")

RunDict = dict[str, dict[str, float]]
QrelsDict = Mapping[str, Mapping[str, int]]
OnQuery = Callable[[str], None]


def candidate_count(k: int, candidates: int | None) -> int:
    """Candidates per retriever (documents for BM25, chunks for dense): 3x the documents
    wanted, since a document's chunks compete for the dense candidates."""
    return candidates or max(300, 3 * k)


def doc_key(source: str, document_id: int, source_prefix: str) -> str:
    """The BEIR corpus id of a hit, or a never-relevant placeholder for other documents."""
    if source.startswith(source_prefix):
        return source[len(source_prefix):]
    return f"{OTHER_PREFIX}{document_id}"


@dataclass
class QueryRun:
    """A ranx-style run of one mode plus what it cost per query."""

    mode: str
    run: RunDict
    latencies_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def latency(self) -> dict[str, float]:
        """p50/p95/mean/max of per-query wall time, in milliseconds."""
        return latency_summary(self.latencies_ms.values())


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    times = np.fromiter(values, dtype=np.float64)
    if times.size == 0:
        return {}
    return {f"{name}_ms": value for name, value in stats.percentiles(times, (50, 95)).items()} | {
        "mean_ms": float(times.mean()),
        "max_ms": float(times.max()),
    }


def run_queries(
    queries: Mapping[str, str],
    *,
    domain: str,
    mode: str,
    k: int = 100,
    fusion: FusionOptions | None = None,
    candidates: int | None = None,
    source_prefix: str,
    on_query: OnQuery | None = None,
    rerank: bool | Reranker = False,
) -> QueryRun:
    """Search every query as a user would (unrestricted access) and record the ranking.

    One untimed warm-up query first, so loading the model and the index is not charged to
    the first query's latency. A query ``search`` rejects gets an empty ranking (scored as 0)
    and its message in ``errors``. ``rerank``: True for the domain's promoted reranker, or
    a ``Reranker`` (another depth).
    """
    n = candidate_count(k, candidates)
    result = QueryRun(mode, {})
    for text in list(queries.values())[:1]:
        with contextlib.suppress(SearchError):  # reported with the query below
            search(text, domain=domain, access=EVALUATION, mode=mode, k=k, fusion=fusion,
                   candidates=n, rerank=rerank)
    for qid, text in queries.items():
        started = time.perf_counter()
        try:
            response = search(text, domain=domain, access=EVALUATION, mode=mode, k=k,
                              fusion=fusion, candidates=n, rerank=rerank)
        except SearchError as exc:
            result.run[qid] = {}
            result.errors[qid] = str(exc)
        else:
            result.run[qid] = {
                doc_key(hit.source, hit.document_id, source_prefix): hit.score
                for hit in response.documents
            }
        result.latencies_ms[qid] = (time.perf_counter() - started) * 1000
        if on_query is not None:
            on_query(qid)
    return result


def evaluate_run(qrels: QrelsDict, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, Recall@100, MRR@10 and MAP@100 over the queries of ``qrels``.

    A qrels query the run lacks (or has no hits for) scores 0 on every metric, as in BEIR;
    queries without a relevant document (nothing to find) and run queries without qrels are
    left out. ranx cannot build a run in which every query is empty, so that case is answered
    directly.
    """
    from ranx import Qrels, Run, evaluate

    judged = {qid: dict(docs) for qid, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not judged:
        raise ValueError("The qrels have no judged queries.")
    ranked = {qid: {doc: float(score) for doc, score in run.get(qid, {}).items()}
              for qid in judged}
    if not any(ranked.values()):
        return dict.fromkeys(METRICS, 0.0)
    scores = evaluate(Qrels(judged), Run(ranked), list(METRICS))
    return {metric: float(scores[metric]) for metric in METRICS}


@dataclass
class TuningRow:
    fusion: FusionOptions
    metrics: dict[str, float]

    def label(self) -> str:
        if self.fusion.method == "rrf":
            return f"rrf k={self.fusion.rrf_k}"
        return f"weighted bm25_weight={self.fusion.bm25_weight:g}"

    def env(self) -> dict[str, str]:
        """The settings that make this the default fusion of ``search``."""
        if self.fusion.method == "rrf":
            return {"KMS_FUSION": "rrf", "KMS_RRF_K": str(self.fusion.rrf_k)}
        return {"KMS_FUSION": "weighted",
                "KMS_FUSION_BM25_WEIGHT": f"{self.fusion.bm25_weight:g}"}


@dataclass
class TuningResult:
    rows: list[TuningRow]  # grid order
    baselines: dict[str, dict[str, float]]  # bm25 and dense alone, same queries
    queries: int

    @property
    def best(self) -> TuningRow:
        """Highest nDCG@10; on a tie the earlier grid point (rrf first, smaller k/weight)."""
        return max(self.rows, key=lambda row: row.metrics["ndcg@10"])


def fusion_grid(
    rrf_ks: Iterable[int] = RRF_KS, bm25_weights: Iterable[float] = BM25_WEIGHTS
) -> list[FusionOptions]:
    grid = [FusionOptions("rrf", rrf_k=k) for k in rrf_ks]
    grid += [FusionOptions("weighted", bm25_weight=round(w, 4)) for w in bm25_weights]
    return [options.validate() for options in grid]


def tune_fusion(
    queries: Mapping[str, str],
    qrels: QrelsDict,
    *,
    domain: str,
    source_prefix: str,
    k: int = 100,
    candidates: int | None = None,
    grid: list[FusionOptions] | None = None,
    on_query: OnQuery | None = None,
) -> TuningResult:
    """nDCG@10 (and the rest) of hybrid search for every fusion setting of ``grid``.

    Tune on a training split only: choosing the setting on test queries inflates the test
    figures. Each query's BM25 and dense document rankings are retrieved once, in full (every
    candidate, through ``search`` itself, so this follows whatever the retrievers do), and
    fused offline per setting with the fusion rule ``search`` uses in hybrid mode.
    """
    grid = grid or fusion_grid()
    n = candidate_count(k, candidates)
    qids = [qid for qid in qrels if qid in queries]
    lists: dict[str, dict[str, list[tuple[int, float]]]] = {}
    keys: dict[int, str] = {}
    for qid in qids:
        lists[qid] = {
            mode: document_ranking(queries[qid], domain=domain, mode=mode, candidates=n,
                                   source_prefix=source_prefix, keys=keys)
            for mode in ("bm25", "dense")
        }
        if on_query is not None:
            on_query(qid)

    def evaluate_fused(mode: str, fusion: FusionOptions) -> dict[str, float]:
        run = {
            qid: {keys[doc]: score
                  for doc, score in fuse(mode, pair["bm25"], pair["dense"], fusion)[:k]}
            for qid, pair in lists.items()
        }
        return evaluate_run(qrels, run)

    default = FusionOptions()
    baselines = {mode: evaluate_fused(mode, default) for mode in ("bm25", "dense")}
    rows = [TuningRow(options, evaluate_fused("hybrid", options)) for options in grid]
    return TuningResult(rows, baselines, len(qids))


def document_ranking(
    text: str, *, domain, mode: str, candidates: int, source_prefix: str, keys: dict[int, str]
) -> list[tuple[int, float]]:
    """One retriever's whole document ranking for a query (every candidate, through
    ``search``), as hybrid search fuses it; each hit's BEIR key goes into ``keys``. A query
    ``search`` rejects ranks nothing."""
    try:
        response = search(text, domain=domain, access=EVALUATION, mode=mode,
                          k=min(candidates, 1000), candidates=candidates,  # search's k limit
                          chunks_per_document=1)
    except SearchError:
        return []
    for hit in response.documents:
        keys.setdefault(hit.document_id, doc_key(hit.source, hit.document_id, source_prefix))
    return [(hit.document_id, hit.score) for hit in response.documents]


def settings_used(
    *, domain: str, fusion: FusionOptions, k: int, candidates: int | None
) -> dict[str, object]:
    """What produced the numbers, so two reports can be compared (or not)."""
    chunks = index_cache.current_index(domain, "chunks")
    documents = index_cache.current_index(domain, "documents")
    params = (documents or chunks).params if (documents or chunks) else bm25_store.params()
    space = spaces.served_space(Domain.objects.get(slug=domain))
    return {
        "fusion": asdict(fusion),
        "k": k,
        "candidates": candidate_count(k, candidates),
        "bm25": {
            "k1": params.k1, "b": params.b, "epsilon": params.epsilon,
            "chunk_index": _index_info(chunks), "document_index": _index_info(documents),
        },
        "hnsw_ef_search": settings.KMS_HNSW_EF_SEARCH,
        "embedding_model": space.name,
        "embedding_backend": space.backend,
        "chunk_tokens": settings.KMS_CHUNK_TOKENS,
        "chunk_overlap": settings.KMS_CHUNK_OVERLAP,
    }


def _index_info(index) -> dict[str, object] | None:
    return None if index is None else {"version": index.version, "size": len(index)}


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_report(report: dict, output_dir: Path) -> tuple[Path, Path]:
    """Write ``<dataset>-<split>[-tune]-<time>.json`` and a bar chart ``.png`` beside it.

    ``report["modes"]`` maps each mode to ``{"metrics": {...}}``; the chart groups the four
    metrics and draws one bar per mode. File names carry the time so runs never overwrite.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.get("timestamp") or timestamp()
    report = {**report, "timestamp": stamp}
    kind = "-tune" if "tuning" in report else ""
    stem = f"{report.get('dataset', 'dataset')}-{report.get('split', 'split')}{kind}-" + (
        stamp.replace(":", "").replace("-", "")
    )
    json_path = output_dir / f"{stem}.json"
    png_path = output_dir / f"{stem}.png"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    _plot(report, png_path)
    return json_path, png_path


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report.get("modes", {}))
    positions = np.arange(len(METRICS))
    width = 0.8 / max(len(modes), 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, mode in enumerate(modes):
        values = [report["modes"][mode]["metrics"].get(metric, 0.0) for metric in METRICS]
        bars = ax.bar(positions + (i - (len(modes) - 1) / 2) * width, values, width,
                      label=mode)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(positions, [METRIC_LABELS[m] for m in METRICS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    title = f"{report.get('dataset', '')} ({report.get('split', '')}"
    title += f", {report['counts']['queries']} queries)" if "counts" in report else ")"
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = [
    "BM25_WEIGHTS", "METRICS", "RRF_KS", "QueryRun", "TuningResult", "TuningRow", "beir_prefix",
    "evaluate_run", "fusion_grid", "latency_summary", "run_queries", "settings_used",
    "tune_fusion", "write_report",
]
