"""manage.py evaluate DIR --domain D: BEIR metrics per search mode, or a fusion grid search."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from kms.store.models import Document, Domain
from search.evaluation import retrieval as evaluation
from search.ingestion.beir import DatasetError, read_split
from search.management.cli import domain_or_error
from search.retrieval import index_cache, reranking
from search.retrieval import index_store as bm25_store
from search.retrieval.search import FUSION_METHODS, MODES, FusionOptions, SearchError


class Command(BaseCommand):
    help = (
        "Evaluate search on a BEIR dataset imported with import_beir: nDCG@10, Recall@100, "
        "MRR@10, MAP@100 and latency per mode, written as JSON and a PNG chart. With --tune, "
        "grid-search the hybrid fusion instead (use --split train: never tune on test)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset_dir", type=Path)
        parser.add_argument("--domain", required=True)
        parser.add_argument("--split", default="test", help="qrels/<split>.tsv (default test).")
        parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated.")
        parser.add_argument("--k", type=int, default=100, help="Documents ranked per query.")
        parser.add_argument("--candidates", type=int, default=None,
                            help="Candidates per retriever (default max(300, 3k)).")
        parser.add_argument("--output", type=Path, default=Path("reports"))
        parser.add_argument("--fusion", choices=FUSION_METHODS, default=None,
                            help="Hybrid fusion (default: KMS_FUSION).")
        parser.add_argument("--rrf-k", type=int, default=None, help="Default: KMS_RRF_K.")
        parser.add_argument("--bm25-weight", type=float, default=None,
                            help="Weighted fusion's BM25 share (default: KMS_FUSION_BM25_WEIGHT).")
        parser.add_argument("--rerank-depths", type=_depths, default=[],
                            help="With a promoted reranker: also hybrid reranked at each of "
                                 "these depths, e.g. 10,20,30 (default: its served depth).")
        parser.add_argument("--rerank-weights", type=_weights, default=[],
                            help="With --rerank-depths: also each of these reranker weights "
                                 "against the fused score, e.g. 0.3,0.7,1 (default: served).")
        parser.add_argument("--tune", action="store_true",
                            help="Grid-search RRF k and the BM25 weight on --split.")

    def handle(self, *args, **options) -> None:
        dataset_dir: Path = options["dataset_dir"]
        split: str = options["split"]
        try:
            queries, qrels = read_split(dataset_dir, split)
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        domain = domain_or_error(options["domain"])
        prefix = evaluation.beir_prefix(dataset_dir)
        documents, unserved = _check_imported(domain, dataset_dir, prefix)
        if unserved:
            self.stderr.write(f"Warning: {unserved} of {documents} documents of the dataset "
                              "are not ready yet; they cannot be found.")
        k = options["k"]
        if not 1 <= k <= 1000:
            raise CommandError("--k must be between 1 and 1000.")
        if k < 100:
            self.stderr.write(f"Note: with --k {k}, Recall@100 and MAP@100 only see {k} hits.")
        modes = [m.strip() for m in options["modes"].split(",") if m.strip()]
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise CommandError(f"Unknown --modes {unknown or modes}; use some of {MODES}.")
        if options["tune"]:
            modes = ["bm25", "dense", "hybrid"]
        self._check_bm25_index(domain, modes)
        fusion = self._fusion(options)
        missing = [qid for qid in qrels if qid not in queries]
        if missing:
            self.stderr.write(f"Warning: {len(missing)} qrels queries have no text in "
                              "queries.jsonl; they count as 0.")
        split_queries = {qid: queries[qid] for qid in qrels if qid in queries}
        counts = {
            "queries": len(split_queries), "qrels_queries": len(qrels),
            "relevant_pairs": sum(1 for docs in qrels.values() for r in docs.values() if r > 0),
            "dataset_documents_in_domain": documents,
            "documents_in_domain": Document.objects.filter(domain=domain).count(),
        }
        report = {
            "dataset": dataset_dir.resolve().name, "dataset_dir": str(dataset_dir.resolve()),
            "split": split, "domain": domain.slug, "timestamp": evaluation.timestamp(),
            "counts": counts,
            "settings": evaluation.settings_used(domain=domain.slug, fusion=fusion, k=k,
                                                 candidates=options["candidates"]),
        }
        try:
            if options["tune"]:
                self._tune(report, split_queries, qrels, prefix, options)
            else:
                self._evaluate(report, split_queries, qrels, prefix, modes, fusion, options)
        except SearchError as exc:
            raise CommandError(str(exc)) from exc
        json_path, png_path = evaluation.write_report(report, options["output"])
        self.stdout.write(f"Report: {json_path}\nChart:  {png_path}")

    def _evaluate(self, report, queries, qrels, prefix, modes, fusion, options) -> None:
        report["modes"] = {}
        runs: list[tuple[str, str, bool | reranking.Reranker]] = [
            (mode, mode, False) for mode in modes]
        served = reranking.served_reranker(Domain.objects.get(slug=report["domain"]))
        if "hybrid" in modes and served is not None:  # the promoted reranker, beside
            weights = options["rerank_weights"]
            for depth in options["rerank_depths"] or [served.depth]:
                for weight in weights or [served.weight]:
                    label = f"hybrid+rerank@{depth}" + (f" w={weight:g}" if weights else "")
                    runs.append((label, "hybrid", replace(served, depth=depth, weight=weight)))
        for label, mode, rerank in runs:
            with tqdm(total=len(queries), desc=f"{label:>6}", unit="q", mininterval=1) as bar:
                result = evaluation.run_queries(
                    queries, domain=report["domain"], mode=mode, k=options["k"], fusion=fusion,
                    candidates=options["candidates"], source_prefix=prefix,
                    on_query=lambda _qid, bar=bar: bar.update(1), rerank=rerank,
                )
            report["modes"][label] = {
                "metrics": evaluation.evaluate_run(qrels, result.run),
                "latency": result.latency(),
                "queries_without_hits": sum(1 for hits in result.run.values() if not hits),
                "errors": result.errors,
            }
            for qid, message in list(result.errors.items())[:5]:
                self.stderr.write(f"  {label} query {qid} rejected: {message}")
        self.stdout.write(
            f"\n{report['dataset']} {report['split']}: {report['counts']['queries']} queries, "
            f"domain {report['domain']}, fusion {_fusion_label(fusion)}\n"
        )
        self.stdout.write(_table(report["modes"]))

    def _tune(self, report, queries, qrels, prefix, options) -> None:
        if report["split"] == "test":
            self.stderr.write(
                "Warning: tuning on the test split makes the test figures optimistic. "
                "Tune with --split train and evaluate the chosen setting on test."
            )
        with tqdm(total=len(queries), desc="candidates", unit="q", mininterval=1) as bar:
            tuning = evaluation.tune_fusion(
                queries, qrels, domain=report["domain"], source_prefix=prefix, k=options["k"],
                candidates=options["candidates"], on_query=lambda _qid: bar.update(1),
            )
        best = tuning.best
        report["modes"] = {
            "bm25": {"metrics": tuning.baselines["bm25"]},
            "dense": {"metrics": tuning.baselines["dense"]},
            f"hybrid ({best.label()})": {"metrics": best.metrics},
        }
        report["tuning"] = {
            "grid": [{"fusion": asdict(row.fusion), "metrics": row.metrics} for row in tuning.rows],
            "best": {"fusion": asdict(best.fusion), "metrics": best.metrics, "env": best.env()},
        }
        self.stdout.write(
            f"\nFusion grid on {report['dataset']} {report['split']} "
            f"({tuning.queries} queries), hybrid mode:\n"
        )
        rows = {"bm25 alone": {"metrics": tuning.baselines["bm25"]},
                "dense alone": {"metrics": tuning.baselines["dense"]}}
        rows |= {row.label(): {"metrics": row.metrics} for row in tuning.rows}
        self.stdout.write(_table(rows, best=best.label()))
        env = " ".join(f"{name}={value}" for name, value in best.env().items())
        self.stdout.write(
            f"\nBest: {best.label()} (nDCG@10 {best.metrics['ndcg@10']:.4f}).\n"
            f"To make it the default, set: {env}\n"
        )

    def _fusion(self, options) -> FusionOptions:
        default = FusionOptions.from_settings()
        fusion = FusionOptions(
            options["fusion"] or default.method,
            default.rrf_k if options["rrf_k"] is None else options["rrf_k"],
            default.bm25_weight if options["bm25_weight"] is None else options["bm25_weight"],
        )
        try:
            return fusion.validate()
        except SearchError as exc:
            raise CommandError(str(exc)) from exc

    def _check_bm25_index(self, domain: Domain, modes: list[str]) -> None:
        """Missing indexes: stop. Stale ones: warn, since BM25 figures would be too low."""
        if not {"bm25", "hybrid"} & set(modes):
            return
        try:
            chunks = index_cache.current_index(domain.slug, "chunks")
            documents = index_cache.current_index(domain.slug, "documents")
        except index_cache.IndexUnavailable as exc:
            raise CommandError(f"{exc}. Rebuild it: manage.py refresh_bm25 --domain "
                               f"{domain.slug}") from exc
        if chunks is None or documents is None:
            raise CommandError(
                f"Domain {domain.slug} has no BM25 index yet. The workers build it shortly "
                "after documents become ready (`manage.py run`), or build it now with: "
                f"manage.py refresh_bm25 --domain {domain.slug}"
            )
        served = {
            "chunks": bm25_store.searchable_chunks(domain).count(),
            "documents": Document.objects.filter(
                domain=domain, current_version__isnull=False
            ).count(),
        }
        for level, index in (("chunks", chunks), ("documents", documents)):
            if len(index) != served[level]:
                self.stderr.write(
                    f"Warning: the BM25 {level} index of {domain.slug} (version "
                    f"{index.version}) has {len(index)} entries but the domain serves "
                    f"{served[level]}; BM25 and hybrid figures are off until it is rebuilt."
                )


def _check_imported(domain: Domain, dataset_dir: Path, prefix: str) -> tuple[int, int]:
    """(documents of this dataset in the domain, how many of them are not served yet).

    None at all means the figures would be meaningless, so that stops the command.
    """
    documents = Document.objects.filter(domain=domain, source__startswith=prefix)
    count = documents.count()
    if not count:
        raise CommandError(
            f"Domain {domain.slug} has no documents from {dataset_dir.resolve().name} "
            f"(sources {prefix}...): import it first with "
            f"manage.py import_beir {dataset_dir} --domain {domain.slug}"
        )
    return count, documents.filter(current_version__isnull=True).count()


def _fusion_label(fusion: FusionOptions) -> str:
    if fusion.method == "rrf":
        return f"rrf k={fusion.rrf_k}"
    return f"weighted bm25_weight={fusion.bm25_weight:g}"


def _numbers(convert: type, flag: str, what: str, example: str, low: float, high: float):
    """An argparse type for a comma-separated list of numbers, each in [low, high]."""
    def parse(value: str) -> list:
        try:
            numbers = [convert(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise CommandError(f"{flag} takes numbers like {example}; got {value!r}.") from None
        if not numbers or any(not low <= n <= high for n in numbers):
            raise CommandError(f"Each {what} must be between {low:g} and {high:g}.")
        return numbers
    return parse


_depths = _numbers(int, "--rerank-depths", "rerank depth", "10,20,30", 2, 200)
_weights = _numbers(float, "--rerank-weights", "rerank weight", "0.3,0.7", 0.0, 1.0)


def _table(rows: dict[str, dict], best: str | None = None) -> str:
    """One line per mode (or grid point): the four metrics, and latency when measured."""
    width = max(12, *(len(name) for name in rows)) + 2
    header = f"{'mode':<{width}}" + "".join(
        f"{evaluation.METRIC_LABELS[m]:>12}" for m in evaluation.METRICS
    )
    with_latency = any(row.get("latency") for row in rows.values())
    if with_latency:
        header += f"{'p50 ms':>10}{'p95 ms':>10}"
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        line = f"{name:<{width}}" + "".join(f"{row['metrics'][m]:>12.4f}"
                                            for m in evaluation.METRICS)
        latency = row.get("latency") or {}
        if with_latency:
            line += f"{latency.get('p50_ms', 0):>10.1f}{latency.get('p95_ms', 0):>10.1f}"
        lines.append(line + ("  <- best" if name == best else ""))
    return "\n".join(lines) + "\n"
