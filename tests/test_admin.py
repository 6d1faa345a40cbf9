"""The admin as curators use it: deleting, re-processing, re-embedding, read-only chunks."""

from __future__ import annotations

import shutil

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from kms.store.models import Chunk, Document, DocumentVersion, Domain, ModelRun, Status
from search.ingestion import pipeline
from search.ingestion.documents import add_document
from search.ingestion.pipeline import embed_pending
from search.ingestion.progress import process_inline
from search.retrieval import index_store
from search.retrieval.search import search
from tests.conftest import OPERATOR

pytestmark = pytest.mark.django_db

TEXT = ("# Falls\n\n## Assessment\n\nCheck lying and standing blood pressure on admission.\n\n"
        + "".join(f"## Step {n}\n\nReview sedatives, footwear and eyesight of every patient at "
                  f"risk of falls, round {n}, and record the findings.\n\n" for n in range(1, 9))
        ).encode()


@pytest.fixture
def staff(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("curator", password="x"))
    return client


@pytest.fixture
def ready(domain: Domain) -> DocumentVersion:
    result = add_document(domain, uploader=OPERATOR, source="falls.md", filename="falls.md",
                          content=TEXT,
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


@pytest.fixture
def neighbours(domain: Domain) -> None:
    """Other documents, so BM25's idf of the falls document's words is positive."""
    ids = [add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                        content=f"# {name.title()}\n\nReview {name} every day.\n".encode(),
                        queue=False).version_id
           for name in ("sepsis", "nutrition", "sedation")]
    process_inline(ids)


def found_by_bm25_and_dense(version: DocumentVersion) -> bool:
    """The document is the top hit for its own words in both retrievers."""
    query = "lying standing blood pressure falls"
    return all(
        [d.document_id for d in search(query, domain=version.document.domain, access=OPERATOR,
                                       mode=mode, k=1).documents] == [version.document_id]
        for mode in ("bm25", "dense")
    )


def step_until_served(version: DocumentVersion, steps: list[str]) -> int:
    """Run the pipeline one small step at a time, searching after each; returns the searches."""
    pipeline.chunk_versions(pipeline.parse_versions([version.pk]))
    assert found_by_bm25_and_dense(version), "after parse and chunk"
    searches = 1
    while Chunk.objects.filter(version=version, vectors__isnull=True).exists():
        embed_pending(claim_size=1, time_budget=0)  # one chunk per call
        steps.append(DocumentVersion.objects.get(pk=version.pk).status)
        assert found_by_bm25_and_dense(version), f"after {len(steps)} embedding steps"
        searches += 1
    return searches


def test_process_again_keeps_the_document_found_and_logs_it(
    staff: Client, ready, neighbours, django_capture_on_commit_callbacks, settings, tmp_path
) -> None:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    index_store.build_index(ready.document.domain)
    served = set(ready.chunks.values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = staff.post("/admin/store/document/", {
            "action": "process_again", "_selected_action": [ready.document_id],
        }, follow=True)
    assert b"Queued 1 version for processing" in response.content
    assert len(queued) == 1
    assert LogEntry.objects.filter(object_id=str(ready.document_id)).exists()
    assert found_by_bm25_and_dense(ready)
    steps: list[str] = []
    assert step_until_served(ready, steps) == len(steps) + 1 > 2
    assert steps[:-1] == [Status.PROCESSING] * (len(steps) - 1)  # served while processing
    assert steps[-1] == Status.READY
    ready.refresh_from_db()
    chunks = set(ready.chunks.values_list("pk", flat=True))
    assert chunks and not chunks & served  # a new set replaced the old one, which is gone
    assert ready.chunks.filter(is_current=True).count() == len(chunks)
    index_store.build_index(ready.document.domain)
    assert found_by_bm25_and_dense(ready)


def test_reembed_keeps_the_document_found_and_reports(
    staff: Client, ready, neighbours, django_capture_on_commit_callbacks, settings, tmp_path
) -> None:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    index_store.build_index(ready.document.domain)
    count = ready.chunks.count()
    with django_capture_on_commit_callbacks(execute=False):
        response = staff.post("/admin/store/document/", {
            "action": "reembed_documents", "_selected_action": [ready.document_id],
        }, follow=True)
    noun = "chunk" if count == 1 else "chunks"
    assert f"Queued {count} {noun} of 1 document for re-embedding".encode() in response.content
    assert found_by_bm25_and_dense(ready)
    steps: list[str] = []
    while Chunk.objects.filter(version=ready, vectors__isnull=True).exists():
        embed_pending(claim_size=1, time_budget=0)
        steps.append(DocumentVersion.objects.get(pk=ready.pk).status)
        assert found_by_bm25_and_dense(ready), f"after {len(steps)} embedding steps"
    assert len(steps) == count > 1 and steps[-1] == Status.READY
    ready.refresh_from_db()
    assert ready.chunks.count() == count
    assert not ready.chunks.filter(vectors__isnull=True).exists()


def test_model_runs_are_listed_promoted_and_rolled_back(staff: Client, domain: Domain,
                                                        tmp_path) -> None:
    runs = []
    for n in range(2):
        (tmp_path / f"r{n}").mkdir()
        (tmp_path / f"r{n}" / "config.json").write_text("{}")
        runs.append(ModelRun.objects.create(
            domain=domain, kind="reranker", state="rejected", base_model="base",
            model_dir=str(tmp_path / f"r{n}"), data_counts={"training_seconds": 12.5},
            metrics={"candidate": {"ndcg@10": 0.71}, "served": {"ndcg@10": 0.70}}))
    page = staff.get("/admin/store/modelrun/")
    assert page.status_code == 200 and b"0.71" in page.content and b"12.5" in page.content

    def act(action: str, run: ModelRun):
        return staff.post("/admin/store/modelrun/", {"action": action,
                                                      "_selected_action": [run.pk]}, follow=True)

    act("promote_runs", runs[0])
    act("promote_runs", runs[1])
    states = lambda: [ModelRun.objects.get(pk=r.pk).state for r in runs]  # noqa: E731
    assert states() == ["retired", "promoted"]
    response = act("roll_back_runs", runs[1])
    assert f"run {runs[0].pk} is served again" in response.content.decode()
    assert states() == ["promoted", "retired"]
    act("roll_back_runs", runs[0])
    assert states() == ["retired", "retired"]
    shutil.rmtree(tmp_path / "r1")
    response = act("promote_runs", runs[1])
    assert "are missing from" in response.content.decode()
    assert states() == ["retired", "retired"]
    assert LogEntry.objects.filter(object_id=str(runs[0].pk)).count() == 2  # promoted, rolled back


def test_api_tokens_are_issued_once_and_revoked(staff: Client, django_user_model) -> None:
    from kms.store.models import ApiToken
    from kms.tokens import token_for_secret

    owner = django_user_model.objects.create_user("service-account")
    response = staff.post("/admin/store/apitoken/add/",
                          {"user": owner.pk, "name": "reporting job", "days": 30}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    secret = next(word for m in shown for word in m.split() if word.startswith("kms_"))
    token = ApiToken.objects.get()
    assert token_for_secret(secret) == token and secret not in token.digest
    assert token.user == owner and 29 <= (token.expires_at - token.created_at).days <= 30
    listed = staff.get("/admin/store/apitoken/").content.decode()
    assert token.prefix in listed and secret not in listed  # never shown again

    staff.post("/admin/store/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is not None and not token.active
    refused = staff.post("/admin/store/apitoken/add/",
                         {"user": owner.pk, "name": "forever", "days": 5000})
    assert refused.status_code == 200 and ApiToken.objects.count() == 1
