"""Feedback forms of the search and ask pages (the script sends them without a reload)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from search.curation.feedback import FeedbackError, give_feedback
from search.portal.common import access_of


def _number(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@login_required
@require_POST
def send(request: HttpRequest) -> HttpResponse:
    post = request.POST
    try:
        give_feedback(request.user, access_of(request), target=post.get("target", ""),
                      rating=post.get("rating", ""), comment=post.get("comment", "")[:4000],
                      turn_id=_number(post.get("turn_id")),
                      citation=_number(post.get("citation")),
                      query=post.get("query", "").replace("\x00", ""),
                      document_id=_number(post.get("document_id")),
                      chunk_id=_number(post.get("chunk_id")))
    except FeedbackError as exc:
        if request.headers.get("Accept") == "application/json":
            return JsonResponse({"error": {"code": "bad_request", "message": str(exc)}},
                                status=400)
        messages.error(request, str(exc))
    else:
        if request.headers.get("Accept") == "application/json":
            return JsonResponse({"ok": True}, status=201)
        messages.success(request, "Thank you: your feedback goes to the curators.")
    back = post.get("next", "")
    if not url_has_allowed_host_and_scheme(back, {request.get_host()}):
        back = "portal:search"
    return redirect(back)
