"""Domains, search and ask: thin endpoints over the services, with the caller's access."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Literal

from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field as NinjaField
from ninja import Query, Router, Schema

from kms.access import visible_domains
from search.answering.answers import Answer, AnswerOptions, Token, stream_answer
from search.answering.conversations import answer_record
from search.answering.generation.base import GeneratorError
from search.api import errors
from search.api.auth import access_of, channel
from search.api.schemas import AnswerOut, AskIn, DomainOut, SearchOut, Text
from search.curation import audit
from search.retrieval.search import DocumentHit, SearchError, SearchFilters, search

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
    updated_after: date | None = NinjaField(None, description="Documents changed on or "
                                            "after this day.")
    updated_before: date | None = NinjaField(None, description="... on or before this day.")

    def filters(self) -> SearchFilters:
        return SearchFilters.for_days(self.updated_after, self.updated_before)


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
                      mode=params.mode, k=wanted + 1, filters=params.filters())
    start = (params.page - 1) * params.per_page
    shown = response.documents[start:wanted]
    audit.record(request.auth, "search", channel(request), domain=params.domain,
                 query=params.q, shown=audit.hits_shown(shown))
    return {
        "query": response.query, "mode": response.mode, "page": params.page,
        "per_page": params.per_page, "has_more": len(response.documents) > wanted,
        "results": [_result(hit, params.explain) for hit in shown],
        "took_ms": round(response.took_ms, 1), "message": response.message,
    }


def sse_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def sse_events(events: Iterator, final: Callable[[object], tuple[str, dict]]) -> Iterator[str]:
    """``draft`` events as the generator writes, then what ``final`` makes of the last
    event (the verified answer, which replaces the draft); a failure midway is an
    ``error`` event in the one error format."""
    try:
        for event in events:
            if isinstance(event, Token):
                yield sse_event("draft", {"text": event.text})
            else:
                yield sse_event(*final(event))
    except (SearchError, GeneratorError) as exc:
        code = "bad_request" if isinstance(exc, SearchError) else "generator_unavailable"
        yield sse_event("error", {"error": {"code": code, "message": str(exc)}})


def sse_response(stream: Iterator[str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
    return response


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
        def final(result: Answer) -> tuple[str, dict]:
            record_answer(request, body.domain, result)
            return "answer", AnswerOut(**answer_record(result)).model_dump(mode="json")
        return sse_response(sse_events(itertools.chain([first], events), final))
    result = first
    for event in events:
        result = event
    record_answer(request, body.domain, result)
    return answer_record(result)


def record_answer(request: HttpRequest, domain: str, result: Answer) -> None:
    audit.record(request.auth, "ask", channel(request), domain=domain,
                 query=result.question, shown=audit.hits_shown(result.sources))
