"""Feedback on an answer, one of its citations, or a search result; its review; and
promoting it to a curated question/answer pair (the domain's gold set).

Feedback may only point at what the user could see: their own conversation's turn, a
citation that answer showed, a document or passage within their access.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from kms.access import Access, visible_chunks, visible_documents
from kms.store.models import CuratedPair, Feedback, Turn


class FeedbackError(ValueError):
    """Feedback that points at nothing the user may see, or lacks what its target needs."""


def give_feedback(user, access: Access, *, target: str, rating: str, comment: str = "",
                  turn_id: int | None = None, citation: int | None = None,
                  query: str = "", document_id: int | None = None,
                  chunk_id: int | None = None) -> Feedback:
    if target not in Feedback.Target.values:
        raise FeedbackError(f"target must be one of {', '.join(Feedback.Target.values)}.")
    if rating not in Feedback.Rating.values:
        raise FeedbackError(f"rating must be one of {', '.join(Feedback.Rating.values)}.")
    fields: dict = {"user": user, "target": target, "rating": rating,
                    "comment": comment.strip()[:4000]}
    if target in (Feedback.Target.ANSWER, Feedback.Target.CITATION):
        fields |= _on_turn(user, access, turn_id, citation if target == "citation" else None,
                           target)
    else:
        fields |= _on_result(access, query, document_id, chunk_id)
    return Feedback.objects.create(**fields)


def _on_turn(user, access: Access, turn_id: int | None, citation: int | None,
             target: str) -> dict:
    turn = Turn.objects.select_related("conversation__domain").filter(
        pk=turn_id, conversation__user=user).first() if turn_id else None
    if turn is None:
        raise FeedbackError("Feedback on an answer needs turn_id, the id of a turn of one "
                            "of your conversations.")
    fields = {"turn": turn, "domain": turn.conversation.domain,
              "query": turn.standalone_question, "answer_text": turn.answer.get("text", "")}
    if target == Feedback.Target.CITATION:
        source = next((s for s in turn.answer.get("sources", [])
                       if s.get("number") == citation), None)
        if source is None:
            raise FeedbackError(f"That answer has no citation [{citation}].")
        document = visible_documents(access).filter(pk=source["document_id"]).first()
        if document is None:
            raise FeedbackError(f"Citation [{citation}] is of a document you can no "
                                "longer see.")
        fields |= {"citation": citation, "document": document,
                   "version_id": source["version_id"],
                   "chunk": visible_chunks(access).filter(pk=source["chunk_id"]).first()}
    return fields


def _on_result(access: Access, query: str, document_id: int | None,
               chunk_id: int | None) -> dict:
    if not query.strip():
        raise FeedbackError("Feedback on a search result needs the query it was found by.")
    document = visible_documents(access).select_related("domain").filter(
        pk=document_id).first() if document_id else None
    if document is None:
        raise FeedbackError("Feedback on a search result needs document_id, a document you "
                            "can see.")
    chunk = None
    if chunk_id is not None:
        chunk = visible_chunks(access).filter(pk=chunk_id, document=document).first()
        if chunk is None:
            raise FeedbackError(f"Document {document.pk} has no passage {chunk_id} you "
                                "can see.")
    return {"domain": document.domain, "query": query.strip()[:2000], "document": document,
            "version_id": document.current_version_id, "chunk": chunk}


def review(feedback: Iterable[Feedback], reviewer, state: str) -> int:
    ids = [f.pk for f in feedback]
    return Feedback.objects.filter(pk__in=ids).update(
        state=state, reviewed_by=reviewer, reviewed_at=timezone.now())


@transaction.atomic
def promote(feedback: Feedback, curator, *, question: str = "",
            answer: str = "") -> CuratedPair:
    """A curated pair from feedback: its question and the answer shown (or the curator's
    corrections), with the documents it cited or was about."""
    question = (question or feedback.query).strip()
    answer = (answer or feedback.answer_text).strip()
    if not question or not answer:
        raise FeedbackError(f"Feedback {feedback.pk} has no answer to promote; write the "
                            "answer in a curated pair instead.")
    pair = CuratedPair.objects.create(domain=feedback.domain, question=question,
                                      answer=answer, origin=CuratedPair.Origin.FEEDBACK,
                                      feedback=feedback, created_by=curator)
    documents = {feedback.document_id} if feedback.document_id else set()
    if feedback.turn_id and feedback.target == Feedback.Target.ANSWER:
        documents |= {s["document_id"] for s in feedback.turn.answer.get("sources", [])}
    pair.documents.set(list(documents))
    review([feedback], curator, Feedback.State.PROMOTED)
    return pair
