"""manage.py bench_search: search latency per mode, BM25 vs rank-bm25, index build times and
memory at a given number of chunks."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms.store.models import Domain
from search.evaluation.benchmark import (
    DEFAULT_QUERIES_FILE,
    BenchmarkError,
    format_table,
    run_benchmark,
    write_report,
)
from search.evaluation.domains import OwnedDomainError, drop
from search.retrieval.search import MODES


class Command(BaseCommand):
    help = (
        "Grow a benchmark domain to --size chunks by replicating a real domain, time "
        "search() per mode (p50/p95/p99, query embedding included) and compare BM25Index "
        "with rank_bm25 on the same corpus. Writes bench.json into --output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--size", type=int, default=100_000, help="Searchable chunks.")
        parser.add_argument("--domain", default="bench",
                            help="The benchmark's own domain (a staff domain is refused).")
        parser.add_argument("--source-domain", default="healthcare", help="Domain to copy.")
        parser.add_argument("--queries", type=int, default=200, help="Timed queries per mode.")
        parser.add_argument(
            "--queries-file", default=str(DEFAULT_QUERIES_FILE),
            help="BEIR queries.jsonl; '' (or the default when absent) samples chunk sentences.",
        )
        parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated.")
        parser.add_argument("--rank-bm25-queries", type=int, default=20)
        parser.add_argument("--output", type=Path, default=Path("reports/bench"))
        parser.add_argument("--drop", action="store_true",
                            help="Empty a kept benchmark domain before growing it again.")
        parser.add_argument("--keep", action="store_true",
                            help="Keep the benchmark domain for the next run (growing 100,000 "
                            "chunks takes minutes) instead of removing it afterwards.")
        parser.add_argument("--seed", type=int, default=0, help="Query sampling and noise.")
        parser.add_argument(
            "--build-hnsw", action="store_true",
            help="Drop the source space's HNSW index before growing and time building it "
            "afterwards (a development database only: dense search scans meanwhile).",
        )
        parser.add_argument("--maintenance-work-mem", default="4GB",
                            help="PostgreSQL maintenance_work_mem for --build-hnsw.")
        parser.add_argument("--no-memory", action="store_true",
                            help="Skip loading the BM25 indexes in a fresh process.")

    def handle(self, *args, **options) -> None:
        queries_file = Path(options["queries_file"]) if options["queries_file"] else None
        if queries_file == DEFAULT_QUERIES_FILE and not queries_file.is_file():
            self.stdout.write(f"{queries_file} not found: sampling chunk sentences instead.")
            queries_file = None
        try:
            report = self._run(options, queries_file)
        finally:
            domain = Domain.objects.filter(slug=options["domain"],
                                           purpose=Domain.Purpose.EVALUATION).first()
            if domain is not None and not options["keep"]:
                deleted = drop(domain)
                self.stdout.write(f"Removed the benchmark domain {domain.slug!r} ({deleted:,} "
                                  "chunks); pass --keep to reuse it.")
        self.stdout.write("")
        self.stdout.write(format_table(report))
        path = write_report(report, options["output"])
        self.stdout.write(f"Wrote {path}")

    def _run(self, options, queries_file):
        try:
            return run_benchmark(
                size=options["size"],
                domain=options["domain"],
                source_domain=options["source_domain"],
                queries=options["queries"],
                queries_file=queries_file,
                modes=[m.strip() for m in options["modes"].split(",") if m.strip()],
                rank_bm25_queries=options["rank_bm25_queries"],
                drop=options["drop"],
                build_hnsw=options["build_hnsw"],
                maintenance_work_mem=options["maintenance_work_mem"],
                measure_memory=not options["no_memory"],
                seed=options["seed"],
                echo=self.stdout.write,
            )
        except (BenchmarkError, OwnedDomainError) as exc:
            raise CommandError(str(exc)) from exc
