"""manage.py reembed [--domain D]: new vectors for what another embedding space produced."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from search.ingestion import documents, pipeline
from search.ingestion.embedding import ModelNotFoundError, get_embedder
from search.management.cli import domain_or_error


class Command(BaseCommand):
    help = (
        "Re-embed the served versions whose vectors are of another embedding space than the "
        "configured model and backend produce (after KMS_EMBEDDING_MODEL or "
        "KMS_EMBEDDING_BACKEND changed). New vectors are built beside the served ones, which "
        "stay searchable until each version's set is complete. Beat does the same in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", help="Only this domain (default: every domain).")
        parser.add_argument("--dry-run", action="store_true", help="Only count them.")

    def handle(self, *args, **options) -> None:
        domain_id = domain_or_error(options["domain"]).pk if options["domain"] else None
        try:
            space = get_embedder().version
        except ModelNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        version_ids = pipeline.versions_in_other_spaces(space, domain_id)
        if options["dry_run"] or not version_ids:
            self.stdout.write(f"{len(version_ids)} served versions have vectors of another "
                              f"space than {space}.")
            return
        chunks = documents.reembed(version_ids)
        self.stdout.write(f"Queued {chunks} chunks of {len(version_ids)} versions for "
                          f"re-embedding into {space}; the workers embed them.")
