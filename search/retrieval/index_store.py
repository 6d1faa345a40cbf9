"""Per-domain BM25 indexes: built from PostgreSQL and published through it, in order.

Each domain has two: one over chunks (which passage of a document matches) and one over whole
documents (which documents match: a whole document's term statistics rank documents better
than its best chunk does). A build takes the domain's PostgreSQL advisory lock, so one
builder at a time per domain whichever node it runs on; it numbers its versions one past the
newest, so versions only move forward; and it inserts the ``LexicalIndex`` rows with their
artifacts in one transaction, so no node sees a partial one. Nodes follow the rows (see
``index_cache``). Whether an index is stale is decided by database facts alone: a document
changed after the index's watermark, or the served chunks or documents are no longer the ones
it indexed (which is how a deletion shows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, QuerySet, Sum
from django.utils import timezone

from kms.store.models import SEARCHABLE_CHUNKS, Chunk, Document, Domain, LexicalIndex, Publication
from search.ingestion.embedding import passage_text
from search.retrieval import index_artifacts
from search.retrieval.bm25 import BM25Index, BM25Params
from search.retrieval.index_cache import forget
from search.retrieval.text_analysis import analyze

logger = logging.getLogger(__name__)
# The newest version and the one before it stay whatever their age: a node that cannot load
# the newest serves the previous one.
KEEP_VERSIONS = 2
_LOCK_CLASS = 0x6B6D7301  # advisory lock namespace of BM25 builds ("kms" 1)

LEVELS = (LexicalIndex.Level.CHUNKS, LexicalIndex.Level.DOCUMENTS)


def params() -> BM25Params:
    return BM25Params(settings.KMS_BM25_K1, settings.KMS_BM25_B, settings.KMS_BM25_EPSILON)


def searchable_chunks(domain: Domain) -> QuerySet[Chunk]:
    """The active set of the version each published document serves, less excluded chunks."""
    return Chunk.objects.filter(SEARCHABLE_CHUNKS, domain=domain)


def served_documents(domain: Domain) -> QuerySet[Document]:
    return Document.objects.filter(domain=domain, current_version__isnull=False,
                                   publication=Publication.PUBLISHED)


def bm25_text(title: str, heading: str, text: str) -> str:
    """What BM25 indexes for a chunk: the same context the embedding sees."""
    return passage_text(title, heading, text)


def chunk_texts(domain: Domain) -> Iterator[tuple[int, str]]:
    """(chunk id, indexed text) of the domain's searchable chunks, in id order."""
    rows = (
        searchable_chunks(domain)
        .order_by("pk")
        .values_list("pk", "document__title", "heading", "text")
        .iterator(chunk_size=5000)
    )
    for pk, title, heading, text in rows:
        yield pk, bm25_text(title, heading, text)


def document_texts(domain: Domain) -> Iterator[tuple[int, str]]:
    rows = (
        served_documents(domain)
        .order_by("pk")
        .values_list("pk", "title", "current_version__extracted_text")
        .iterator(chunk_size=1000)
    )
    for pk, title, text in rows:
        yield pk, f"{title}\n{text}"


@dataclass(frozen=True)
class _Fingerprints:
    """What each level indexes, as count and id sum: ids only grow, so any change of the
    set (a deletion, a re-chunked or re-embedded version) changes its fingerprint."""

    chunks: dict[int, str]
    documents: dict[int, str]

    def of_chunks(self, domain_id: int) -> str:
        return self.chunks.get(domain_id, _NOTHING)

    def of_documents(self, domain_id: int) -> str:
        return self.documents.get(domain_id, _NOTHING)


_NOTHING = "0:None"  # the fingerprint of nothing served (no row in the aggregate)


def _fingerprints(domain_ids: Iterable[int] | None = None) -> _Fingerprints:
    chunks = Chunk.objects.filter(SEARCHABLE_CHUNKS)
    documents = Document.objects.filter(current_version__isnull=False,
                                        publication=Publication.PUBLISHED)
    if domain_ids is not None:
        chunks = chunks.filter(domain_id__in=list(domain_ids))
        documents = documents.filter(domain_id__in=list(domain_ids))
    return _Fingerprints(
        {row["domain_id"]: f"{row['n']}:{row['s']}" for row in
         chunks.values("domain_id").annotate(n=Count("pk"), s=Sum("pk"))},
        {row["domain_id"]: f"{row['n']}:{row['s']}" for row in
         documents.values("domain_id").annotate(n=Count("pk"), s=Sum("current_version_id"))},
    )


class BuildInProgress(Exception):
    """Another node is building this domain's indexes (``build_index(wait=False)``)."""


def build_index(domain: Domain, *, only_if_stale: bool = False,
                wait: bool = True) -> BM25Index | None:
    """Build and publish the domain's chunk and document indexes; returns the chunk index.

    With ``only_if_stale`` a build that finds the newest version covers every change returns
    None. With ``wait=False`` (the refresh task, so that no worker slot idles on the lock
    while a long build runs) a build already running raises ``BuildInProgress``.
    """
    started = time.perf_counter()
    with transaction.atomic():
        with connection.cursor() as cursor:
            if wait:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_CLASS, domain.pk])
            else:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)",
                               [_LOCK_CLASS, domain.pk])
                if not cursor.fetchone()[0]:
                    raise BuildInProgress(f"a BM25 build of {domain.slug} is running")
            # Read after the lock, before the data: changes after it may be missing.
            cursor.execute("SELECT clock_timestamp()")
            watermark = cursor.fetchone()[0]
        fingerprints = _fingerprints([domain.pk])
        if only_if_stale and domain.pk not in _stale_among(fingerprints, [domain.pk]):
            return None
        chunks = _build_and_publish(domain, LexicalIndex.Level.CHUNKS, chunk_texts(domain),
                                    watermark, fingerprints.of_chunks(domain.pk),
                                    started)
        _build_and_publish(domain, LexicalIndex.Level.DOCUMENTS, document_texts(domain),
                           watermark, fingerprints.of_documents(domain.pk), started)
    return chunks


def _build_and_publish(domain: Domain, level: str, rows: Iterable[tuple[int, str]],
                       watermark: datetime, fingerprint: str, started: float) -> BM25Index:
    ids: list[int] = []
    tokens: list[list[str]] = []
    for pk, text in rows:
        ids.append(pk)
        tokens.append(analyze(text))
    newest = (LexicalIndex.objects.filter(domain=domain, level=level)
              .aggregate(v=Max("version"))["v"] or 0)
    index = BM25Index.build(ids, tokens, params(), version=str(newest + 1))
    data = index.to_bytes()
    row = LexicalIndex.objects.create(
        domain=domain, level=level, version=newest + 1, watermark=watermark,
        fingerprint=fingerprint, entries=len(index), checksum=index_artifacts.checksum(data),
        size_bytes=len(data), build_seconds=time.perf_counter() - started,
    )
    index_artifacts.save_artifact(row, data)
    _remove_superseded(domain, level)
    logger.info("Published %s: %d entries, %d bytes", row, len(index), len(data))
    return index


def _remove_superseded(domain: Domain, level: str) -> None:
    """Versions beyond the newest two, once their successor is older than the grace period."""
    rows = list(LexicalIndex.objects.filter(domain=domain, level=level)
                .order_by("-version").only("pk", "storage_name", "created_at"))
    cutoff = timezone.now() - timedelta(seconds=settings.KMS_BM25_GRACE_SECONDS)
    for successor, row in zip(rows[KEEP_VERSIONS - 1:], rows[KEEP_VERSIONS:], strict=False):
        if successor.created_at <= cutoff:
            row.delete()
            transaction.on_commit(lambda row=row: index_artifacts.delete_artifact(row))


def remove_indexes(domain: Domain) -> None:
    """Delete a domain's published indexes (before the domain itself) and this node's copies."""
    rows = list(LexicalIndex.objects.filter(domain=domain))
    LexicalIndex.objects.filter(domain=domain).delete()
    for row in rows:
        transaction.on_commit(lambda row=row: index_artifacts.delete_artifact(row))
    forget(domain.slug)


def stale_domains(domain_ids: Iterable[int] | None = None) -> set[int]:
    """Domains whose index misses a change: none built while documents are served, a document
    changed after its watermark, or the served chunks or documents are not the indexed ones.

    Beat checks this periodically as a safety net for refreshes lost with a broker restart.
    """
    return _stale_among(_fingerprints(domain_ids), domain_ids)


def _stale_among(fingerprints: _Fingerprints, domain_ids: Iterable[int] | None) -> set[int]:
    newest: dict[int, dict[str, LexicalIndex]] = {}
    indexes = LexicalIndex.objects.order_by("domain_id", "level", "-version").distinct(
        "domain_id", "level")
    changed = Document.objects.values("domain_id").annotate(last=Max("updated_at"))
    if domain_ids is not None:
        indexes = indexes.filter(domain_id__in=list(domain_ids))
        changed = changed.filter(domain_id__in=list(domain_ids))
    for row in indexes:
        newest.setdefault(row.domain_id, {})[row.level] = row
    last_change = {row["domain_id"]: row["last"] for row in changed}
    stale = set()
    for domain_id in set(fingerprints.chunks) | set(fingerprints.documents) | set(newest):
        built = newest.get(domain_id, {})
        chunks, documents = built.get("chunks"), built.get("documents")
        if chunks is None or documents is None:
            if domain_id in fingerprints.documents:
                stale.add(domain_id)
            continue
        if (chunks.fingerprint != fingerprints.of_chunks(domain_id)
                or documents.fingerprint != fingerprints.of_documents(domain_id)
                or (last_change.get(domain_id) or chunks.watermark) > chunks.watermark):
            stale.add(domain_id)
    return stale
