"""Celery tasks that keep each domain's BM25 indexes in step with the served chunks."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.dispatch import receiver

from search.ingestion import signals
from search.ingestion.tasks import TRANSIENT_ERRORS
from search.retrieval import index_store, refresh_claims


@shared_task(autoretry_for=TRANSIENT_ERRORS, retry_backoff=2, max_retries=8, acks_late=True)
def refresh_bm25(domain_id: int) -> int:
    """Rebuild a domain's BM25 index if it is stale and publish it to every node."""
    from kms.store.models import Domain

    refresh_claims.clear_pending(domain_id)
    domain = Domain.objects.filter(pk=domain_id).first()
    try:
        index = index_store.build_index(domain, only_if_stale=True, wait=False) if domain else None
    except index_store.BuildInProgress:
        schedule_refresh({domain_id})  # after that build: it may miss what triggered this one
        return 0
    return len(index) if index is not None else 0


@shared_task
def refresh_stale_bm25() -> int:
    """Periodic: rebuild indexes that missed a refresh (lost message, restored backup)."""
    stale = index_store.stale_domains()
    schedule_refresh(stale)
    return len(stale)


def schedule_refresh(domain_ids: set[int]) -> None:
    """Queue one rebuild per domain after the refresh delay, unless one is already pending."""
    for domain_id in domain_ids:
        if refresh_claims.claim_refresh(domain_id):
            refresh_bm25.apply_async((domain_id,), countdown=settings.KMS_BM25_REFRESH_SECONDS)


@receiver(signals.versions_served)
def _refresh_served(sender, domain_ids: set[int], **_: object) -> None:
    schedule_refresh(set(domain_ids))
