"""The search API (``/api/v1/``) through Django's test client on the real database: tokens,
access, search, ask, the schema, and the one error format."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from kms.access import Access
from kms.store.models import ApiToken, Domain
from kms.tokens import TokenError, issue_token, revoke_token
from tests.corpus import RESTRICTED, assert_error, client_for

pytestmark = pytest.mark.django_db

def test_a_token_acts_with_its_users_access_until_revoked_or_expired(corpus) -> None:
    token, secret = issue_token(corpus["nurse"], "laptop", days=30)
    assert secret.startswith(f"kms_{token.prefix}_") and secret not in (token.digest,)
    assert ApiToken.objects.filter(digest__contains=secret.split("_")[2]).count() == 0
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    found = client.get("/api/v1/domains")
    assert found.status_code == 200 and [d["slug"] for d in found.json()] == ["healthcare"]

    revoke_token(token)
    assert "revoked" in assert_error(client.get("/api/v1/domains"), 401,
                                     "unauthenticated")["message"]
    old, old_secret = issue_token(corpus["nurse"], "old", days=1)
    ApiToken.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = Client(headers={"Authorization": f"Bearer {old_secret}"})
    assert "expired" in assert_error(expired.get("/api/v1/domains"), 401,
                                     "unauthenticated")["message"]
    forged = Client(headers={"Authorization": f"Bearer kms_{old.prefix}_guess"})
    assert_error(forged.get("/api/v1/domains"), 401, "unauthenticated")
    assert_error(Client().get("/api/v1/domains"), 401, "unauthenticated")
    with pytest.raises(TokenError, match="1 to 365 days"):
        issue_token(corpus["nurse"], "forever", days=10_000)


def test_search_shows_only_what_the_caller_may_see(corpus) -> None:
    query = {"q": "hand hygiene escalation bleep", "domain": "healthcare", "explain": "true"}
    nurse = client_for(corpus["nurse"]).get("/api/v1/search", query)
    assert nurse.status_code == 200
    titles = [r["title"] for r in nurse.json()["results"]]
    assert titles and "Ward B escalation" not in titles
    result = nurse.json()["results"][0]
    assert result["explain"]["bm25"] is not None and result["passages"][0]["snippet"]

    member = client_for(corpus["ward-b-nurse"]).get("/api/v1/search", query)
    assert "Ward B escalation" in [r["title"] for r in member.json()["results"]]

    for name in ("accountant", "nobody"):
        refused = client_for(corpus[name]).get("/api/v1/search", query)
        assert "Unknown domain 'healthcare'" in assert_error(refused, 400,
                                                             "bad_request")["message"]
    finance = client_for(corpus["accountant"]).get(
        "/api/v1/search", {"q": "hand hygiene", "domain": "finance"})
    assert [r["title"] for r in finance.json()["results"]] == ["Expenses"]


def test_search_pages_through_results(corpus) -> None:
    client = client_for(corpus["ward-b-nurse"])
    query = {"q": "hand hygiene metformin ward", "domain": "healthcare", "per_page": 1}
    first = client.get("/api/v1/search", query).json()
    second = client.get("/api/v1/search", {**query, "page": 2}).json()
    assert first["has_more"] and len(first["results"]) == len(second["results"]) == 1
    assert first["results"][0]["document_id"] != second["results"][0]["document_id"]


def test_ask_returns_the_verified_answer_only(corpus) -> None:
    response = client_for(corpus["nurse"]).post(
        "/api/v1/ask", {"question": "How long should staff rub alcohol gel?",
                        "domain": "healthcare"}, content_type="application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert not body["abstained"] and "twenty seconds" in body["text"]
    assert "draft" not in body and body["sources"]
    assert all(s["supported"] for s in body["sentences"] if s["shown"])
    cited = {s["number"] for s in body["sources"]}
    assert {n for s in body["sentences"] if s["shown"] for n in s["citations"]} == cited


def test_bad_requests_get_the_one_error_format(corpus) -> None:
    client = client_for(corpus["nurse"])
    invalid = assert_error(client.get("/api/v1/search", {"domain": "healthcare",
                                                         "per_page": 0}), 422,
                           "invalid_request")
    assert {d["location"].split(".")[-1] for d in invalid["details"]} >= {"q", "per_page"}
    assert_error(client.get("/api/v1/search", {"q": "x", "domain": "healthcare",
                                               "mode": "magic"}), 422, "invalid_request")
    assert_error(client.post("/api/v1/ask", "not json", content_type="application/json"),
                 400, "bad_request")
    assert_error(client.post("/api/v1/ask", {"question": "", "domain": "healthcare"},
                             content_type="application/json"), 422, "invalid_request")
    assert_error(client.get("/api/v1/search", {"q": "the of", "domain": "nowhere"}), 400,
                 "bad_request")


def test_the_schema_documents_every_endpoint(client) -> None:
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.") and document["info"]["version"] == "1"
    assert {"/api/v1/search", "/api/v1/ask", "/api/v1/domains"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["TokenAuth"] == {"type": "http",
                                                                       "scheme": "bearer"}
    assert client.get("/api/v1/docs").status_code == 200


def test_documents_are_listed_shown_and_downloaded_only_where_visible(corpus) -> None:
    nurse, member = client_for(corpus["nurse"]), client_for(corpus["ward-b-nurse"])
    listed = nurse.get("/api/v1/documents", {"domain": "healthcare"}).json()
    assert listed["total"] == 2 and "Ward B escalation" not in {
        d["title"] for d in listed["documents"]}
    restricted = Domain.objects.get(slug="healthcare").documents.get(source="ward-b.md")
    assert member.get("/api/v1/documents", {"q": "ward"}).json()["total"] == 1

    assert_error(nurse.get(f"/api/v1/documents/{restricted.pk}"), 404, "not_found")
    assert_error(nurse.get(f"/api/v1/documents/{restricted.pk}/download"), 404, "not_found")
    detail = member.get(f"/api/v1/documents/{restricted.pk}").json()
    assert detail["status"] == "ready" and [v["number"] for v in detail["versions"]] == [1]
    download = member.get(f"/api/v1/documents/{restricted.pk}/download")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == RESTRICTED.encode()
    assert 'filename="ward-b.md"' in download["Content-Disposition"]
    assert_error(client_for(corpus["accountant"]).get(f"/api/v1/documents/{restricted.pk}"),
                 404, "not_found")


def test_uploads_need_the_permission_and_refuse_bad_files_whole(corpus, settings) -> None:
    from django.contrib.auth.models import Permission
    from django.core.files.uploadedfile import SimpleUploadedFile

    def files(*named):
        return [SimpleUploadedFile(name, body) for name, body in named]

    nurse = corpus["nurse"]
    client = client_for(nurse)
    good = ("falls.md", b"# Falls\n\nCheck footwear on admission.")
    refused = client.post("/api/v1/documents", {"domain": "healthcare", "files": files(good)})
    assert "store.add_document" in assert_error(refused, 403, "forbidden")["message"]

    nurse.user_permissions.add(Permission.objects.get(codename="add_document"))
    client = client_for(User.objects.get(pk=nurse.pk))  # permissions are cached per object
    before = Domain.objects.get(slug="healthcare").documents.count()
    unknown = client.post("/api/v1/documents", {
        "domain": "healthcare", "files": files(good, ("notes.exe", b"MZ\x90\x00"))})
    assert "Unsupported file type" in assert_error(unknown, 415, "unsupported_type")["message"]
    settings.KMS_MAX_UPLOAD_BYTES = 10
    assert_error(client.post("/api/v1/documents", {"domain": "healthcare",
                                                   "files": files(good)}), 413, "too_large")
    settings.KMS_MAX_UPLOAD_BYTES = 1024
    assert Domain.objects.get(slug="healthcare").documents.count() == before  # nothing stored
    assert_error(client.post("/api/v1/documents", {"domain": "finance", "files": files(good)}),
                 400, "bad_request")

    stored = client.post("/api/v1/documents", {
        "domain": "healthcare", "files": files(good, ("sepsis.txt", b"Start antibiotics."))})
    assert stored.status_code == 201, stored.content
    assert [r["outcome"] for r in stored.json()] == ["queued", "queued"]
    document = Domain.objects.get(slug="healthcare").documents.get(source="falls.md")
    assert document.uploaded_by_id == nurse.pk and document.status == "pending"


def test_each_token_has_its_own_request_rate(corpus, settings) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.KMS_API_RATE = "2/min"
    first, second = client_for(corpus["nurse"]), client_for(corpus["nurse"])
    assert [first.get("/api/v1/domains").status_code for _ in range(2)] == [200, 200]
    throttled = first.get("/api/v1/domains")
    assert_error(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) > 0
    assert second.get("/api/v1/domains").status_code == 200  # another token, its own count
    cache.clear()


def test_ask_streams_the_draft_then_the_verified_answer(corpus) -> None:
    client = client_for(corpus["nurse"])
    response = client.post("/api/v1/ask", {"question": "How long should staff rub alcohol gel?",
                                           "domain": "healthcare", "stream": True},
                           content_type="application/json")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = [block.split("\n", 1) for block in
              b"".join(response.streaming_content).decode().strip().split("\n\n")]
    names = [head.removeprefix("event: ") for head, _ in events]
    assert names[-1] == "answer" and set(names[:-1]) == {"draft"} and len(names) > 1
    final = json.loads(events[-1][1].removeprefix("data: "))
    assert "twenty seconds" in final["text"] and final["sources"]
    # A stream that cannot start is a plain 4xx in the one format, not a broken stream.
    bad = client.post("/api/v1/ask", {"question": "x" * 1999, "domain": "nowhere",
                                      "stream": True}, content_type="application/json")
    assert_error(bad, 400, "bad_request")
    assert_error(client.post("/api/v1/ask", {"question": "Hand rub?", "domain": "healthcare",
                                             "stream": "sometimes"},
                             content_type="application/json"), 422, "invalid_request")


def test_unknown_paths_and_ids_answer_in_the_error_format(corpus) -> None:
    client = client_for(corpus["nurse"])
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/api/v2/search"), 404, "not_found")
    assert_error(client.get("/api/v1/documents/abc"), 422, "invalid_request")
    assert_error(client.get("/api/v1/documents/999999"), 404, "not_found")
    assert_error(client.get("/api/v1/search", {"q": "hand\x00", "domain": "healthcare"}), 422,
                 "invalid_request")


def test_200_random_requests_never_show_another_groups_documents(corpus) -> None:
    """Random users, endpoints and targets; every document in every response (results,
    sources and citations of answers and conversation turns, lists, details, downloads)
    must be one the access module lets that user see."""
    import random

    from kms.access import visible_documents
    from kms.store.models import Document

    rng = random.Random(7)
    clients = {name: client_for(user) for name, user in corpus.items()}
    visible = {name: set(visible_documents(Access.for_user(user)).values_list("pk", flat=True))
               for name, user in corpus.items()}
    every = list(Document.objects.values_list("pk", flat=True))
    words = ["hand hygiene", "escalation bleep", "metformin dose", "expenses form", "ward b"]
    threads = {name: clients[name].post("/api/v1/conversations", {"domain": "healthcare"},
                                        content_type="application/json").json()["id"]
               for name in ("nurse", "ward-b-nurse")}  # the others are not members
    counts = dict.fromkeys(["search", "ask", "conversation", "list", "detail", "download"], 0)
    for _ in range(200):
        name = rng.choice(list(clients))
        client, allowed = clients[name], visible[name]
        kind = rng.choice(list(counts))
        counts[kind] += 1
        domain = rng.choice(["healthcare", "finance"])
        if kind == "search":
            response = client.get("/api/v1/search", {"q": rng.choice(words), "domain": domain})
            shown = {r["document_id"] for r in response.json().get("results", [])}
        elif kind == "ask":
            response = client.post("/api/v1/ask", {"question": rng.choice(words) + "?",
                                                   "domain": domain},
                                   content_type="application/json")
            shown = {s["document_id"] for s in response.json().get("sources", [])}
        elif kind == "conversation":
            owner, thread = rng.choice(list(threads.items()))
            if rng.random() < 0.5:
                response = client.post(f"/api/v1/conversations/{thread}/ask",
                                       {"question": rng.choice(words) + "?"},
                                       content_type="application/json")
                turns = [response.json()] if response.status_code == 200 else []
            else:
                response = client.get(f"/api/v1/conversations/{thread}")
                turns = response.json().get("turns", [])
            assert response.status_code == (200 if owner == name else 404)
            shown = {s["document_id"] for t in turns for s in t["answer"]["sources"]}
        elif kind == "list":
            response = client.get("/api/v1/documents")
            shown = {d["id"] for d in response.json()["documents"]}
            assert shown == allowed
        else:
            target = rng.choice(every)
            suffix = "/download" if kind == "download" else ""
            response = client.get(f"/api/v1/documents/{target}{suffix}")
            shown = {target} if response.status_code == 200 else set()
            assert response.status_code == (200 if target in allowed else 404)
        assert response.status_code < 500
        assert shown <= allowed, (name, kind, shown - allowed)
    print(f"\nrandom access requests: {sum(counts.values())} ({counts}), none showed a "
          "document outside the caller's access")
    assert all(counts.values())
