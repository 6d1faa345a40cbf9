"""Hybrid search: BM25 and dense retrieval, fused, filtered, grouped by document.

``search()`` is the one entry point for the portal, the API, the answer pipeline and the
evaluation commands. Every result says why it ranked (its BM25 and dense rank and score and
its fused score), and nothing a user may not see ever leaves this module: the access filter
is part of every query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q

from kms.store.models import Chunk, Document, Domain
from search import bm25_store
from search.dense import dense_search
from search.embedding import get_embedder
from search.fusion import ranked, reciprocal_rank_fusion, weighted_fusion
from search.highlight import snippet
from search.text_analysis import analyze

Mode = Literal["bm25", "dense", "hybrid"]
FusionMethod = Literal["rrf", "weighted"]
MODES = ("bm25", "dense", "hybrid")
FUSION_METHODS = ("rrf", "weighted")


class SearchError(ValueError):
    """A query or option the user must change; the message says how."""


@dataclass(frozen=True)
class Access:
    """Whose search this is: ``group_ids`` None means unrestricted (staff admins, evaluation).

    A document with no access groups is visible to every user of its domain; one with groups
    only to members of at least one of them.
    """

    group_ids: frozenset[int] | None = None

    @classmethod
    def for_user(cls, user) -> Access:
        if user is not None and getattr(user, "is_superuser", False):
            return cls(None)
        ids = user.groups.values_list("pk", flat=True) if user is not None else []
        return cls(frozenset(ids))


UNRESTRICTED = Access(None)


@dataclass(frozen=True)
class SearchFilters:
    document_ids: tuple[int, ...] = ()
    media_types: tuple[str, ...] = ()
    updated_after: datetime | None = None
    updated_before: datetime | None = None


@dataclass(frozen=True)
class FusionOptions:
    method: FusionMethod = "weighted"
    rrf_k: int = 60
    bm25_weight: float = 0.5  # weighted: bm25_weight x bm25 + (1 - bm25_weight) x dense

    @classmethod
    def from_settings(cls) -> FusionOptions:
        return cls(settings.KMS_FUSION, settings.KMS_RRF_K, settings.KMS_FUSION_BM25_WEIGHT)

    def validate(self) -> FusionOptions:
        if self.method not in FUSION_METHODS:
            raise SearchError(f"Unknown fusion {self.method!r}; use one of {FUSION_METHODS}.")
        if self.rrf_k < 0:
            raise SearchError("rrf_k must be 0 or more.")
        if not 0.0 <= self.bm25_weight <= 1.0:
            raise SearchError("bm25_weight must be between 0 and 1.")
        return self


@dataclass(frozen=True)
class RankInfo:
    rank: int  # 1-based, within the retriever's candidates
    score: float


@dataclass
class ChunkHit:
    chunk_id: int
    document_id: int
    version_id: int
    ordinal: int
    text: str
    snippet: str
    page: int | None
    page_end: int | None
    heading: str
    start_offset: int
    end_offset: int
    score: float
    bm25: RankInfo | None = None
    dense: RankInfo | None = None


@dataclass
class DocumentHit:
    document_id: int
    title: str
    source: str
    version_id: int
    media_type: str
    score: float
    chunks: list[ChunkHit] = field(default_factory=list)


@dataclass
class SearchResponse:
    query: str
    mode: Mode
    documents: list[DocumentHit]
    took_ms: float
    message: str = ""
    bm25_index_version: str | None = None

    @property
    def chunks(self) -> list[ChunkHit]:
        """Every returned chunk, best first."""
        return sorted((c for d in self.documents for c in d.chunks), key=lambda c: -c.score)


def search(
    query: str,
    *,
    domain: str | Domain,
    access: Access = UNRESTRICTED,
    mode: Mode | None = None,
    k: int = 10,
    filters: SearchFilters | None = None,
    fusion: FusionOptions | None = None,
    candidates: int | None = None,
    chunks_per_document: int = 3,
) -> SearchResponse:
    """The ``k`` best documents for ``query`` with their best chunks, each explained."""
    started = time.perf_counter()
    query = _check_query(query)
    mode = mode or settings.KMS_SEARCH_MODE
    if mode not in MODES:
        raise SearchError(f"Unknown mode {mode!r}; use one of {MODES}.")
    if k < 1 or k > 1000:
        raise SearchError("k must be between 1 and 1000.")
    fusion = (fusion or FusionOptions.from_settings()).validate()
    domain = _domain(domain)
    filters = filters or SearchFilters()
    n = candidates or max(settings.KMS_CANDIDATES, k)
    terms = analyze(query)
    if not terms:
        return SearchResponse(
            query, mode, [], _ms(started),
            "The query has only very common words (like 'the' or 'of'); add a specific term.",
        )
    allowed = chunk_filter(domain, access, filters)
    bm25_hits: list[tuple[int, float]] = []
    dense_hits: list[tuple[int, float]] = []
    index_version = None
    if mode in ("bm25", "hybrid"):
        index = bm25_store.current_index(domain.slug)
        if index is not None:
            index_version = index.version
            bm25_hits = _bm25_candidates(index, terms, allowed, filters, n)
    if mode in ("dense", "hybrid"):
        vector = get_embedder().encode([query])[0]
        dense_hits = dense_search(vector, allowed, n, settings.KMS_HNSW_EF_SEARCH)
    fused = _fuse(mode, bm25_hits, dense_hits, fusion)
    documents = _group(fused, bm25_hits, dense_hits, set(terms), k, chunks_per_document)
    message = ""
    if mode != "dense" and index_version is None:
        message = "The BM25 index of this domain is not built yet; keyword matches are missing."
    return SearchResponse(query, mode, documents, _ms(started), message, index_version)


def chunk_filter(domain: Domain, access: Access, filters: SearchFilters) -> Q:
    """Chunks the user may see, of each document's served version, within the filters."""
    q = Q(document__domain=domain, version_id=F("document__current_version_id"))
    if access.group_ids is not None:
        through = Document.access_groups.through
        restricted = through.objects.filter(document_id=OuterRef("document_id"))
        q &= ~Exists(restricted) | Exists(restricted.filter(group_id__in=access.group_ids))
    if filters.document_ids:
        q &= Q(document_id__in=filters.document_ids)
    if filters.media_types:
        q &= Q(document__media_type__in=filters.media_types)
    if filters.updated_after:
        q &= Q(document__updated_at__gte=filters.updated_after)
    if filters.updated_before:
        q &= Q(document__updated_at__lte=filters.updated_before)
    return q


def _bm25_candidates(index, terms, allowed: Q, filters: SearchFilters, n: int):
    """Top ``n`` allowed chunks by BM25: ask the index for more until enough pass the filter.

    The index holds every chunk of the domain; the database decides what this user may see
    (and drops chunks of versions replaced since the index was built).
    """
    mask = None
    if filters.document_ids:  # narrow: ask the database which chunks, mask the index
        ids = Chunk.objects.filter(allowed).values_list("pk", flat=True)
        mask = np.isin(index.ids, np.fromiter(ids, dtype=np.int64))
    want = n * 2
    while True:
        hits = index.top_k(terms, want, mask=mask)
        permitted = set(
            Chunk.objects.filter(allowed, pk__in=[pk for pk, _ in hits]).values_list(
                "pk", flat=True
            )
        )
        kept = [(pk, score) for pk, score in hits if pk in permitted]
        if len(kept) >= n or len(hits) < want:
            return kept[:n]
        want *= 4


def _fuse(mode, bm25_hits, dense_hits, fusion: FusionOptions) -> list[tuple[int, float]]:
    if mode == "bm25":
        return bm25_hits
    if mode == "dense":
        return dense_hits
    if fusion.method == "rrf":
        return ranked(reciprocal_rank_fusion(
            {"bm25": [pk for pk, _ in bm25_hits], "dense": [pk for pk, _ in dense_hits]},
            k=fusion.rrf_k,
        ))
    return ranked(weighted_fusion(
        {"bm25": dict(bm25_hits), "dense": dict(dense_hits)},
        {"bm25": fusion.bm25_weight, "dense": 1.0 - fusion.bm25_weight},
    ))


def _group(
    fused: list[tuple[int, float]], bm25_hits, dense_hits, terms: set[str], k: int,
    per_document: int,
) -> list[DocumentHit]:
    """Documents ranked by their best chunk; up to ``per_document`` chunks each."""
    bm25_rank = {pk: RankInfo(i, s) for i, (pk, s) in enumerate(bm25_hits, start=1)}
    dense_rank = {pk: RankInfo(i, s) for i, (pk, s) in enumerate(dense_hits, start=1)}
    rows = {
        row["pk"]: row
        for row in Chunk.objects.filter(pk__in=[pk for pk, _ in fused]).values(
            "pk", "document_id", "version_id", "ordinal", "text", "page", "page_end", "heading",
            "start_offset", "end_offset", "document__title", "document__source",
            "document__media_type",
        )
    }
    documents: dict[int, DocumentHit] = {}
    for pk, score in fused:
        row = rows.get(pk)
        if row is None:  # deleted since it was found
            continue
        document = documents.get(row["document_id"])
        if document is None:
            if len(documents) >= k:
                continue
            document = documents[row["document_id"]] = DocumentHit(
                row["document_id"], row["document__title"], row["document__source"],
                row["version_id"], row["document__media_type"], score,
            )
        if len(document.chunks) < per_document:
            document.chunks.append(ChunkHit(
                pk, row["document_id"], row["version_id"], row["ordinal"], row["text"],
                snippet(row["text"], terms), row["page"], row["page_end"], row["heading"],
                row["start_offset"], row["end_offset"], score, bm25_rank.get(pk),
                dense_rank.get(pk),
            ))
    return list(documents.values())


def _check_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise SearchError("Enter a question or some words to search for.")
    limit = settings.KMS_MAX_QUERY_CHARS
    if len(query) > limit:
        raise SearchError(
            f"The query has {len(query):,} characters; the limit is {limit:,}. "
            "Shorten it to the question itself."
        )
    return query


def _domain(domain: str | Domain) -> Domain:
    if isinstance(domain, Domain):
        return domain
    found = Domain.objects.filter(slug=domain).first()
    if found is None:
        known = ", ".join(Domain.objects.values_list("slug", flat=True))
        raise SearchError(f"Unknown domain {domain!r}. Known domains: {known}.")
    return found


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__ = [
    "Access", "ChunkHit", "DocumentHit", "FusionOptions", "SearchError", "SearchFilters",
    "SearchResponse", "UNRESTRICTED", "chunk_filter", "search",
]
