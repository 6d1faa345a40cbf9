"""Conversations: follow-up questions, each rewritten from the thread into one that stands
alone before retrieval, and the turns that keep what was asked and answered.

The rewrite is deterministic and instant rather than another generator call: a follow-up
that names its subject (enough content words, no pronoun pointing back) is kept as it is;
one that does not ("Or installment easier?", "What about children?") is joined to the
subject of the previous standalone question. The rewrite is returned and shown, so the user
sees what was searched and can ask again in their own words.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import asdict

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from kms.access import Access, visible_documents
from kms.store.models import Conversation, Domain, Turn
from search.answering.answers import Answer, AnswerOptions, Token, stream_answer
from search.retrieval.search import resolve_domain


class ConversationNotFound(LookupError):
    """No conversation of this user with that id (another user's is not theirs to see)."""


# Words that point back at an earlier question's subject.
_BACK_REFERENCES = frozenset(("it", "its", "it's", "they", "them", "their", "theirs", "this",
                              "that", "these", "those", "he", "him", "his", "she", "her",
                              "one", "ones", "such", "same", "former", "latter"))
_CONTINUATIONS = ("and ", "or ", "what about", "how about", "but ", "also", "then ",
                  "so ", "same ", "instead")
# scikit-learn's English stop words, with the comparisons a follow-up is made of
_FUNCTION_WORDS = ENGLISH_STOP_WORDS | {"better", "worse", "easier", "harder", "instead"}
_QUESTION_OPENING = re.compile(
    r"^(?:(?:what|which|who|how|why|when|where)(?:\s+(?:is|are|was|were|do|does|did|can|"
    r"should|would|will|much|many))?|is|are|was|were|do|does|did|can|could|should|would|"
    r"will|may|must)\s+", re.IGNORECASE)
_WORD = re.compile(r"[\w'-]+")


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS]


def needs_context(question: str) -> bool:
    """Whether the follow-up leans on what was asked before: it opens as a continuation,
    is too short to name a subject, or points back with a pronoun and names little else
    ("Is it safe for children?", not "How long do staff rub their hands with alcohol?")."""
    lowered = question.strip().lower()
    named = len(content_words(question))
    points_back = any(w in _BACK_REFERENCES for w in _WORD.findall(lowered))
    return lowered.startswith(_CONTINUATIONS) or named < 3 or (points_back and named < 5)


def subject_of(question: str) -> str:
    """The question without its interrogative opening or final mark: what it is about."""
    return _QUESTION_OPENING.sub("", question.strip()).rstrip(" ?.!")


def standalone_question(previous: list[str], question: str) -> str:
    """``question`` as one that stands alone, given the earlier standalone questions
    (oldest first): itself when it names its subject, else joined to the latest subject."""
    question = question.strip()
    if not previous or not needs_context(question):
        return question
    subject = subject_of(previous[-1])
    if not subject or set(content_words(subject)) <= set(content_words(question)):
        return question
    return f"{question.rstrip(' ?.!')} (regarding: {subject})?"


def start_conversation(user, domain: str | Domain, access: Access, title: str = "") -> Conversation:
    """A new thread in a domain the user may see (an unknown one is a SearchError)."""
    target = resolve_domain(domain, access)
    return Conversation.objects.create(user=user, domain=target,
                                       title=(title.strip() or "New conversation")[:200])


def conversation_of(user, conversation_id: int) -> Conversation:
    """The user's own conversation; anyone else's is not found."""
    found = Conversation.objects.select_related("domain").filter(
        pk=conversation_id, user=user).first()
    if found is None:
        raise ConversationNotFound(f"No conversation {conversation_id} of yours.")
    return found


def user_conversations(user):
    return Conversation.objects.filter(user=user).select_related("domain")


def visible_answer(turn: Turn, visible_ids: set[int]) -> dict:
    """A stored answer as the user may see it now: one that cited a document they can no
    longer see is withheld, not shown with its passages."""
    answer = turn.answer
    if all(s["document_id"] in visible_ids for s in answer.get("sources", [])):
        return answer
    return {**answer, "text": "This answer cited documents you can no longer see.",
            "sources": [], "sentences": [], "abstained": True,
            "reason": "Its sources are no longer visible to you."}


def visible_cited(access: Access, turns: list[Turn]) -> set[int]:
    """Which of the documents these turns cited the caller may see now."""
    cited = {s["document_id"] for t in turns for s in t.answer.get("sources", [])}
    return set(visible_documents(access).filter(pk__in=cited).values_list("pk", flat=True))


def answer_record(result: Answer) -> dict:
    """The verified answer as the API returns it and a turn keeps it (never the draft)."""
    return {
        "question": result.question, "text": result.text, "abstained": result.abstained,
        "reason": result.reason, "sources": [asdict(s) for s in result.sources],
        "sentences": [{"text": c.text, "citations": list(c.citations),
                       "supported": c.supported, "contradicted": list(c.contradicted),
                       "shown": c.kept and not result.abstained} for c in result.claims],
        "verification": result.verification, "verification_note": result.verification_note,
        "backend": result.backend, "timings_ms": result.timings_ms,
    }


def ask_in_conversation(conversation: Conversation, question: str, access: Access,
                        options: AnswerOptions | None = None) -> Iterator[Token | str | Turn]:
    """First the standalone question (a ``str``), then the draft's :class:`Token` pieces,
    then the saved :class:`Turn` with the verified answer.

    Retrieval runs before the first token, so a question to fix raises before anything is
    stored; a turn is saved only with its answer.
    """
    earlier = list(conversation.turns.order_by("-number").values_list(
        "standalone_question", flat=True)[:settings.KMS_CONVERSATION_CONTEXT_TURNS])[::-1]
    standalone = standalone_question(earlier, question)
    events = stream_answer(standalone, domain=conversation.domain, access=access,
                           options=options or AnswerOptions.from_settings())
    first = next(events)
    yield standalone
    result = first
    for event in itertools.chain([first], events):
        if isinstance(event, Token):
            yield event
        else:
            result = event
    assert isinstance(result, Answer)
    yield _save_turn(conversation, question.strip(), standalone, result)


@transaction.atomic
def _save_turn(conversation: Conversation, question: str, standalone: str,
               result: Answer) -> Turn:
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
    number = (locked.turns.aggregate(n=Max("number"))["n"] or 0) + 1
    if number == 1 and locked.title == "New conversation":
        locked.title = question[:200]
    locked.save(update_fields=["title", "updated_at"])
    return Turn.objects.create(conversation=locked, number=number, question=question,
                               standalone_question=standalone,
                               answer=answer_record(result), abstained=result.abstained)
