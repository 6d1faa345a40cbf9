"""manage.py ingest PATH... --domain D: add files and folders and wait until they are ready."""

from __future__ import annotations

import sys
from pathlib import Path

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from kms.access import Access
from search.ingestion.documents import UnknownDomainError, get_domain, ingest_file, iter_files
from search.management.cli import (
    named_user,
    print_summary,
    process_with_progress,
    require_worker,
)


class Command(BaseCommand):
    help = (
        "Ingest files or folders (PDF, DOCX, HTML, Markdown, text, CSV) into a domain. "
        "Exits 1 when any file failed; the others are stored regardless."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, help="Files or folders (recursive).")
        parser.add_argument("--domain", required=True, help="Domain slug, e.g. healthcare.")
        parser.add_argument(
            "--group", action="append", default=[], dest="groups",
            help="Restrict the documents to this access group (repeatable; created if new).",
        )
        parser.add_argument(
            "--inline", action="store_true", help="Process here instead of on the workers."
        )
        parser.add_argument(
            "--no-wait", action="store_true", help="Queue and return without waiting."
        )
        parser.add_argument("--timeout", type=float, default=None, help="Seconds to wait.")
        parser.add_argument(
            "--user", help="Upload as this user: recorded as the uploader, and messages name "
            "only documents they may see. Without it the operator uploads, unrestricted.",
        )

    def handle(self, *args, **options) -> None:
        try:
            domain = get_domain(options["domain"])
            files = list(iter_files(options["paths"]))
        except (UnknownDomainError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        if not files:
            raise CommandError("No files found under the given paths.")
        inline = options["inline"]
        if not inline:
            require_worker()
        user = named_user(options["user"]) if options["user"] else None
        uploader = Access.for_user(user) if user else Access.everything("manage.py ingest")
        groups = [Group.objects.get_or_create(name=name)[0] for name in options["groups"]]
        results = []
        for path in tqdm(files, desc="Storing", unit="file", dynamic_ncols=True):
            root = next((p for p in options["paths"] if p.is_dir() and p in path.parents), None)
            results.append(
                ingest_file(domain, path, uploader=uploader, root=root, access_groups=groups,
                            uploaded_by=user, queue=not inline)
            )
        version_ids = [r.version_id for r in results if r.outcome == "queued" and r.version_id]
        if options["no_wait"]:
            self.stdout.write(f"Queued {len(version_ids)} documents for processing.")
            return
        state = None
        if version_ids:
            state, seconds = process_with_progress(
                version_ids, inline=inline, label="Processing", timeout=options["timeout"]
            )
            self.stdout.write(
                f"Processed {state.done} documents, {state.embedded} chunks in {seconds:.1f} s"
            )
        if print_summary(self.stdout, results, state, version_ids):
            sys.exit(1)

