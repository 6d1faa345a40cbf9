"""Celery tasks: thin wrappers that run ``search.ingestion.pipeline`` steps on the workers.

The services ask for work through ``search.ingestion.signals``; the receivers at the end of
this module queue it, so nothing below this module imports Celery.

Transient failures (database or broker unreachable) are retried with exponential backoff.
The steps already fail a bad file on its own; a task that still fails as a whole (its time
limit, exhausted retries) is split into one task per version, the failure unit, so only the
version that causes it fails and no document stays "processing" forever.
"""

from __future__ import annotations

import logging

from amqp.exceptions import ChannelError
from celery import Task, chain, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.dispatch import receiver
from redis.exceptions import ConnectionError as RedisConnectionError

from search.ingestion import pipeline, signals, spaces
from search.ingestion.embedding import get_embedder
from search.ingestion.sandbox import SandboxUnavailable

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, ConnectionError,
                    SandboxUnavailable, *pipeline.FILE_STORE_ERRORS)


class PipelineTask(Task):
    """Splits a failed batch into one chain per open version; fails a version failing alone."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    acks_late = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        version_ids = list((args[0] if args else kwargs.get("version_ids")) or [])
        still_open = pipeline.open_versions(version_ids)
        if len(still_open) > 1:
            logger.warning("Task %s failed (%s); re-sending its %d versions one by one",
                           self.name, type(exc).__name__, len(still_open))
            for version_id in still_open:
                process_versions([version_id])
            return
        if isinstance(exc, SoftTimeLimitExceeded):
            reason = ("Processing this file took longer than the task's time limit "
                      f"({settings.CELERY_TASK_SOFT_TIME_LIMIT} s, "
                      "KMS_TASK_SOFT_TIME_LIMIT_SECONDS).")
        else:
            reason = f"Processing failed ({type(exc).__name__}: {exc})."
        for version_id in still_open:
            try:
                pipeline.fail_version(
                    version_id, f"{reason} Fix the cause, then use the admin's 'Process again'."
                )
            except DatabaseError:
                logger.exception("Could not record the failure of version %s", version_id)


# The task's time limit ends the step; it is no fault of the file being worked on.
TASK_STOPS = (SoftTimeLimitExceeded,)


@shared_task(base=PipelineTask)
def parse_versions(version_ids: list[int]) -> list[int]:
    return pipeline.parse_versions(version_ids, stop_on=TASK_STOPS)


@shared_task(base=PipelineTask)
def chunk_versions(version_ids: list[int]) -> list[int]:
    return pipeline.chunk_versions(version_ids, stop_on=TASK_STOPS)


@shared_task(base=PipelineTask)
def embed_pending(version_ids: list[int] | None = None) -> int:
    """Embed waiting chunks in batches; hands the rest to a fresh task after its time budget."""
    count, more = pipeline.embed_pending()
    if more:
        embed_pending.delay()
    return count


@shared_task(base=PipelineTask)
def requeue_stalled() -> int:
    """Periodic: re-send versions left pending/processing (lost messages, dead brokers)."""
    if _queue_length() > 0:
        return 0  # work is still waiting: those versions are late, not lost
    version_ids = pipeline.claim_stalled_versions(settings.KMS_STALLED_AFTER_SECONDS)
    if version_ids:
        logger.warning("Re-queueing %d stalled versions, one task each", len(version_ids))
        for version_id in version_ids:  # one failure unit each: a killer takes down no other
            process_versions([version_id])
    return len(version_ids)


@shared_task(autoretry_for=TRANSIENT_ERRORS, retry_backoff=2, retry_backoff_max=300,
             max_retries=8, acks_late=True)
def fill_embedding_spaces(domain_id: int | None = None) -> int:
    """On the models queue (periodic, and after a promotion or roll back): served chunks
    get vectors in the spaces their domain wants, then the domain switches to the next
    space once it is complete. Hands the rest to a fresh task after its time budget."""
    total, more = 0, False
    for domain in spaces.domains_to_fill():
        if domain_id is None or domain.pk == domain_id:
            count, waiting = spaces.fill(domain, claim_size=settings.KMS_EMBED_CLAIM_SIZE,
                                         time_budget=60.0)
            total, more = total + count, more or waiting
    if more:
        fill_embedding_spaces.delay(domain_id)
    return total


def _queue_length() -> int:
    """Messages waiting in our queue; Redis drops an empty queue, which reads as 0."""
    app = requeue_stalled.app
    with app.connection_for_read() as conn:
        try:
            return conn.default_channel.queue_declare(
                app.conf.task_default_queue, passive=True
            ).message_count
        except ChannelError:
            return 0


def process_versions(version_ids: list[int]) -> None:
    """Queue the parse -> chunk -> embed chain for these versions (now, not on commit).

    The time limits travel in each message; they are read from the settings at every send.
    """
    pipeline.mark_queued(version_ids)
    limits = {"soft_time_limit": settings.CELERY_TASK_SOFT_TIME_LIMIT,
              "time_limit": settings.CELERY_TASK_TIME_LIMIT}
    chain(
        parse_versions.si(version_ids).set(**limits),
        chunk_versions.si(version_ids).set(**limits),
        embed_pending.si(version_ids).set(**limits),
    ).delay()


@worker_process_init.connect
def _load_models(**_: object) -> None:
    """Load the embedder once per worker process, before the first task needs it."""
    try:
        get_embedder().encoder  # noqa: B018 - loading is the point
    except Exception:  # the task that needs it will fail with the reason
        logger.exception("Could not load the embedding model")


@receiver(signals.processing_requested)
def _queue_processing(sender, version_ids: list[int], **_: object) -> None:
    process_versions(version_ids)


@receiver(signals.embedding_requested)
def _queue_embedding(sender, version_ids: list[int], **_: object) -> None:
    embed_pending.delay(version_ids)


@receiver(signals.space_requested)
def _queue_space_filling(sender, domain_id: int, **_: object) -> None:
    fill_embedding_spaces.delay(domain_id)
