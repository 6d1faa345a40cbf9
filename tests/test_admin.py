"""The admin as curators use it: deleting, re-processing, re-embedding, read-only chunks."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from kms.store.models import Chunk, Document, DocumentVersion, Domain, Status
from search.ingestion.documents import add_document
from search.ingestion.pipeline import embed_pending
from search.ingestion.progress import process_inline

pytestmark = pytest.mark.django_db

TEXT = b"# Falls\n\n## Assessment\n\nCheck lying and standing blood pressure on admission.\n"


@pytest.fixture
def staff(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("curator", password="x"))
    return client


@pytest.fixture
def ready(domain: Domain) -> DocumentVersion:
    result = add_document(domain, source="falls.md", filename="falls.md", content=TEXT,
                          queue=False)
    process_inline([result.version_id])
    return DocumentVersion.objects.get(pk=result.version_id)


def test_superuser_can_delete_a_document_with_its_chunks(staff: Client, ready) -> None:
    url = f"/admin/store/document/{ready.document_id}/delete/"
    page = staff.get(url)
    assert page.status_code == 200 and b"permission" not in page.content
    assert staff.post(url, {"post": "yes"}).status_code == 302
    assert not Document.objects.filter(pk=ready.document_id).exists()
    assert not Chunk.objects.filter(version=ready).exists()


def test_documents_are_not_added_empty_and_uploads_are_not_linked(staff: Client, ready) -> None:
    assert staff.get("/admin/store/document/add/").status_code == 403
    page = staff.get(f"/admin/store/documentversion/{ready.pk}/change/")
    assert page.status_code == 200
    assert b"/media/" not in page.content
    chunk = ready.chunks.first()
    page = staff.get(f"/admin/store/chunk/{chunk.pk}/change/")
    assert page.status_code == 200 and b"deletelink" not in page.content


def test_process_again_keeps_the_document_served_and_logs_it(
    staff: Client, ready, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = staff.post("/admin/store/document/", {
            "action": "process_again", "_selected_action": [ready.document_id],
        }, follow=True)
    assert b"Queued 1 version for processing" in response.content
    assert len(queued) == 1
    document = Document.objects.get(pk=ready.document_id)
    assert document.current_version_id == ready.pk  # still searchable meanwhile
    assert LogEntry.objects.filter(object_id=str(document.pk)).exists()
    process_inline([ready.pk])
    ready.refresh_from_db()
    assert ready.status == Status.READY
    assert ready.chunks.filter(is_current=True).count() == ready.chunks.count() > 0


def test_reembed_action_reports_and_recomputes(staff: Client, ready) -> None:
    count = ready.chunks.count()
    response = staff.post("/admin/store/document/", {
        "action": "reembed_documents", "_selected_action": [ready.document_id],
    }, follow=True)
    noun = "chunk" if count == 1 else "chunks"
    assert f"Queued {count} {noun} of 1 document for re-embedding".encode() in response.content
    assert Document.objects.get(pk=ready.document_id).current_version_id == ready.pk
    embed_pending()
    ready.refresh_from_db()
    assert ready.status == Status.READY
    assert not ready.chunks.filter(embedding__isnull=True).exists()
