"""Conversations: follow-ups rewritten into standalone questions from the thread, turns kept
with their verified answers, and only their user may read or continue them."""

from __future__ import annotations

import json

import pytest

from search.answering.conversations import needs_context, standalone_question
from tests.corpus import assert_error, client_for


@pytest.mark.parametrize(("earlier", "follow_up", "expected"), [
    ([], "Or installment easier?", "Or installment easier?"),
    (["Is a lump sum better for paying off a car loan?"], "Or installment easier?",
     "Or installment easier (regarding: a lump sum better for paying off a car loan)?"),
    (["What is the starting dose of metformin?"], "And is it first-line?",
     "And is it first-line (regarding: the starting dose of metformin)?"),
    (["What is the starting dose of metformin?"],
     "How long should staff rub their hands with alcohol?",
     "How long should staff rub their hands with alcohol?"),
    (["What is the starting dose of metformin?"], "What about the starting dose of metformin "
     "in children?", "What about the starting dose of metformin in children?"),
])
def test_a_follow_up_that_leans_on_the_thread_is_rewritten(earlier, follow_up,
                                                           expected) -> None:
    assert standalone_question(earlier, follow_up) == expected


def test_what_counts_as_leaning_on_the_thread() -> None:
    assert needs_context("What about children?") and needs_context("Is it safe?")
    assert not needs_context("Is metformin safe in chronic kidney disease?")


def _ask(client, conversation_id: int, question: str, **extra):
    return client.post(f"/api/v1/conversations/{conversation_id}/ask",
                       {"question": question, **extra}, content_type="application/json")


@pytest.mark.django_db
def test_a_conversation_answers_a_follow_up_from_its_rewrite(corpus) -> None:
    client = client_for(corpus["nurse"])
    created = client.post("/api/v1/conversations", {"domain": "healthcare"},
                          content_type="application/json")
    assert created.status_code == 201, created.content
    conversation = created.json()["id"]

    first = _ask(client, conversation, "What is the first-line drug for type 2 diabetes?")
    assert first.status_code == 200, first.content
    assert first.json()["rewritten"] is False
    assert first.json()["answer"]["sources"][0]["title"] == "Metformin"

    follow_up = _ask(client, conversation, "And its usual starting dose?")
    body = follow_up.json()
    assert body["rewritten"] is True and body["number"] == 2
    assert "first-line drug for type 2 diabetes" in body["standalone_question"]
    assert body["answer"]["sources"][0]["title"] == "Metformin"
    assert "500 mg" in body["answer"]["text"]

    detail = client.get(f"/api/v1/conversations/{conversation}").json()
    assert detail["title"] == "What is the first-line drug for type 2 diabetes?"
    assert [t["question"] for t in detail["turns"]] == [
        "What is the first-line drug for type 2 diabetes?", "And its usual starting dose?"]
    assert detail["turns"][1]["standalone_question"] == body["standalone_question"]
    assert [c["id"] for c in client.get("/api/v1/conversations").json()] == [conversation]


@pytest.mark.django_db
def test_another_users_conversation_is_not_found(corpus) -> None:
    owner, other = client_for(corpus["ward-b-nurse"]), client_for(corpus["nurse"])
    conversation = owner.post("/api/v1/conversations", {"domain": "healthcare"},
                              content_type="application/json").json()["id"]
    _ask(owner, conversation, "What is the escalation bleep number on ward B?")
    for response in (other.get(f"/api/v1/conversations/{conversation}"),
                     _ask(other, conversation, "And the bleep?"),
                     other.delete(f"/api/v1/conversations/{conversation}")):
        assert "of yours" in assert_error(response, 404, "not_found")["message"]
    assert other.get("/api/v1/conversations").json() == []
    assert owner.get(f"/api/v1/conversations/{conversation}").status_code == 200
    refused = client_for(corpus["accountant"]).post(
        "/api/v1/conversations", {"domain": "healthcare"}, content_type="application/json")
    assert_error(refused, 400, "bad_request")


@pytest.mark.django_db
def test_an_answer_whose_source_is_no_longer_visible_is_withheld(corpus) -> None:
    from django.contrib.auth.models import Group

    member = corpus["ward-b-nurse"]
    client = client_for(member)
    conversation = client.post("/api/v1/conversations", {"domain": "healthcare"},
                               content_type="application/json").json()["id"]
    answered = _ask(client, conversation, "What is the escalation bleep number on ward B?")
    assert "4471" in answered.json()["answer"]["text"]
    member.groups.remove(Group.objects.get(name="ward-b"))
    turn = client.get(f"/api/v1/conversations/{conversation}").json()["turns"][0]
    assert "4471" not in json.dumps(turn["answer"]) and turn["answer"]["sources"] == []
    assert "no longer see" in turn["answer"]["text"]


@pytest.mark.django_db
def test_a_streamed_turn_sends_the_rewrite_then_the_draft_then_the_turn(corpus) -> None:
    client = client_for(corpus["nurse"])
    conversation = client.post("/api/v1/conversations", {"domain": "healthcare"},
                               content_type="application/json").json()["id"]
    _ask(client, conversation, "What is the first-line drug for type 2 diabetes?")
    response = _ask(client, conversation, "And its usual starting dose?", stream=True)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = [block.split("\n") for block in
              b"".join(response.streaming_content).decode().strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[0] == "question" and names[-1] == "turn" and "draft" in names
    assert "type 2 diabetes" in json.loads(events[0][1].removeprefix("data: "))[
        "standalone_question"]
    turn = json.loads(events[-1][1].removeprefix("data: "))
    assert turn["number"] == 2 and turn["answer"]["sources"]


@pytest.mark.django_db
def test_malformed_ask_requests_get_the_one_error_format(corpus) -> None:
    client = client_for(corpus["nurse"])
    conversation = client.post("/api/v1/conversations", {"domain": "healthcare"},
                               content_type="application/json").json()["id"]
    url = f"/api/v1/conversations/{conversation}/ask"
    assert_error(client.post(url, "stream=please", content_type="application/json"), 400,
                 "bad_request")
    assert_error(client.post(url, {"question": "dose?", "stream": "please"},
                             content_type="application/json"), 422, "invalid_request")
    assert_error(client.post(url, {"question": ""}, content_type="application/json"), 422,
                 "invalid_request")
    assert_error(client.post(url, {"question": "a\x00b"}, content_type="application/json"),
                 422, "invalid_request")
    assert_error(client.post("/api/v1/ask", {"question": "dose?", "domain": "healthcare",
                                             "stream": [1]},
                             content_type="application/json"), 422, "invalid_request")
