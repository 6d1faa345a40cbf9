"""Conversations: threads of questions where a follow-up is rewritten into a standalone
question before retrieval. Only their user sees them; another user's id is "not found"."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import Http404, HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status

from kms.store.models import Conversation, Turn
from search.answering.answers import AnswerOptions
from search.answering.conversations import (
    ConversationNotFound,
    ask_in_conversation,
    conversation_of,
    start_conversation,
    user_conversations,
    visible_answer,
    visible_cited,
)
from search.api import errors
from search.api.auth import access_of, channel
from search.api.querying import sse_event, sse_events, sse_response
from search.api.schemas import AnswerOut, Text
from search.curation import audit

router = Router(tags=["conversations"])
NOT_FOUND = {404: errors.ErrorOut, **errors.COMMON}


class ConversationIn(Schema):
    domain: Text = Field(..., min_length=1, max_length=100)
    title: Text = Field("", max_length=200)


class FollowUpIn(Schema):
    question: Text = Field(..., min_length=1, max_length=2000)
    verify: Literal["lexical", "embedding", "model"] | None = None
    stream: bool = False  # events: question (the rewrite), draft pieces, then the turn


class TurnOut(Schema):
    id: int
    number: int
    question: str
    standalone_question: str = Field(description="What retrieval was given: the question "
                                     "rewritten from the thread when it leans on it.")
    rewritten: bool
    answer: AnswerOut
    created_at: datetime


class ConversationOut(Schema):
    id: int
    domain: str
    title: str
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    turns: list[TurnOut]


def _conversation(conversation: Conversation) -> dict:
    return {"id": conversation.pk, "domain": conversation.domain.slug,
            "title": conversation.title, "created_at": conversation.created_at,
            "updated_at": conversation.updated_at}


def turn_out(turn: Turn, visible_ids: set[int]) -> dict:
    return {"id": turn.pk, "number": turn.number, "question": turn.question,
            "standalone_question": turn.standalone_question, "rewritten": turn.rewritten,
            "answer": visible_answer(turn, visible_ids), "created_at": turn.created_at}


def _mine(request: HttpRequest, conversation_id: int) -> Conversation:
    try:
        return conversation_of(request.auth, conversation_id)
    except ConversationNotFound as exc:
        raise Http404(str(exc)) from exc


@router.get("", response={200: list[ConversationOut], **errors.COMMON})
def list_conversations(request: HttpRequest):
    """Your conversations, the latest first."""
    return [_conversation(c) for c in user_conversations(request.auth)[:100]]


@router.post("", response={201: ConversationOut, **errors.COMMON})
def create_conversation(request: HttpRequest, body: ConversationIn):
    """Start a conversation in a domain you can see."""
    conversation = start_conversation(request.auth, body.domain, access_of(request),
                                      body.title)
    return Status(201, _conversation(conversation))


@router.get("/{conversation_id}", response={200: ConversationDetail, **NOT_FOUND})
def conversation_detail(request: HttpRequest, conversation_id: int):
    """A conversation with every turn: the question, its rewrite and the verified answer."""
    conversation = _mine(request, conversation_id)
    turns = list(conversation.turns.order_by("number"))
    visible = visible_cited(access_of(request), turns)
    return {**_conversation(conversation), "turns": [turn_out(t, visible) for t in turns]}


@router.delete("/{conversation_id}", response={204: None, **NOT_FOUND})
def delete_conversation(request: HttpRequest, conversation_id: int):
    _mine(request, conversation_id).delete()
    return Status(204, None)


@router.post("/{conversation_id}/ask", response={200: TurnOut, 503: errors.ErrorOut,
                                                 **NOT_FOUND},
             openapi_extra={"responses": {200: {"description": "The new turn; with "
                                                "stream=true, server-sent events: question "
                                                "(the standalone rewrite), draft pieces, "
                                                "then turn.",
                                                "content": {"text/event-stream": {}}}}})
def ask_follow_up(request: HttpRequest, conversation_id: int, body: FollowUpIn):
    """Ask in a conversation: a follow-up that leans on the thread ("and for children?")
    is rewritten into a standalone question first; the rewrite is in the turn."""
    conversation = _mine(request, conversation_id)
    events = ask_in_conversation(conversation, body.question, access_of(request),
                                 AnswerOptions.from_settings(verify=body.verify))
    standalone = next(events)  # retrieval runs here: a bad question is a 4xx

    def final(turn: Turn) -> tuple[str, dict]:
        audit.record_turn(request.auth, channel(request), turn)
        return "turn", TurnOut(**turn_out(turn, {s["document_id"] for s in
                                                 turn.answer["sources"]})).model_dump(
            mode="json")

    if body.stream:
        def stream():
            yield sse_event("question", {"standalone_question": standalone})
            yield from sse_events(events, final)
        return sse_response(stream())
    turn = None
    for event in events:
        turn = event
    return final(turn)[1]
