"""The staff portal through Django's test client on the real database: sign-in, search,
ask (without script: the form posts), the viewer at a cited passage, downloads, uploads,
feedback, tokens, and 200 random requests that never show another group's documents."""

from __future__ import annotations

import random
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from kms.access import Access, visible_documents
from kms.store.models import AccessEvent, ApiToken, Conversation, Document, Feedback
from tests.corpus import RESTRICTED

pytestmark = pytest.mark.django_db


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_pages_need_a_sign_in_and_the_sign_in_works(corpus) -> None:
    anonymous = Client()
    for path in ("/", "/portal/", "/portal/ask/", "/portal/documents/", "/portal/profile/"):
        response = anonymous.get(path, follow=False)
        assert response.status_code == 302, path
    assert anonymous.get("/portal/").url.startswith("/portal/login/")
    page = anonymous.get("/portal/login/")
    assert page.status_code == 200 and b'autocomplete="current-password"' in page.content
    wrong = anonymous.post("/portal/login/", {"username": "nurse", "password": "nope"})
    assert wrong.status_code == 200 and b'role="alert"' in wrong.content
    right = anonymous.post("/portal/login/", {"username": "nurse", "password": "pw-nurse"})
    assert right.status_code == 302 and right.url == "/portal/"
    assert b"Sign out" in anonymous.get("/portal/").content
    anonymous.post("/portal/logout/")
    assert anonymous.get("/portal/").status_code == 302


def test_the_password_can_be_changed(corpus) -> None:
    client = signed_in(corpus["nurse"])
    done = client.post("/portal/password/", {
        "old_password": "pw-nurse", "new_password1": "a-longer-pass-4471",
        "new_password2": "a-longer-pass-4471"})
    assert done.status_code == 302 and done.url == "/portal/password/done/"
    assert User.objects.get(username="nurse").check_password("a-longer-pass-4471")


def test_search_shows_highlighted_snippets_and_why_each_ranked(corpus) -> None:
    page = signed_in(corpus["nurse"]).get("/portal/", {"q": "metformin dose",
                                                      "domain": "healthcare"})
    html = page.content.decode()
    assert page.status_code == 200 and "Metformin" in html
    assert "<mark>Metformin</mark>" in html or "<mark>metformin</mark>" in html
    assert "Why this result" in html and "Keywords (BM25)" in html
    assert "Ward B escalation" not in signed_in(corpus["nurse"]).get(
        "/portal/", {"q": "escalation bleep", "domain": "healthcare"}).content.decode()
    refused = signed_in(corpus["accountant"]).get("/portal/", {"q": "metformin",
                                                              "domain": "healthcare"})
    assert refused.status_code == 200 and b"Select a valid choice" in refused.content
    assert AccessEvent.objects.filter(action="search", channel="portal").count() == 2


def test_asking_without_script_shows_the_answer_with_citation_links(corpus) -> None:
    client = signed_in(corpus["nurse"])
    created = client.post("/portal/ask/", {"domain": "healthcare"})
    conversation = Conversation.objects.get()
    assert created.url == f"/portal/ask/{conversation.pk}/"
    client.post(created.url, {"question": "What is the first-line drug for type 2 diabetes?"})
    client.post(created.url, {"question": "And its usual starting dose?"})
    html = client.get(created.url).content.decode()
    assert "Searched as:" in html and "500 mg" in html
    link = re.search(r'<a class="cite" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    viewer = client.get(link).content.decode()
    cited = re.search(r'<mark id="cited" tabindex="-1">(.*?)</mark>', viewer, re.S).group(1)
    assert "Metformin" in cited
    assert signed_in(corpus["ward-b-nurse"]).get(created.url).status_code == 404


def test_the_viewer_and_download_go_through_the_access_check(corpus) -> None:
    restricted = Document.objects.get(source="ward-b.md")
    version = restricted.current_version
    member = signed_in(corpus["ward-b-nurse"])
    page = member.get(f"/portal/documents/{restricted.pk}/",
                      {"version": version.pk, "start": 0, "end": 17})
    assert re.search(rb'<mark id="cited" tabindex="-1">Ward B escalation</mark>', page.content)
    download = member.get(f"/portal/documents/{restricted.pk}/download/")
    assert b"".join(download.streaming_content) == RESTRICTED.encode()
    nurse = signed_in(corpus["nurse"])
    assert nurse.get(f"/portal/documents/{restricted.pk}/").status_code == 404
    assert nurse.get(f"/portal/documents/{restricted.pk}/download/").status_code == 404
    assert AccessEvent.objects.filter(action="download", username="ward-b-nurse").count() == 1


def test_uploads_store_all_or_nothing_and_the_list_follows_them(corpus, settings) -> None:
    nurse = corpus["nurse"]
    client = signed_in(nurse)
    listing = client.get("/portal/documents/").content.decode()
    assert 'enctype="multipart/form-data"' not in listing  # no permission, no form
    nurse.user_permissions.add(Permission.objects.get(codename="add_document"))
    client = signed_in(User.objects.get(pk=nurse.pk))
    before = Document.objects.count()
    bad = client.post("/portal/documents/upload/", {"domain": "healthcare", "files": [
        SimpleUploadedFile("falls.md", b"# Falls\n\nCheck footwear."),
        SimpleUploadedFile("tool.exe", b"MZ\x90\x00")]}, follow=True)
    assert "Nothing was stored" in bad.content.decode() and Document.objects.count() == before
    good = client.post("/portal/documents/upload/", {"domain": "healthcare", "files": [
        SimpleUploadedFile("falls.md", b"# Falls\n\nCheck footwear."),
        SimpleUploadedFile("sepsis.txt", b"Start antibiotics within the hour.")]}, follow=True)
    assert Document.objects.count() == before + 2 and "falls.md" in good.content.decode()
    ids = ",".join(str(pk) for pk in Document.objects.filter(
        source__in=["falls.md", "sepsis.txt", "ward-b.md"]).values_list("pk", flat=True))
    statuses = client.get("/portal/documents/status/", {"ids": ids}).json()["documents"]
    assert sorted(s["status"] for s in statuses.values()) == ["pending", "pending"]
    assert client.get("/portal/documents/status/", {"ids": "1,x"}).status_code == 400


def test_feedback_from_the_pages_reaches_the_queue(corpus) -> None:
    client = signed_in(corpus["nurse"])
    document = Document.objects.get(source="metformin.md")
    sent = client.post("/portal/feedback/", {"target": "result", "rating": "down",
                                             "query": "metformin", "document_id": document.pk,
                                             "next": "/portal/?q=metformin"})
    assert sent.status_code == 302 and sent.url == "/portal/?q=metformin"
    scripted = client.post("/portal/feedback/", {"target": "result", "rating": "up",
                                                 "query": "metformin",
                                                 "document_id": document.pk},
                           headers={"Accept": "application/json"})
    assert scripted.status_code == 201
    refused = client.post("/portal/feedback/", {"target": "result", "rating": "up",
                                                "document_id": document.pk,
                                                "next": "https://evil.example/"})
    assert refused.url == "/portal/"  # no open redirect
    assert list(Feedback.objects.order_by("pk").values_list("rating", flat=True)) == [
        "down", "up"]


def test_tokens_are_created_shown_once_and_revoked_in_the_profile(corpus) -> None:
    client = signed_in(corpus["nurse"])
    made = client.post("/portal/profile/", {"name": "laptop", "days": "30"}).content.decode()
    secret = re.search(r"<code data-secret>(kms_[^<]+)</code>", made).group(1)
    api = Client(headers={"Authorization": f"Bearer {secret}"})
    assert api.get("/api/v1/domains").status_code == 200
    assert secret not in client.get("/portal/profile/").content.decode()
    token = ApiToken.objects.get(name="laptop")
    client.post("/portal/profile/", {"revoke": token.pk})
    assert api.get("/api/v1/domains").status_code == 401
    other = signed_in(corpus["accountant"])
    other_token = ApiToken.objects.create(user=corpus["accountant"], name="x", prefix="p1",
                                          digest="d", expires_at=token.expires_at)
    signed_in(corpus["nurse"]).post("/portal/profile/", {"revoke": other_token.pk})
    assert ApiToken.objects.get(pk=other_token.pk).revoked_at is None
    assert other.get("/portal/profile/").status_code == 200


def test_200_random_portal_requests_never_show_another_groups_documents(corpus) -> None:
    """Random users and pages; every document a page links to or shows must be one the
    access module lets that user see."""
    rng = random.Random(11)
    clients = {name: signed_in(user) for name, user in corpus.items()}
    visible = {name: set(visible_documents(Access.for_user(user)).values_list("pk", flat=True))
               for name, user in corpus.items()}
    every = list(Document.objects.values_list("pk", flat=True))
    titles = dict(Document.objects.values_list("pk", "title"))
    words = ["hand hygiene", "escalation bleep", "metformin dose", "expenses form", "ward b"]
    threads = {name: clients[name].post("/portal/ask/", {"domain": "healthcare"}).url
               for name in ("nurse", "ward-b-nurse")}  # the others are not members
    counts = dict.fromkeys(["search", "ask", "conversation", "list", "viewer", "download"], 0)
    linked = re.compile(r"/portal/documents/(\d+)/")
    for _ in range(200):
        name = rng.choice(list(clients))
        client, allowed = clients[name], visible[name]
        kind = rng.choice(list(counts))
        counts[kind] += 1
        if kind == "search":
            response = client.get("/portal/", {"q": rng.choice(words),
                                               "domain": rng.choice(["healthcare", "finance"])})
        elif kind in ("ask", "conversation"):
            target = rng.choice(list(threads.values()))
            if kind == "ask":
                response = client.post(target, {"question": rng.choice(words) + "?"},
                                       follow=True)
            else:
                response = client.get(target)
            if target != threads.get(name):
                assert response.status_code == 404
        elif kind == "list":
            response = client.get("/portal/documents/")
        else:
            document = rng.choice(every)
            suffix = "download/" if kind == "download" else ""
            response = client.get(f"/portal/documents/{document}/{suffix}")
            assert response.status_code == (200 if document in allowed else 404)
        assert response.status_code < 500
        if response.status_code == 200 and kind != "download":
            html = response.content.decode()
            shown = {int(pk) for pk in linked.findall(html)}
            assert shown <= allowed, (name, kind, shown - allowed)
            hidden = [titles[pk] for pk in set(every) - allowed]
            assert not [t for t in hidden if f">{t}</a>" in html], (name, kind)
    print(f"\nrandom portal requests: {sum(counts.values())} ({counts}), none showed a "
          "document outside the caller's access")
    assert all(counts.values())
