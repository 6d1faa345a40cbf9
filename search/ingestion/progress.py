"""How far processing has got, waiting for it, and running it in this process instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q

from kms.store.models import Chunk, ChunkSet, ChunkVector, DocumentVersion, Status
from search.ingestion import pipeline


@dataclass(frozen=True)
class Progress:
    total: int
    ready: int
    failed: int
    chunks: int
    embedded: int

    @property
    def done(self) -> int:
        return self.ready + self.failed


def progress(version_ids: Sequence[int]) -> Progress:
    """How far processing of these versions has got (one query per call)."""
    ids = list(version_ids)
    counts = DocumentVersion.objects.filter(pk__in=ids).aggregate(
        ready=Count("pk", filter=Q(status=Status.READY)),
        failed=Count("pk", filter=Q(status=Status.FAILED)),
    )
    # The set being built, or the active set once the version is ready; not the set it replaces.
    chunks = Chunk.objects.filter(version_id__in=ids).filter(
        Q(chunk_set__state=ChunkSet.State.BUILDING)
        | Q(chunk_set__state=ChunkSet.State.ACTIVE, version__status=Status.READY)
    )
    chunk_counts = chunks.aggregate(
        chunks=Count("pk"),
        embedded=Count("pk", filter=Q(Exists(ChunkVector.objects.filter(chunk=OuterRef("pk"))))),
    )
    return Progress(len(ids), counts["ready"], counts["failed"], chunk_counts["chunks"],
                    chunk_counts["embedded"])


def wait_for_versions(
    version_ids: Sequence[int], *, timeout: float | None = None, poll: float = 0.5,
    on_progress: Callable[[Progress], None] | None = None,
) -> Progress:
    """Block until every version is ready or failed (or ``timeout`` seconds pass)."""
    started = time.monotonic()
    while True:
        state = progress(version_ids)
        if on_progress:
            on_progress(state)
        if state.done >= state.total:
            return state
        if timeout is not None and time.monotonic() - started > timeout:
            return state
        time.sleep(poll)


def process_inline(version_ids: Sequence[int], on_progress: Callable[[Progress], None] | None
                   = None, batch: int = 64) -> Progress:
    """Run the whole pipeline in this process (no worker needed), batch by batch."""
    ids = list(version_ids)
    for i in range(0, len(ids), batch):
        part = ids[i : i + batch]
        pipeline.chunk_versions(pipeline.parse_versions(part))
        pipeline.embed_pending(time_budget=float("inf"))
        if on_progress:
            on_progress(progress(ids))
    return progress(ids)


def failures(version_ids: Sequence[int]) -> list[tuple[str, str]]:
    """(source, reason) of each failed version, for summaries."""
    return list(
        DocumentVersion.objects.filter(pk__in=list(version_ids), status=Status.FAILED)
        .values_list("document__source", "status_message")
    )
