"""manage.py search "QUERY" --domain D: try retrieval from the shell, with explanations."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.html import strip_tags

from search.management.cli import access_from_options, add_access_arguments
from search.retrieval.search import (
    FUSION_METHODS,
    MODES,
    FusionOptions,
    SearchError,
    search,
)


class Command(BaseCommand):
    help = "Search a domain and show why each result ranked (BM25, dense and fused scores)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query")
        parser.add_argument("--domain", required=True)
        parser.add_argument("--mode", choices=MODES, default=None)
        parser.add_argument("--k", type=int, default=5)
        parser.add_argument("--fusion", choices=FUSION_METHODS, default=None)
        add_access_arguments(parser, "Search")

    def handle(self, *args, **options) -> None:
        access = access_from_options(options, "search")
        fusion = None
        if options["fusion"]:
            defaults = FusionOptions.from_settings()
            fusion = FusionOptions(options["fusion"], defaults.rrf_k, defaults.bm25_weight)
        try:
            response = search(options["query"], domain=options["domain"], access=access,
                              mode=options["mode"], k=options["k"], fusion=fusion)
        except SearchError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{len(response.documents)} documents, {response.mode}, "
                          f"{response.took_ms:.0f} ms")
        if response.message:
            self.stdout.write(response.message)
        for rank, document in enumerate(response.documents, start=1):
            self.stdout.write(f"\n{rank}. {document.title}  [{document.source}]  "
                              f"score {document.score:.3f}")
            for chunk in document.chunks:
                why = ", ".join(
                    f"{name} #{info.rank} ({info.score:.3f})"
                    for name, info in (("bm25", chunk.bm25), ("dense", chunk.dense)) if info
                )
                where = f"p.{chunk.page} " if chunk.page else ""
                self.stdout.write(f"   - {where}{chunk.heading or '(no heading)'}: {why}")
                self.stdout.write(f"     {strip_tags(chunk.snippet)[:200]}")
