"""Curation: archive, restore and delete documents, exclude a passage from retrieval, the
feedback queue and its promotion to curated pairs, and the append-only audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import DatabaseError, transaction
from django.test import Client
from django.utils import timezone

from kms.access import Access
from kms.store.models import AccessEvent, Chunk, CuratedPair, Document, Feedback
from search.answering.answers import answer
from search.curation import audit
from search.curation.feedback import FeedbackError, give_feedback, promote
from search.ingestion import curation
from search.retrieval import index_store as bm25_store
from search.retrieval.search import search
from tests.corpus import assert_error, client_for

pytestmark = pytest.mark.django_db


def _titles(query: str, user: User, mode: str = "hybrid") -> list[str]:
    return [d.title for d in search(query, domain="healthcare", access=Access.for_user(user),
                                    mode=mode).documents]


def test_an_archived_document_leaves_search_and_answers_until_restored(corpus) -> None:
    nurse = corpus["nurse"]
    metformin = Document.objects.get(source="metformin.md")
    assert "Metformin" in _titles("metformin starting dose", nurse)
    with set_actor(nurse):
        assert curation.archive(Access.for_user(nurse), [metformin.pk]) == 1
    for mode in ("hybrid", "bm25", "dense"):  # at once, before the BM25 index is rebuilt
        assert "Metformin" not in _titles("metformin starting dose", nurse, mode)
    reply = answer("What is the starting dose of metformin?", domain="healthcare",
                   access=Access.for_user(nurse))
    assert all(s.document_id != metformin.pk for s in reply.sources)
    bm25_store.build_index(metformin.domain)
    assert "Metformin" not in _titles("metformin starting dose", nurse, "bm25")
    assert Document.objects.get(pk=metformin.pk).versions.count() == 1  # kept

    curation.restore(Access.for_user(nurse), [metformin.pk])
    assert "Metformin" in _titles("metformin starting dose", nurse)
    change = LogEntry.objects.get_for_object(metformin).filter(
        action=LogEntry.Action.UPDATE).order_by("timestamp").first()
    assert change.actor == nurse and change.changes == {"publication": ["published",
                                                                          "archived"]}


def test_an_excluded_passage_is_not_retrieved_until_included(corpus) -> None:
    nurse = corpus["nurse"]
    chunks = list(Chunk.objects.filter(document__source="hand-hygiene.md", is_current=True))
    ids = [c.pk for c in chunks]

    def found() -> set[int]:
        response = search("alcohol rub twenty seconds", domain="healthcare",
                          access=Access.for_user(nurse))
        return {c.chunk_id for c in response.chunks}

    assert found() & set(ids)
    assert curation.set_excluded(Access.for_user(nurse), ids, True) == len(ids)
    assert not found() & set(ids)
    assert curation.set_excluded(Access.for_user(nurse), ids, True) == 0  # already
    curation.set_excluded(Access.for_user(nurse), ids, False)
    assert found() & set(ids)


def test_curators_never_touch_what_they_cannot_see(corpus) -> None:
    restricted = Document.objects.get(source="ward-b.md")
    nurse = Access.for_user(corpus["nurse"])
    assert curation.archive(nurse, [restricted.pk]) == 0
    assert curation.delete_documents(nurse, [restricted.pk]) == 0
    chunk = restricted.chunks.first()
    assert curation.set_excluded(nurse, [chunk.pk], True) == 0
    assert Document.objects.filter(pk=restricted.pk, publication="published").exists()


def test_delete_removes_the_document_and_its_stored_file(
        corpus, django_capture_on_commit_callbacks) -> None:
    document = Document.objects.get(source="hand-hygiene.md")
    stored = document.versions.get().file
    assert stored.storage.exists(stored.name)
    with django_capture_on_commit_callbacks(execute=True):
        assert curation.delete_documents(Access.for_user(corpus["nurse"]), [document.pk]) == 1
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not stored.storage.exists(stored.name)


def test_the_api_archives_restores_and_deletes_with_the_permissions(corpus) -> None:
    nurse = corpus["nurse"]
    document = Document.objects.get(source="metformin.md")
    client = client_for(nurse)
    assert "change_document" in assert_error(
        client.post(f"/api/v1/documents/{document.pk}/archive"), 403, "forbidden")["message"]
    nurse.user_permissions.add(*Permission.objects.filter(
        codename__in=["change_document", "delete_document"]))
    client = client_for(User.objects.get(pk=nurse.pk))
    archived = client.post(f"/api/v1/documents/{document.pk}/archive")
    assert archived.status_code == 200 and archived.json()["publication"] == "archived"
    listed = client.get("/api/v1/documents", {"publication": "archived"}).json()
    assert [d["id"] for d in listed["documents"]] == [document.pk]
    assert client.post(f"/api/v1/documents/{document.pk}/restore").json()[
        "publication"] == "published"
    restricted = Document.objects.get(source="ward-b.md")
    assert_error(client.delete(f"/api/v1/documents/{restricted.pk}"), 404, "not_found")
    assert client.delete(f"/api/v1/documents/{document.pk}").status_code == 204
    assert not Document.objects.filter(pk=document.pk).exists()


def _turn(client: Client, question: str) -> dict:
    conversation = client.post("/api/v1/conversations", {"domain": "healthcare"},
                               content_type="application/json").json()["id"]
    return client.post(f"/api/v1/conversations/{conversation}/ask", {"question": question},
                       content_type="application/json").json()


def test_feedback_points_only_at_what_its_user_saw(corpus) -> None:
    nurse, member = corpus["nurse"], corpus["ward-b-nurse"]
    client = client_for(nurse)
    turn = _turn(client, "What is the starting dose of metformin?")
    sent = client.post("/api/v1/feedback", {"target": "citation", "rating": "down",
                                            "turn_id": turn["id"], "citation": 1,
                                            "comment": "wrong page"},
                       content_type="application/json")
    assert sent.status_code == 201 and sent.json()["state"] == "new"
    feedback = Feedback.objects.get(pk=sent.json()["id"])
    assert feedback.document.source == "metformin.md" and feedback.chunk is not None

    for body, message in (
        ({"target": "answer", "rating": "up", "turn_id": turn["id"]}, "turn of one of your"),
        ({"target": "citation", "rating": "up", "turn_id": turn["id"], "citation": 9},
         "no citation [9]"),
        ({"target": "result", "rating": "up", "query": "bleep",
          "document_id": Document.objects.get(source="ward-b.md").pk}, "a document you can"),
        ({"target": "result", "rating": "up", "document_id": feedback.document_id},
         "needs the query"),
    ):
        who = client_for(member) if body.get("target") == "answer" else client
        refused = who.post("/api/v1/feedback", body, content_type="application/json")
        assert message in assert_error(refused, 400, "bad_request")["message"], body
    with pytest.raises(FeedbackError, match="target must be one of"):
        give_feedback(nurse, Access.for_user(nurse), target="page", rating="up")


def test_feedback_is_promoted_to_a_curated_pair_from_the_admin_queue(corpus) -> None:
    nurse = corpus["nurse"]
    turn = _turn(client_for(nurse), "What is the starting dose of metformin?")
    feedback = give_feedback(nurse, Access.for_user(nurse), target="answer", rating="up",
                             turn_id=turn["id"])
    admin = User.objects.create_superuser("curator", password="pw")
    browser = Client()
    browser.force_login(admin)
    queue = browser.get("/admin/store/feedback/", {"state__exact": "new"})
    assert queue.status_code == 200 and "starting dose of metformin" in queue.content.decode()
    done = browser.post("/admin/store/feedback/", {"action": "promote_to_pairs",
                                                   "_selected_action": [feedback.pk]})
    assert done.status_code == 302
    pair = CuratedPair.objects.get(feedback=feedback)
    assert pair.origin == "feedback" and "500 mg" in pair.answer and pair.created_by == admin
    assert [d.source for d in pair.documents.all()] == ["metformin.md"]
    assert Feedback.objects.get(pk=feedback.pk).state == "promoted"
    with pytest.raises(FeedbackError, match="no answer to promote"):
        promote(give_feedback(nurse, Access.for_user(nurse), target="result", rating="down",
                              query="dose", document_id=pair.documents.get().pk), admin)


def test_admin_bulk_actions_archive_exclude_and_assign(corpus) -> None:
    from django.contrib.auth.models import Group

    admin = User.objects.create_superuser("curator", password="pw")
    browser = Client()
    browser.force_login(admin)
    document = Document.objects.get(source="metformin.md")
    browser.post("/admin/store/document/", {"action": "archive",
                                            "_selected_action": [document.pk]})
    assert Document.objects.get(pk=document.pk).publication == "archived"
    assert not Chunk.objects.filter(document=document, published=True).exists()
    browser.post("/admin/store/document/", {"action": "restore",
                                            "_selected_action": [document.pk]})
    assert Chunk.objects.filter(document=document, published=True).exists()
    ward_b = Group.objects.get(name="ward-b")
    browser.post("/admin/store/document/", {"action": "set_access_groups",
                                            "groups": [ward_b.pk],
                                            "_selected_action": [document.pk]})
    assert list(document.access_groups.all()) == [ward_b]
    assert "Metformin" not in _titles("metformin", corpus["nurse"])
    chunk = document.chunks.filter(is_current=True).first()
    browser.post("/admin/store/chunk/", {"action": "exclude_chunks",
                                         "_selected_action": [chunk.pk]})
    assert Chunk.objects.get(pk=chunk.pk).excluded


def test_reads_are_audited_and_the_log_is_append_only(corpus) -> None:
    client = client_for(corpus["nurse"])
    client.get("/api/v1/search", {"q": "metformin dose", "domain": "healthcare"})
    document = Document.objects.get(source="metformin.md")
    client.get(f"/api/v1/documents/{document.pk}/download")
    searched, downloaded = AccessEvent.objects.order_by("at")
    assert (searched.action, searched.channel, searched.username) == ("search", "api", "nurse")
    assert {"document": document.pk, "version": document.current_version_id} in \
        searched.documents
    assert downloaded.action == "download" and downloaded.documents == [
        {"document": document.pk, "version": document.current_version_id}]

    with pytest.raises(ValueError, match="append-only"):
        searched.save()
    for statement in (lambda: AccessEvent.objects.filter(pk=searched.pk).update(query="x"),
                      lambda: AccessEvent.objects.filter(pk=searched.pk).delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            statement()

    audit.record(corpus["nurse"], "view", "portal", domain="healthcare")
    AccessEvent.objects.create(at=timezone.now() - timedelta(days=400), username="nurse",
                               action="view", channel="portal")
    assert audit.purge(365) == (1, 0)
    assert AccessEvent.objects.count() == 3
    assert audit.purge(0) == (0, 0)


def test_the_audit_pages_are_read_only_in_the_admin(corpus) -> None:
    client_for(corpus["nurse"]).get("/api/v1/search", {"q": "metformin", "domain": "healthcare"})
    admin = User.objects.create_superuser("auditor", password="pw")
    browser = Client()
    browser.force_login(admin)
    events = browser.get("/admin/store/accessevent/")
    assert events.status_code == 200 and "nurse" in events.content.decode()
    event = AccessEvent.objects.get()
    assert browser.get(f"/admin/store/accessevent/{event.pk}/delete/").status_code == 403
    assert browser.get("/admin/store/accessevent/add/").status_code == 403
    assert browser.get("/admin/auditlog/logentry/").status_code == 200
