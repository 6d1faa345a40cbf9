"""manage.py refresh_bm25 [--domain D] [--stale-only]: build and publish BM25 indexes now."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from kms.store.models import Domain, LexicalIndex
from search.management.cli import domain_or_error
from search.retrieval import index_store


class Command(BaseCommand):
    help = (
        "Build each domain's BM25 chunk and document indexes from the database and publish "
        "them through PostgreSQL; every web and worker node loads the new version on its next "
        "search. The workers do this by themselves after documents become ready."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", help="Only this domain (default: every domain).")
        parser.add_argument("--stale-only", action="store_true",
                            help="Skip domains whose indexes already cover every change.")

    def handle(self, *args, **options) -> None:
        domains = ([domain_or_error(options["domain"])] if options["domain"]
                   else list(Domain.objects.all()))
        try:
            for domain in domains:
                started = time.perf_counter()
                index = index_store.build_index(domain, only_if_stale=options["stale_only"])
                if index is None:
                    self.stdout.write(f"{domain.slug}: up to date.")
                    continue
                rows = LexicalIndex.objects.filter(domain=domain, version=int(index.version))
                sizes = ", ".join(f"{row.level} {row.entries:,} entries {row.size_bytes:,} bytes"
                                  for row in rows)
                self.stdout.write(f"{domain.slug}: published version {index.version} ({sizes}) "
                                  f"in {time.perf_counter() - started:.1f} s.")
        except DatabaseError as exc:
            raise CommandError(f"Database error: {exc}") from exc
