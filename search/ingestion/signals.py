"""What ingestion announces, so services never import the tasks or the layers above them.

Services send ``processing_requested``, ``embedding_requested`` and ``space_requested``
once their transaction commits; ``search.ingestion.tasks`` turns them into Celery work.
``versions_served`` tells whoever keeps derived indexes (``search.retrieval.tasks``) that
new chunks are being served.
A request that nobody would carry out is an error, never work silently dropped.
"""

from __future__ import annotations

from django.db import transaction
from django.dispatch import Signal

processing_requested = Signal()  # version_ids: list[int] -> parse, chunk, embed
embedding_requested = Signal()  # version_ids: list[int] -> embed the chunks lacking a vector
versions_served = Signal()  # domain_ids: set[int] -> rebuild what is derived from the chunks
space_requested = Signal()  # domain_id: int -> fill the domain's wanted embedding spaces


def send_on_commit(signal: Signal, **payload: object) -> None:
    """Send ``signal`` once the surrounding transaction commits (at once outside one)."""
    if not signal.has_listeners():
        raise RuntimeError(
            "No handler is connected for this work; the search app must be in INSTALLED_APPS "
            "(its ready() connects the task queue)."
        )
    transaction.on_commit(lambda: signal.send(sender=None, **payload))
