"""manage.py import_beir DIR --domain D: ingest a BEIR corpus and report the throughput."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from tqdm import tqdm

from kms.access import Access
from kms.store.models import Chunk
from search.ingestion.beir import DatasetError, read_corpus
from search.ingestion.documents import (
    UnknownDomainError,
    add_document,
    get_domain,
    queue_processing,
)
from search.ingestion.embedding import get_embedder, passage_text
from search.management.cli import print_summary, process_with_progress, require_worker


class Command(BaseCommand):
    help = (
        "Import a BEIR-format corpus (corpus.jsonl or corpus.jsonl.gz) as one text document "
        "per row, wait until every document is ready, and print wall time and chunks/s."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset_dir", type=Path)
        parser.add_argument("--domain", required=True)
        parser.add_argument("--limit", type=int, default=None, help="Only the first N rows.")
        parser.add_argument("--batch", type=int, default=64, help="Documents per task.")
        parser.add_argument("--inline", action="store_true", help="Process in this process.")
        parser.add_argument(
            "--compare-encode", action="store_true",
            help="Afterwards, time raw SentenceTransformer.encode on the same chunk texts and "
            "print the ratio of ingest throughput to it.",
        )

    def handle(self, *args, **options) -> None:
        dataset_dir: Path = options["dataset_dir"]
        try:
            domain = get_domain(options["domain"])
            rows = read_corpus(dataset_dir)
        except (UnknownDomainError, DatasetError) as exc:
            raise CommandError(str(exc)) from exc
        inline = options["inline"]
        if not inline:
            require_worker()
        name = dataset_dir.resolve().name
        started = time.monotonic()
        results, batch_ids = [], []
        try:
            for row in tqdm(rows, desc="Storing", unit="doc", total=options["limit"]):
                if options["limit"] is not None and len(results) >= options["limit"]:
                    break
                batch_ids.extend(self._store(domain, name, row, inline, results))
                if len(batch_ids) >= options["batch"]:
                    self._flush(batch_ids, inline)
            self._flush(batch_ids, inline)
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        version_ids = [r.version_id for r in results if r.outcome == "queued"]
        state = None
        if version_ids:
            state, _ = process_with_progress(version_ids, inline=inline, label="Processing")
        seconds = time.monotonic() - started
        chunks = state.embedded if state else 0
        self.stdout.write(
            f"Imported {len(results)} rows from {dataset_dir} into {domain.slug}: "
            f"{chunks} chunks in {seconds:.1f} s wall = {chunks / seconds:.1f} chunks/s, "
            f"{len(version_ids) / seconds:.1f} docs/s"
        )
        if options["compare_encode"] and version_ids:
            self._compare(version_ids, chunks / seconds)
        if print_summary(self.stdout, results, state, version_ids):
            sys.exit(1)

    def _store(self, domain, name, row, inline, results) -> list[int]:
        with transaction.atomic():
            result = add_document(
                domain, source=f"beir:{name}:{row.id}", filename=f"{row.id}.txt",
                uploader=Access.everything("manage.py import_beir"),
                content=row.text.encode("utf-8"), title=row.title or row.id, queue=False,
            )
        results.append(result)
        return [result.version_id] if result.outcome == "queued" else []

    def _flush(self, batch_ids: list[int], inline: bool) -> None:
        """One task chain per batch: fewer, larger tasks keep the workers on embedding."""
        if batch_ids and not inline:
            with transaction.atomic():
                queue_processing(list(batch_ids))
        batch_ids.clear()

    def _compare(self, version_ids: list[int], ingest_rate: float) -> None:
        texts = [
            passage_text(title, heading, text)
            for title, heading, text in Chunk.objects.filter(version_id__in=version_ids)
            .order_by("pk").values_list("document__title", "heading", "text")
        ]
        embedder = get_embedder()
        embedder.encode(texts[:64])  # warm-up, as the workers were
        started = time.monotonic()
        embedder.encode(texts)
        raw_rate = len(texts) / (time.monotonic() - started)
        self.stdout.write(
            f"Raw encoder ({embedder.backend_used}) on the same {len(texts)} chunk texts: "
            f"{raw_rate:.1f} chunks/s. Ingest/encode throughput ratio: "
            f"{ingest_rate / raw_rate:.2f}"
        )
