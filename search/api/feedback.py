"""Feedback on an answer, a citation or a search result: it lands in the admin's review
queue, where a curator can promote it to a curated question/answer pair."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status

from search.api import errors
from search.api.auth import access_of
from search.api.errors import ApiError
from search.api.schemas import Text
from search.curation.feedback import FeedbackError, give_feedback

router = Router(tags=["feedback"])


class FeedbackIn(Schema):
    target: Literal["answer", "citation", "result"]
    rating: Literal["up", "down"] = Field(description="up: helpful (answer) or relevant "
                                          "(citation, result); down: unhelpful or wrong.")
    comment: Text = Field("", max_length=4000)
    turn_id: int | None = Field(None, description="answer and citation: the turn.")
    citation: int | None = Field(None, ge=1, description="citation: its [n].")
    query: Text = Field("", max_length=2000, description="result: the search query.")
    document_id: int | None = Field(None, description="result: the document found.")
    chunk_id: int | None = Field(None, description="result: the passage, if one.")


class FeedbackOut(Schema):
    id: int
    target: str
    rating: str
    state: str
    created_at: datetime


@router.post("", response={201: FeedbackOut, **errors.COMMON})
def send_feedback(request: HttpRequest, body: FeedbackIn):
    try:
        feedback = give_feedback(request.auth, access_of(request), **body.dict())
    except FeedbackError as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc
    return Status(201, {"id": feedback.pk, "target": feedback.target,
                        "rating": feedback.rating, "state": feedback.state,
                        "created_at": feedback.created_at})
