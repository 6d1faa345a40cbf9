"""The ask pages: conversations, each a thread whose answers stream in (the page's script
reads the API's server-sent events) and are then shown as verified, with every ``[n]`` a
link to the cited passage. Without script, the form posts and the page shows the answer."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

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
from search.answering.generation.base import GeneratorError
from search.curation import audit
from search.portal.common import access_of, refuse_nul, staff_domains
from search.retrieval.search import SearchError


class QuestionForm(forms.Form):
    question = forms.CharField(label="Your question", max_length=2000, strip=True,
                               widget=forms.Textarea(attrs={"rows": 2}),
                               validators=[refuse_nul])


def _mine(request: HttpRequest, conversation_id: int):
    try:
        return conversation_of(request.user, conversation_id)
    except ConversationNotFound as exc:
        raise Http404(str(exc)) from exc


@login_required
@require_http_methods(["GET", "POST"])
def conversations(request: HttpRequest) -> HttpResponse:
    """Your conversations, and a new one (POST: domain)."""
    domains = staff_domains(request)
    if request.method == "POST":
        try:
            conversation = start_conversation(request.user, request.POST.get("domain", ""),
                                              access_of(request))
        except SearchError as exc:
            messages.error(request, str(exc))
            return redirect("portal:ask")
        return redirect("portal:conversation", conversation.pk)
    return render(request, "portal/conversations.html", {
        "conversations": user_conversations(request.user)[:50], "domains": domains,
        "nav": "ask"})


def turn_context(turn, visible: set[int]) -> dict:
    """A turn as the templates show it: sentences with their citation links."""
    answer = visible_answer(turn, visible)
    sources = {s["number"]: s for s in answer.get("sources", [])}
    sentences = [{**s, "links": [sources[n] for n in s["citations"] if n in sources]}
                 for s in answer.get("sentences", [])]
    return {"turn": turn, "answer": answer, "sentences": sentences,
            "sources": list(sources.values())}


@login_required
@require_http_methods(["GET", "POST"])
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """A conversation; POST asks (the page's script streams instead, through the API)."""
    thread = _mine(request, conversation_id)
    form = QuestionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            *_, turn = ask_in_conversation(thread, form.cleaned_data["question"],
                                           access_of(request), AnswerOptions.from_settings())
        except (SearchError, GeneratorError) as exc:
            messages.error(request, str(exc))
        else:
            audit.record_turn(request.user, "portal", turn)
            return redirect("portal:conversation", thread.pk)
    turns = list(thread.turns.order_by("number"))
    visible = visible_cited(access_of(request), turns)
    return render(request, "portal/conversation.html", {
        "conversation": thread, "turns": [turn_context(t, visible) for t in turns],
        "form": QuestionForm() if request.method == "GET" or form.is_valid() else form,
        "nav": "ask"})


@login_required
def turn_fragment(request: HttpRequest, conversation_id: int, turn_id: int) -> HttpResponse:
    """One turn's HTML, for the script to put in place of the streamed draft."""
    thread = _mine(request, conversation_id)
    turn = get_object_or_404(thread.turns, pk=turn_id)
    return render(request, "portal/_turn.html",
                  turn_context(turn, visible_cited(access_of(request), [turn])))
