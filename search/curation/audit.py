"""The audit log of reads: one append-only row per search, question, view and download,
with the documents and versions it showed. Model changes are django-auditlog's."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from auditlog.models import LogEntry
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from kms.store.models import AccessEvent

Shown = Iterable[tuple[int, int | None]]  # (document id, version id)


def record(user, action: str, channel: str, *, domain: str = "", query: str = "",
           shown: Shown = ()) -> AccessEvent:
    documents, seen = [], set()
    for document_id, version_id in shown:
        if (document_id, version_id) not in seen:
            seen.add((document_id, version_id))
            documents.append({"document": document_id, "version": version_id})
    return AccessEvent.objects.create(
        user=user if user is not None and user.is_authenticated else None,
        username=user.get_username() if user is not None else "", action=action,
        channel=channel, domain=domain, query=query[:2000], documents=documents)


def hits_shown(hits) -> Shown:
    """(document, version) of search hits or an answer's sources."""
    return [(h.document_id, h.version_id) for h in hits]


def record_turn(user, channel: str, turn) -> AccessEvent:
    """A conversation's question, with the documents and versions its answer cited."""
    return record(user, "ask", channel, domain=turn.conversation.domain.slug,
                  query=turn.standalone_question,
                  shown=[(s["document_id"], s["version_id"]) for s in turn.answer["sources"]])


def purge(days: int | None = None) -> tuple[int, int]:
    """Delete access events and model-change entries older than the retention; returns the
    two counts. ``0`` days keeps everything."""
    days = settings.KMS_AUDIT_RETENTION_DAYS if days is None else days
    if days <= 0:
        return 0, 0
    cutoff = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        with connection.cursor() as cursor:  # the append-only trigger lets this one through
            cursor.execute("SET LOCAL kms.audit_purge = 'on'")
        events, _ = AccessEvent.objects.filter(at__lt=cutoff).delete()
    changes, _ = LogEntry.objects.filter(timestamp__lt=cutoff).delete()
    return events, changes
