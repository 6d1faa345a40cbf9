"""manage.py reembed [--domain D] [--dry-run]: fill the embedding spaces domains should serve."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from tqdm import tqdm

from search.ingestion import spaces
from search.ingestion.embedding import ModelNotFoundError
from search.management.cli import domain_or_error


class Command(BaseCommand):
    help = (
        "Give every served chunk a vector in the embedding space its domain should serve (the "
        "promoted tuned model, else KMS_EMBEDDING_MODEL run by KMS_EMBEDDING_BACKEND), in the "
        "foreground, then switch search to it. Search keeps using the old vectors until the "
        "new space is complete. Beat does the same in the background on the models queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", help="Only this domain (default: every domain).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what is missing.")

    def handle(self, *args, **options) -> None:
        only = domain_or_error(options["domain"]) if options["domain"] else None
        try:
            domains = [d for d in spaces.domains_to_fill() if only is None or d.pk == only.pk]
            for domain in domains:
                self._fill(domain, options["dry_run"])
        except (ModelNotFoundError, spaces.SpaceUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(f"Database error: {exc}") from exc
        if not domains:
            self.stdout.write("Every domain serves its target space; nothing to re-embed.")

    def _fill(self, domain, dry_run: bool) -> None:
        wanted = spaces.wanted_spaces(domain)
        counts = {space.name: spaces.remaining(domain, space) for space in wanted}
        self.stdout.write(f"{domain.slug}: serves {wanted[0].name}; chunks lacking a vector: "
                          + ", ".join(f"{name} {n}" for name, n in counts.items()))
        if dry_run:
            return
        with tqdm(total=max(counts.values()), unit="chunk", desc=domain.slug) as bar:
            more = True
            while more:
                count, more = spaces.fill(domain, claim_size=256, time_budget=5.0)
                bar.update(count)
        domain.refresh_from_db()
        self.stdout.write(f"{domain.slug}: now serves {domain.embedding_space}.")
