"""The API's request and response shapes (the OpenAPI schema is generated from them)."""

from __future__ import annotations

from typing import Annotated, Literal

from ninja import Field, Schema
from pydantic import AfterValidator

from search.answering.citations import Citation
from search.retrieval.search import RankInfo


def _printable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Every free-text input: PostgreSQL text cannot hold NUL, so it is refused at the edge.
Text = Annotated[str, AfterValidator(_printable)]


class DomainOut(Schema):
    slug: str
    name: str
    description: str


class Explanation(Schema):
    """Why a result ranked where it did: each retriever's rank and score."""

    bm25: RankInfo | None = None
    dense: RankInfo | None = None
    rerank: RankInfo | None = None


class PassageOut(Schema):
    chunk_id: int
    version_id: int
    snippet: str
    page: int | None
    page_end: int | None
    heading: str
    start_offset: int
    end_offset: int
    score: float
    explain: Explanation | None = None


class ResultOut(Schema):
    document_id: int
    title: str
    version_id: int
    media_type: str
    score: float
    passages: list[PassageOut]
    explain: Explanation | None = None


class SearchOut(Schema):
    query: str
    mode: str
    page: int
    per_page: int
    has_more: bool
    results: list[ResultOut]
    took_ms: float
    message: str


class AskIn(Schema):
    question: Text = Field(..., min_length=1, max_length=2000)
    domain: Text = Field(..., min_length=1, max_length=100)
    verify: Literal["lexical", "embedding", "model"] | None = None
    stream: bool = False  # server-sent events: draft pieces, then the verified answer


class SentenceOut(Schema):
    text: str
    citations: list[int]
    supported: bool | None
    contradicted: list[int]
    shown: bool


class AnswerOut(Schema):
    question: str
    text: str
    abstained: bool
    reason: str
    sources: list[Citation]  # the pipeline's own dataclass: one definition of a citation
    sentences: list[SentenceOut]
    verification: str
    verification_note: str
    backend: str
    timings_ms: dict[str, float]
