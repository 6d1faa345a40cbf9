"""Domains, search and ask: thin endpoints over the services, with the caller's access."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Literal

from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field as NinjaField
from ninja import Query, Router, Schema

from kms.access import visible_domains
from search.answering.answers import Answer, AnswerOptions, Token, stream_answer
from search.answering.generation.base import GeneratorError
from search.api import errors
from search.api.auth import access_of
from search.api.schemas import AnswerOut, AskIn, DomainOut, SearchOut, Text
from search.retrieval.search import DocumentHit, SearchError, search

router = Router()
ERRORS = errors.COMMON


class SearchParams(Schema):
    q: Text = NinjaField(..., min_length=1, max_length=1000, description="The query.")
    domain: Text = NinjaField(..., min_length=1, max_length=100)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    page: int = NinjaField(1, ge=1, le=100)
    per_page: int = NinjaField(10, ge=1, le=50)
    explain: bool = NinjaField(False, description="Each result's BM25, dense and rerank "
                               "ranks and scores.")


@router.get("/domains", response={200: list[DomainOut], **ERRORS}, tags=["domains"])
def domains(request: HttpRequest):
    """The domains you can search and ask."""
    return [DomainOut(slug=d.slug, name=d.name, description=d.description)
            for d in visible_domains(access_of(request)).order_by("slug")]


def _explain(hit) -> dict:
    return {name: getattr(hit, name, None) for name in ("bm25", "dense", "rerank")}


def _result(hit: DocumentHit, explain: bool) -> dict:
    return {
        "document_id": hit.document_id, "title": hit.title, "version_id": hit.version_id,
        "media_type": hit.media_type, "score": round(hit.score, 6),
        "explain": _explain(hit) if explain else None,
        "passages": [{
            "chunk_id": c.chunk_id, "version_id": c.version_id, "snippet": c.snippet,
            "page": c.page, "page_end": c.page_end, "heading": c.heading,
            "start_offset": c.start_offset, "end_offset": c.end_offset,
            "score": round(c.score, 6), "explain": _explain(c) if explain else None,
        } for c in hit.chunks],
    }


@router.get("/search", response={200: SearchOut, **ERRORS}, tags=["search"])
def search_documents(request: HttpRequest, params: Query[SearchParams]):
    """Hybrid (or BM25, or dense) search of one domain; results you may not see never
    appear, and a domain you are not a member of is unknown."""
    wanted = params.page * params.per_page
    response = search(params.q, domain=params.domain, access=access_of(request),
                      mode=params.mode, k=wanted + 1)
    start = (params.page - 1) * params.per_page
    shown = response.documents[start:wanted]
    return {
        "query": response.query, "mode": response.mode, "page": params.page,
        "per_page": params.per_page, "has_more": len(response.documents) > wanted,
        "results": [_result(hit, params.explain) for hit in shown],
        "took_ms": round(response.took_ms, 1), "message": response.message,
    }


def _answer_body(result: Answer) -> dict:
    return {
        "question": result.question, "text": result.text, "abstained": result.abstained,
        "reason": result.reason, "sources": result.sources,
        "sentences": [{"text": c.text, "citations": list(c.citations),
                       "supported": c.supported, "contradicted": list(c.contradicted),
                       "shown": c.kept and not result.abstained} for c in result.claims],
        "verification": result.verification, "verification_note": result.verification_note,
        "backend": result.backend, "timings_ms": result.timings_ms,
    }


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def _sse(first: Token | Answer, events: Iterator[Token | Answer]) -> Iterator[str]:
    """``draft`` events as the generator writes, then one ``answer`` event with the verified
    answer, which replaces the draft; a failure midway is an ``error`` event."""
    try:
        for event in itertools.chain([first], events):
            if isinstance(event, Token):
                yield _event("draft", {"text": event.text})
            else:
                yield _event("answer", AnswerOut(**_answer_body(event)).model_dump(mode="json"))
    except (SearchError, GeneratorError) as exc:
        code = "bad_request" if isinstance(exc, SearchError) else "generator_unavailable"
        yield _event("error", {"error": {"code": code, "message": str(exc)}})


@router.post("/ask", response={200: AnswerOut, 503: errors.ErrorOut, **ERRORS}, tags=["ask"],
             openapi_extra={"responses": {200: {"description": "The verified answer; with "
                                                "stream=true, server-sent events: draft "
                                                "pieces, then the answer.",
                                                "content": {"text/event-stream": {}}}}})
def ask(request: HttpRequest, body: AskIn):
    """A cited answer: every citation has passed the support check. The JSON answer is the
    verified one only, never the generator's draft; ``stream`` sends the draft as it is
    written, then the verified answer that replaces it."""
    events = stream_answer(body.question, domain=body.domain, access=access_of(request),
                           options=AnswerOptions.from_settings(verify=body.verify))
    first = next(events)  # retrieval runs here: a bad question is a 4xx, not a broken stream
    if body.stream:
        response = StreamingHttpResponse(_sse(first, events), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
        return response
    result = first
    for event in events:
        result = event
    return _answer_body(result)
