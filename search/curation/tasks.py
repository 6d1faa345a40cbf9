"""Periodic upkeep of the audit log."""

from __future__ import annotations

from celery import shared_task

from search.curation import audit


@shared_task
def purge_audit_log() -> int:
    """Daily: drop what is older than KMS_AUDIT_RETENTION_DAYS."""
    events, changes = audit.purge()
    return events + changes
