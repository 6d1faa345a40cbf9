"""manage.py bench_encode --domain D [--dataset DIR]: the encoder backends side by side."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms.access import visible_documents
from search.evaluation import encoders as bench
from search.evaluation.retrieval import beir_prefix, timestamp
from search.ingestion.beir import DatasetError, read_split
from search.ingestion.embedding import ModelNotFoundError
from search.ingestion.encoders import BACKENDS
from search.management.cli import domain_or_error


class Command(BaseCommand):
    help = (
        "Encode a domain's served chunk texts and a set of queries with each encoder backend "
        "in one run: chunks/s, query latency p50/p95, cosine agreement with torch and, with "
        "--dataset (a BEIR directory imported into the domain), dense and hybrid nDCG@10 of "
        "each backend's vectors. Nothing is written to the domain."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True)
        parser.add_argument("--dataset", type=Path, default=None,
                            help="BEIR directory: its queries and qrels (quality figures).")
        parser.add_argument("--split", default="test")
        parser.add_argument("--backends", default=",".join(BACKENDS),
                            help=f"Comma-separated, of {', '.join(BACKENDS)}.")
        parser.add_argument("--limit", type=int, default=None, help="Encode only N chunks.")
        parser.add_argument("--queries", type=int, default=None, help="Use only N queries.")
        parser.add_argument("--batch-size", type=int, default=settings.KMS_EMBED_BATCH_SIZE)
        parser.add_argument("--output", type=Path, default=None,
                            help="Also write the figures as JSON into this directory.")

    def handle(self, *args, **options) -> None:
        backends = [b.strip() for b in options["backends"].split(",") if b.strip()]
        unknown = sorted(set(backends) - set(BACKENDS))
        if unknown or not backends:
            raise CommandError(f"Unknown backends {unknown}; use some of {', '.join(BACKENDS)}.")
        domain = domain_or_error(options["domain"])
        dataset: Path | None = options["dataset"]
        prefix = beir_prefix(dataset) if dataset else "\0"  # no dataset: no relevance keys
        try:
            corpus = bench.load_corpus(domain, prefix, options["limit"])
        except ValueError as exc:
            raise CommandError(f"{exc} Add documents and let them finish processing.") from exc
        qrels = None
        if dataset:
            try:
                queries, qrels = read_split(dataset, options["split"])
            except DatasetError as exc:
                raise CommandError(str(exc)) from exc
            queries = {qid: queries[qid] for qid in qrels if qid in queries}
        else:  # titles are short, like the questions people type
            titles = visible_documents(bench.EVALUATION).filter(domain=domain).order_by(
                "pk").values_list("pk", "title")[:300]
            queries = {str(pk): title for pk, title in titles if title.strip()}
        if options["queries"]:
            queries = dict(list(queries.items())[: options["queries"]])
        if not queries:
            raise CommandError("No queries to time: give --dataset or documents with titles.")
        bm25 = None
        if qrels is not None:
            self.stderr.write(f"BM25 rankings of {len(queries)} queries...")
            bm25 = bench.bm25_rankings(queries, domain, corpus, prefix)
        try:
            rows = bench.compare_backends(
                backends, corpus, queries, qrels=qrels, bm25=bm25,
                batch_size=options["batch_size"], on_progress=self.stderr.write,
            )
        except ModelNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{len(corpus.texts)} chunk texts "
            f"of {domain.slug}, {len(queries)} queries, batch {options['batch_size']}, "
            f"{settings.KMS_ENCODER_THREADS or 'default'} threads"
        )
        self.stdout.write(bench.format_table(rows))
        for row in rows:
            if row.used != row.backend:
                self.stdout.write(f"{row.backend} was not available and ran as {row.used} "
                                  "(see the log line above).")
        if qrels is not None:
            best = bench.fastest_within(rows)
            self.stdout.write(
                f"Fastest backend within {bench.QUALITY_TOLERANCE} hybrid nDCG@10 of torch: "
                f"{best.backend if best else 'none'}"
                + (f" ({best.chunks_per_second / rows[0].chunks_per_second:.2f}x torch's "
                   "encode throughput)" if best else "")
            )
        if options["output"]:
            options["output"].mkdir(parents=True, exist_ok=True)
            path = options["output"] / f"encoders-{domain.slug}-{timestamp()}.json"
            path.write_text(json.dumps({"rows": [asdict(row) | {
                "chunks_per_second": row.chunks_per_second} for row in rows],
                "queries": len(queries), "chunks": len(corpus.texts)}, indent=2))
            self.stdout.write(f"Wrote {path}")
