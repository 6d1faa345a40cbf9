"""Real Celery worker processes on the real broker and the test database."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from kms.store.models import Chunk, DocumentVersion, Domain, Status
from search.ingestion.documents import add_document
from search.ingestion.progress import wait_for_versions
from search.retrieval.search import search

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POLICY = "# Hand hygiene\n\n## When\n\nBefore and after every patient contact.\n"


def test_saved_document_is_processed_by_a_worker_to_ready(worker_factory, domain: Domain):
    worker_factory().start()
    with transaction.atomic():
        result = add_document(domain, source="hh.md", filename="hh.md", content=POLICY.encode())
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
        result = add_document(domain, source="hh.md", filename="hh.md", content=POLICY.encode())
        others = [
            add_document(domain, source=f"{name}.md", filename=f"{name}.md",
                         content=f"# {name}\n\nReview {name} daily.\n".encode())
            for name in ("falls", "sedation", "nutrition")
        ]
    wait_for_versions([result.version_id] + [o.version_id for o in others], timeout=120)
    ready_at = time.monotonic()
    while time.monotonic() - ready_at < 60:
        if search("patient contact", domain=domain, mode="bm25").documents:
            break
        time.sleep(0.2)
    hits = search("patient contact", domain=domain, mode="bm25").documents
    assert [d.document_id for d in hits] == [result.document_id]
    assert time.monotonic() - ready_at < 30  # documented: refresh delay + one build


def test_bad_file_fails_on_the_worker_and_the_good_one_is_ready(worker_factory, domain):
    worker_factory().start()
    with transaction.atomic():
        good = add_document(domain, source="ok.md", filename="ok.md", content=POLICY.encode())
        bad = add_document(domain, source="x.pdf", filename="x.pdf", content=b"\x00garbage")
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
        result = add_document(domain, source="ward.md", filename="ward.md",
                              content=long_document())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some, not all, chunks have vectors
        embedded = Chunk.objects.filter(version_id=result.version_id, embedding__isnull=False)
        if embedded.exists():
            break
        time.sleep(0.05)
    crashing.kill()
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status == Status.PROCESSING
    assert Chunk.objects.filter(version_id=version.pk, embedding__isnull=True).exists()

    worker_factory(KMS_TASK_VISIBILITY_SECONDS="5").start()
    wait_for_versions([version.pk], timeout=180)
    version.refresh_from_db()
    assert version.status == Status.READY, version.status_message
    ordinals = sorted(version.chunks.values_list("ordinal", flat=True))
    assert ordinals == list(range(len(ordinals)))
    assert not version.chunks.filter(embedding__isnull=True).exists()


def test_beat_jobs_requeue_lost_versions_and_rebuild_stale_indexes(
    worker_factory, domain: Domain, settings, tmp_path
) -> None:
    """A version whose message was lost (queue empty, still pending) is sent again."""
    from search.ingestion.tasks import refresh_stale_bm25, requeue_stalled

    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    settings.KMS_STALLED_AFTER_SECONDS = 0
    with transaction.atomic():  # queue=False: as if the broker lost the message
        lost = add_document(domain, source="lost.md", filename="lost.md",
                            content=POLICY.encode(), queue=False)
    assert requeue_stalled() == 1
    worker_factory().start()
    wait_for_versions([lost.version_id], timeout=120)
    assert DocumentVersion.objects.get(pk=lost.version_id).status == Status.READY
    assert refresh_stale_bm25() in (0, 1)  # the ready hook may have queued it already
    deadline = time.monotonic() + 60
    while refresh_stale_bm25() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert refresh_stale_bm25() == 0
