"""What the commands share: access options, domains, checking for workers, waiting with a
progress bar, the summary."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser, OutputWrapper
from tqdm import tqdm

from kms.access import Access
from kms.store.models import Domain
from search.ingestion.documents import IngestResult, UnknownDomainError, get_domain
from search.ingestion.embedding import ModelNotFoundError
from search.ingestion.progress import Progress, failures, process_inline, wait_for_versions


def add_access_arguments(parser: CommandParser, verb: str) -> None:
    """``--user NAME`` or ``--all``: one of them is required, so no command is open by default."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--user", help=f"{verb} as this user: only what they may see.")
    group.add_argument("--all", action="store_true",
                       help=f"{verb} without restriction (every domain and document).")


def named_user(username: str):
    """The user ``--user NAME`` names; CommandError when there is none."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user {username!r}.")
    return user


def access_from_options(options: dict, command: str) -> Access:
    """The access of ``--user NAME`` or ``--all``."""
    if options.get("all"):
        return Access.everything(f"manage.py {command} --all")
    if not options.get("user"):
        raise CommandError("Pass --user NAME or --all.")
    return Access.for_user(named_user(options["user"]))


def require_worker(timeout: float = 2.0) -> None:
    """Fail early, before anything is stored, when no Celery worker would process it."""
    from kms.celery import app

    try:
        replies = app.control.ping(timeout=timeout)
    except Exception as exc:  # kombu raises several types for an unreachable broker
        raise CommandError(
            f"Cannot reach the Celery broker at {settings.CELERY_BROKER_URL} ({exc}). "
            "Start Redis or set REDIS_URL; or pass --inline to process in this process."
        ) from exc
    if not replies:
        raise CommandError(
            "No Celery worker answered. Start the system with `make run` (or "
            "`celery -A kms worker`), or pass --inline to process in this process."
        )


def process_with_progress(
    version_ids: Sequence[int], *, inline: bool, label: str, timeout: float | None = None
) -> tuple[Progress, float]:
    """Process (inline) or wait for the workers, showing documents done; returns wall time."""
    started = time.monotonic()
    bar = tqdm(total=len(version_ids), desc=label, unit="doc", dynamic_ncols=True, mininterval=1)

    def update(state: Progress) -> None:
        bar.n = state.done
        bar.set_postfix(chunks=state.chunks, embedded=state.embedded, failed=state.failed)
        bar.refresh()

    if inline:
        try:
            state = process_inline(version_ids, on_progress=update)
        except ModelNotFoundError as exc:
            bar.close()
            raise CommandError(
                f"{exc} The documents are stored; run the command again once it is fixed "
                "(or use the admin's 'Process again')."
            ) from exc
    else:
        state = wait_for_versions(version_ids, timeout=timeout, on_progress=update)
    bar.close()
    return state, time.monotonic() - started


def print_summary(
    out: OutputWrapper, results: Sequence[IngestResult], state: Progress | None,
    version_ids: Sequence[int],
) -> int:
    """Print counts and every failure with its reason; returns the number of failures."""
    outcomes = Counter(r.outcome for r in results)
    ready = state.ready if state else 0
    failed_reasons = [(r.source, r.message) for r in results if r.outcome == "failed"]
    failed_reasons += failures(version_ids)
    pending = (state.total - state.done) if state else 0
    out.write(
        f"ok: {ready} ready, {outcomes['unchanged']} unchanged, {outcomes['duplicate']} duplicate;"
        f" failed: {len(failed_reasons)}" + (f"; still processing: {pending}" if pending else "")
    )
    for result in results:
        if result.outcome == "duplicate":
            out.write(f"  duplicate  {result.source}: {result.message}")
    for source, reason in failed_reasons:
        out.write(f"  FAILED     {source}: {reason}")
    return len(failed_reasons)


def domain_or_error(slug: str) -> Domain:
    """The domain ``--domain`` names; CommandError listing the staff domains otherwise."""
    try:
        return get_domain(slug)
    except UnknownDomainError as exc:
        raise CommandError(str(exc)) from exc
