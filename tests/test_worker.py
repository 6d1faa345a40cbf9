"""Real Celery worker processes on the real broker and the test database."""

from __future__ import annotations

import itertools
import time

import pytest
from django.db import transaction

from kms.store.models import Chunk, DocumentVersion, Domain, Status
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline, wait_for_versions
from search.retrieval.search import search
from tests.conftest import OPERATOR

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POLICY = "# Hand hygiene\n\n## When\n\nBefore and after every patient contact.\n"


def test_saved_document_is_processed_by_a_worker_to_ready(worker_factory, domain: Domain):
    worker_factory().start()
    with transaction.atomic():
        result = add_document(domain, uploader=OPERATOR, source="hh.md", filename="hh.md",
                              content=POLICY.encode())
    state = wait_for_versions([result.version_id], timeout=120)
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status == Status.READY, version.status_message
    assert state.embedded == state.chunks == version.chunks.count() > 0
    assert version.document.current_version_id == version.pk


def test_ready_document_becomes_findable_by_bm25_after_the_refresh_delay(
    worker_factory, domain: Domain, settings, tmp_path
) -> None:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    worker_factory(KMS_BM25_REFRESH_SECONDS="1").start()
    with transaction.atomic():  # BM25Okapi's idf is <= 0 for a term in half the documents
        result = add_document(domain, uploader=OPERATOR, source="hh.md", filename="hh.md",
                              content=POLICY.encode())
        others = [
            add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                         content=f"# {name}\n\nReview {name} daily.\n".encode())
            for name in ("falls", "sedation", "nutrition")
        ]
    wait_for_versions([result.version_id] + [o.version_id for o in others], timeout=120)
    ready_at = time.monotonic()
    while time.monotonic() - ready_at < 60:
        if search("patient contact", domain=domain, mode="bm25", access=OPERATOR).documents:
            break
        time.sleep(0.2)
    hits = search("patient contact", domain=domain, mode="bm25", access=OPERATOR).documents
    assert [d.document_id for d in hits] == [result.document_id]


def test_bad_file_fails_on_the_worker_and_the_good_one_is_ready(worker_factory, domain):
    worker_factory().start()
    with transaction.atomic():
        good = add_document(domain, uploader=OPERATOR, source="ok.md", filename="ok.md",
                            content=POLICY.encode())
        bad = add_document(domain, uploader=OPERATOR, source="x.pdf", filename="x.pdf",
                           content=b"\x00garbage")
    wait_for_versions([good.version_id, bad.version_id], timeout=120)
    assert DocumentVersion.objects.get(pk=good.version_id).status == Status.READY
    failed = DocumentVersion.objects.get(pk=bad.version_id)
    assert failed.status == Status.FAILED
    assert "not a valid PDF" in failed.status_message


def long_document(paragraphs: int = 240) -> bytes:
    body = "\n\n".join(
        f"Paragraph {i}: the ward checks fluid balance, observations and medication charts "
        f"every {i % 12 + 1} hours and records exceptions in the electronic record."
        for i in range(paragraphs)
    )
    return f"# Ward routine\n\n{body}\n".encode()


def test_worker_killed_mid_document_is_rerun_to_exactly_one_set_of_chunks(
    worker_factory, domain: Domain
) -> None:
    """SIGKILL the worker while it embeds; the redelivered task finishes the document."""
    crashing = worker_factory(KMS_TASK_VISIBILITY_SECONDS="5", KMS_EMBED_CLAIM_SIZE="8")
    crashing.start(concurrency=1)
    with transaction.atomic():
        result = add_document(domain, uploader=OPERATOR, source="ward.md", filename="ward.md",
                              content=long_document())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some, not all, chunks have vectors
        embedded = Chunk.objects.filter(version_id=result.version_id, vectors__isnull=False)
        if embedded.exists():
            break
        time.sleep(0.05)
    crashing.kill()
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status == Status.PROCESSING
    assert Chunk.objects.filter(version_id=version.pk, vectors__isnull=True).exists()

    worker_factory(KMS_TASK_VISIBILITY_SECONDS="5").start()
    wait_for_versions([version.pk], timeout=180)
    version.refresh_from_db()
    assert version.status == Status.READY, version.status_message
    ordinals = sorted(version.chunks.values_list("ordinal", flat=True))
    assert ordinals == list(range(len(ordinals)))
    assert not version.chunks.filter(vectors__isnull=True).exists()


def test_beat_jobs_requeue_lost_versions_and_rebuild_stale_indexes(
    worker_factory, domain: Domain, settings, tmp_path
) -> None:
    """Versions whose messages were lost (queue empty, still pending) are sent again."""
    from search.ingestion.tasks import requeue_stalled
    from search.retrieval.tasks import refresh_stale_bm25

    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    settings.KMS_STALLED_AFTER_SECONDS = 0
    with transaction.atomic():  # queue=False: as if the broker lost the messages
        lost = [add_document(domain, uploader=OPERATOR, source=f"lost-{n}.md",
                             filename=f"lost-{n}.md", content=f"{POLICY}\n{n}\n".encode(),
                             queue=False) for n in range(2)]
    assert requeue_stalled() == 2  # one task each: a file that kills its worker stops no other
    worker_factory().start()
    wait_for_versions([v.version_id for v in lost], timeout=120)
    for version in lost:
        assert DocumentVersion.objects.get(pk=version.version_id).status == Status.READY
    assert refresh_stale_bm25() in (0, 1)  # the ready hook may have queued it already
    deadline = time.monotonic() + 60
    while refresh_stale_bm25() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert refresh_stale_bm25() == 0


def searches_during(version_id: int, document_id: int, domain: Domain, start) -> dict[str, int]:
    """Search BM25 and dense in turn from ``start()`` until the version is ready again.

    Every search must find the document; returns how many ran, by the version's status.
    """
    query = "ward checks fluid balance observations medication charts"
    counts: dict[str, int] = {}
    start()
    deadline = time.monotonic() + 300
    for n in itertools.count():
        status = DocumentVersion.objects.filter(pk=version_id).values_list(
            "status", flat=True).get()
        mode = ("bm25", "dense")[n % 2]
        hits = search(query, domain=domain, access=OPERATOR, mode=mode, k=5).documents
        assert document_id in [d.document_id for d in hits], (n, mode, status)
        counts[status] = counts.get(status, 0) + 1
        if status == Status.READY and n >= 1:
            return counts
        assert time.monotonic() < deadline, counts


def test_reprocessing_and_reembedding_keep_the_document_found(
    worker_factory, domain: Domain, settings, tmp_path
) -> None:
    """During "process again" and "re-embed" of a served document, BM25 and dense search
    find it every time (the new chunk set is built beside the served one)."""
    from search.ingestion.documents import reembed, reprocess
    from search.retrieval import index_store

    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    with transaction.atomic():
        result = add_document(domain, uploader=OPERATOR, source="ward.md", filename="ward.md",
                              content=long_document(3000), queue=False)
        others = [add_document(domain, uploader=OPERATOR, source=f"{n}.md", filename=f"{n}.md",
                               content=f"# {n}\n\nReview {n} daily.\n".encode(), queue=False)
                  for n in ("falls", "sedation", "nutrition")]
    process_inline([result.version_id] + [o.version_id for o in others])
    index_store.build_index(domain)
    # One chunk per claim and one torch thread: processing takes long enough to search in.
    worker_factory(KMS_EMBED_CLAIM_SIZE="1", KMS_BM25_REFRESH_SECONDS="1").start(concurrency=1)
    figures = {}
    for name, action in (("process again", reprocess), ("re-embed", reembed)):
        def start(action=action) -> None:
            with transaction.atomic():
                action([result.version_id])
        figures[name] = searches_during(result.version_id, result.document_id, domain, start)
    print(f"\nsearches that found the document, by version status: {figures}")
    for name, counts in figures.items():  # from the action until the new set is served
        assert counts.get(Status.PENDING, 0) + counts.get(Status.PROCESSING, 0) >= 200, name
        assert counts.get(Status.PROCESSING, 0) >= 100, (name, counts)
