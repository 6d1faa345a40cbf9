"""Hybrid search: BM25 and dense retrieval, fused, filtered, grouped by document.

``search()`` is the one entry point for the portal, the API, the answer pipeline and the
evaluation commands. Every result says why it ranked (its BM25 and dense rank and score and
its fused score), and nothing a user may not see ever leaves this module: the filter of
``kms.access`` is part of every query, and ``access`` has no default.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as day_time
from typing import Literal

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from kms import access as access_rules
from kms.access import Access
from kms.store.models import Chunk, Document, Domain
from search.ingestion import spaces
from search.ingestion.embedding import passage_text
from search.retrieval import index_cache, reranking
from search.retrieval.dense import dense_search
from search.retrieval.fusion import ranked, reciprocal_rank_fusion, weighted_fusion
from search.retrieval.snippets import snippet
from search.retrieval.text_analysis import analyze

Mode = Literal["bm25", "dense", "hybrid"]
FusionMethod = Literal["rrf", "weighted"]
MODES = ("bm25", "dense", "hybrid")
FUSION_METHODS = ("rrf", "weighted")


class SearchError(ValueError):
    """A query or option the user must change; the message says how."""


@dataclass(frozen=True)
class SearchFilters:
    document_ids: tuple[int, ...] = ()
    media_types: tuple[str, ...] = ()
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    @classmethod
    def for_days(cls, after: date | None, before: date | None) -> SearchFilters:
        """Whole days in the server's time zone: ``before`` includes its own day."""
        zone = timezone.get_current_timezone()
        return cls(updated_after=datetime.combine(after, day_time.min, zone) if after else None,
                   updated_before=datetime.combine(before, day_time.max, zone) if before else None)


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
    rank: int | None  # 1-based within the retriever's candidates; None: scored, not a candidate
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
    """A document, ranked by fusing document-level BM25 with its best chunk's similarity."""

    document_id: int
    title: str
    source: str
    version_id: int
    media_type: str
    score: float
    bm25: RankInfo | None = None
    dense: RankInfo | None = None
    chunks: list[ChunkHit] = field(default_factory=list)
    rerank: RankInfo | None = None  # the domain's reranker, when one is promoted


@dataclass
class SearchResponse:
    query: str
    mode: Mode
    documents: list[DocumentHit]
    took_ms: float
    message: str = ""
    bm25_index_version: str | None = None
    embedding_space: str | None = None  # whose vectors the dense side compared

    @property
    def chunks(self) -> list[ChunkHit]:
        """Every returned chunk, best first."""
        return sorted((c for d in self.documents for c in d.chunks), key=lambda c: -c.score)


def search(
    query: str,
    *,
    domain: str | Domain,
    access: Access,
    mode: Mode | None = None,
    k: int = 10,
    filters: SearchFilters | None = None,
    fusion: FusionOptions | None = None,
    candidates: int | None = None,
    chunks_per_document: int = 3,
    rerank: bool | reranking.Reranker = True,
) -> SearchResponse:
    """The ``k`` best documents for ``query`` with their best chunks, each explained.

    ``rerank``: True reranks with the domain's promoted reranker (if it has one), False
    serves the fused ranking, a ``Reranker`` uses that one (the gate judges a candidate so).
    """
    started = time.perf_counter()
    query = _check_query(query)
    mode = mode or settings.KMS_SEARCH_MODE
    if mode not in MODES:
        raise SearchError(f"Unknown mode {mode!r}; use one of {MODES}.")
    if k < 1 or k > 1000:
        raise SearchError("k must be between 1 and 1000.")
    fusion = (fusion or FusionOptions.from_settings()).validate()
    domain = resolve_domain(domain, access)
    filters = filters or SearchFilters()
    n = candidates or max(settings.KMS_CANDIDATES, k)
    terms = analyze(query)
    if not terms:
        return SearchResponse(
            query, mode, [], _ms(started),
            "The query has only very common words (like 'the' or 'of'); add a specific term.",
        )
    space = embedder = None
    message = ""
    reranker = (rerank if isinstance(rerank, reranking.Reranker)
                else reranking.served_reranker(domain) if rerank else None)
    if mode in ("dense", "hybrid"):
        try:
            space, embedder, message = spaces.query_space(domain)
        except spaces.SpaceUnavailable as exc:
            if mode == "dense":
                raise SearchError(f"Dense search is unavailable: {exc}") from exc
            message = f"Dense search is unavailable ({exc}); these are keyword matches only."
    with _one_snapshot():
        allowed = filtered_chunks(domain, access, filters)
        bm25_chunks: list[tuple[int, float]] = []
        bm25_documents: list[tuple[int, float]] = []
        dense_chunks: list[tuple[int, float]] = []
        chunk_index = None
        owners: dict[int, int] = {}  # chunk id -> document id, filled as candidates are found
        bm25_problem = ""
        if mode in ("bm25", "hybrid"):
            try:
                chunk_index = index_cache.current_index(domain.slug, "chunks")
                document_index = index_cache.current_index(domain.slug, "documents")
            except index_cache.IndexUnavailable as exc:
                chunk_index = document_index = None
                bm25_problem = str(exc)
            if chunk_index is not None and document_index is not None:
                bm25_chunks = _bm25_candidates(
                    chunk_index, terms, Chunk.objects.filter(allowed), "document_id", n,
                    bool(filters.document_ids), owners,
                )
                bm25_documents = _bm25_candidates(
                    document_index, terms, Document.objects.filter(document_filter(allowed)), "pk",
                    n, bool(filters.document_ids), {},
                )
        if space is not None and embedder is not None:
            vector = embedder.encode([query])[0]
            for pk, document, similarity in dense_search(
                vector, space, allowed, n, settings.KMS_HNSW_EF_SEARCH
            ):
                dense_chunks.append((pk, similarity))
                owners[pk] = document
        dense_documents = best_chunk_per_document(dense_chunks, owners)
        documents = fuse(mode, bm25_documents, dense_documents, fusion)[
            :max(k, reranker.depth if reranker else 0)]
        chunk_ranking = fuse(mode, bm25_chunks, dense_chunks, fusion)
        hits = _assemble(documents, chunk_ranking, owners, bm25_chunks, dense_chunks,
                         bm25_documents, dense_documents, chunk_index, terms, allowed,
                         chunks_per_document)
    if reranker is not None:
        try:
            hits = _reranked(reranker, query, hits)
        except reranking.RerankerUnavailable as exc:
            message = " ".join(filter(None, [message, f"{exc} Results are not reranked; "
                                             "restore the files or roll the reranker back."]))
    hits = hits[:k]
    if bm25_problem:
        message = " ".join(filter(None, [message, f"Keyword search (BM25) is unavailable: "
                                         f"{bm25_problem}. Keyword matches are missing; it "
                                         "recovers by itself once a version loads."]))
    elif mode != "dense" and chunk_index is None:
        message = " ".join(filter(None, [message, "The BM25 index of this domain is not built "
                                         "yet; keyword matches are missing."]))
    version = chunk_index.version if chunk_index is not None else None
    return SearchResponse(query, mode, hits, _ms(started), message, version,
                          space.name if space is not None else None)


def _reranked(reranker: reranking.Reranker, query: str,
              hits: list[DocumentHit]) -> list[DocumentHit]:
    """The top ``depth`` hits in the reranker's order, each with its reranker rank."""
    head, tail = hits[:reranker.depth], hits[reranker.depth:]
    if len(head) < 2:
        return hits
    order = reranking.rerank(reranker, query, [rerank_passage(hit) for hit in head],
                             [hit.score for hit in head])
    for item in order:
        head[item.position].rerank = RankInfo(item.rank, item.rerank_score)
        head[item.position].score = item.score
    return [head[item.position] for item in order] + tail


def rerank_passage(hit: DocumentHit) -> str:
    """What a reranker reads of a document: its best chunk with its title, as embedded."""
    return passage_text(hit.title, hit.chunks[0].heading, hit.chunks[0].text)


@contextlib.contextmanager
def _one_snapshot() -> Iterator[None]:
    """Every read of one search sees one snapshot of the database. Otherwise a chunk set
    switched between two of its queries ("process again", re-embedding) drops the document:
    found by the old chunks, which are gone when their text is read."""
    if connection.in_atomic_block:  # the caller's transaction decides what it sees
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def filtered_chunks(domain: Domain, access: Access, filters: SearchFilters) -> Q:
    """Served chunks the user may see (``kms.access.chunk_filter``), within the filters.

    Only chunk columns and correlated subqueries: a join here would lead the planner away
    from the HNSW index.
    """
    q = access_rules.chunk_filter(access, domain)
    if filters.document_ids:
        q &= Q(document_id__in=filters.document_ids)
    documents = Q()
    if filters.media_types:
        documents &= Q(media_type__in=filters.media_types)
    if filters.updated_after:
        documents &= Q(updated_at__gte=filters.updated_after)
    if filters.updated_before:
        documents &= Q(updated_at__lte=filters.updated_before)
    if documents:
        q &= Exists(Document.objects.filter(documents, pk=OuterRef("document_id")))
    return q


def document_filter(allowed_chunks: Q) -> Q:
    """Documents that have at least one chunk the user may see (same rules, one place)."""
    return Q(Exists(Chunk.objects.filter(allowed_chunks, document_id=OuterRef("pk"))))


def _bm25_candidates(
    index, terms, allowed, owner_field: str, n: int, narrow: bool, owners: dict[int, int]
) -> list[tuple[int, float]]:
    """Top ``n`` allowed ids by BM25: ask the index for more until enough pass the filter.

    The index holds everything of the domain; the database decides what this user may see
    (and drops what was replaced since the index was built). A narrow filter (a few
    documents) is turned into a mask up front instead.
    """
    mask = None
    if narrow:
        mask = np.isin(index.ids, np.fromiter(allowed.values_list("pk", flat=True), np.int64))
    want = n * 2
    while True:
        hits = index.top_k(terms, want, mask=mask)
        permitted = dict(
            allowed.filter(pk__in=[pk for pk, _ in hits]).values_list("pk", owner_field)
        )
        owners.update(permitted)
        kept = [(pk, score) for pk, score in hits if pk in permitted]
        if len(kept) >= n or len(hits) < want:
            return kept[:n]
        want *= 4


def best_chunk_per_document(
    dense_chunks: list[tuple[int, float]], owners: dict[int, int]
) -> list[tuple[int, float]]:
    """Documents ranked by their most similar chunk (the usual max-passage rule)."""
    best: dict[int, float] = {}
    for pk, score in dense_chunks:
        document = owners.get(pk)
        if document is not None and score > best.get(document, -2.0):
            best[document] = score
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))


def fuse(mode, bm25_hits, dense_hits, fusion: FusionOptions) -> list[tuple[int, float]]:
    """One ranking from a mode's retrievers (also used to tune fusion offline)."""
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


def _assemble(
    documents: list[tuple[int, float]], chunk_ranking: list[tuple[int, float]],
    owners: dict[int, int], bm25_chunks,
    dense_chunks, bm25_documents, dense_documents, chunk_index, terms: list[str], allowed: Q,
    per_document: int,
) -> list[DocumentHit]:
    """Ranked documents, each with its best chunks (by fused chunk score), each explained."""
    chunk_bm25 = _ranks(bm25_chunks)
    chunk_dense = _ranks(dense_chunks)
    chunk_score = dict(chunk_ranking)
    wanted = {doc for doc, _ in documents}
    chosen: dict[int, list[int]] = {doc: [] for doc in wanted}
    for pk, _ in chunk_ranking:
        document = owners.get(pk)
        if document in wanted and len(chosen[document]) < per_document:
            chosen[document].append(pk)
    missing = [doc for doc, pks in chosen.items() if not pks]
    if missing and chunk_index is not None:  # found as a whole document, not by a chunk
        for doc, pk, score in _best_bm25_chunks(chunk_index, terms, allowed, missing):
            chosen[doc].append(pk)
            chunk_bm25.setdefault(pk, RankInfo(None, score))
            chunk_score.setdefault(pk, 0.0)
    details = {
        row["pk"]: row
        for row in Chunk.objects.filter(pk__in=[pk for pks in chosen.values() for pk in pks])
        .values("pk", "document_id", "version_id", "ordinal", "text", "page", "page_end",
                "heading", "start_offset", "end_offset", "document__title",
                "document__source", "document__media_type")
    }
    document_bm25 = _ranks(bm25_documents)
    document_dense = _ranks(dense_documents)
    hits = []
    for doc, score in documents:
        pks = [pk for pk in chosen[doc] if pk in details]
        if not pks:  # deleted since it was found
            continue
        first = details[pks[0]]
        hits.append(DocumentHit(
            doc, first["document__title"], first["document__source"], first["version_id"],
            first["document__media_type"], score, document_bm25.get(doc),
            document_dense.get(doc),
            [_chunk_hit(details[pk], chunk_score[pk], chunk_bm25.get(pk), chunk_dense.get(pk),
                        set(terms)) for pk in pks],
        ))
    return hits


def _best_bm25_chunks(index, terms, allowed: Q, documents: list[int]):
    """(document, chunk, score): each document's best chunk by chunk-level BM25."""
    pairs = list(
        Chunk.objects.filter(allowed, document_id__in=documents).values_list("pk", "document_id")
    )
    if not pairs:
        return []
    scores = index.scores(terms)
    positions = np.searchsorted(index.ids, [pk for pk, _ in pairs])
    best: dict[int, tuple[float, int]] = {}
    for (pk, doc), position in zip(pairs, positions, strict=True):
        in_index = position < len(index.ids) and index.ids[position] == pk
        score = float(scores[position]) if in_index else 0.0
        if doc not in best or score > best[doc][0]:
            best[doc] = (score, pk)
    return [(doc, pk, score) for doc, (score, pk) in best.items()]


def _ranks(hits: list[tuple[int, float]]) -> dict[int, RankInfo]:
    return {pk: RankInfo(rank, score) for rank, (pk, score) in enumerate(hits, start=1)}


def _chunk_hit(row, score: float, bm25: RankInfo | None, dense: RankInfo | None, terms):
    return ChunkHit(
        row["pk"], row["document_id"], row["version_id"], row["ordinal"], row["text"],
        snippet(row["text"], terms), row["page"], row["page_end"], row["heading"],
        row["start_offset"], row["end_offset"], score, bm25, dense,
    )


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


def resolve_domain(domain: str | Domain, access: Access) -> Domain:
    """The domain by slug, if the caller may see it; the error names only domains they can."""
    slug = domain.slug if isinstance(domain, Domain) else domain
    visible = access_rules.visible_domains(access)
    found = domain if isinstance(domain, Domain) else visible.filter(slug=slug).first()
    if found is None or not access.sees_domain(found.pk):
        known = ", ".join(visible.values_list("slug", flat=True)) or "none"
        raise SearchError(f"Unknown domain {slug!r}. Domains you can search: {known}.")
    return found


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__ = [
    "ChunkHit", "DocumentHit", "FusionOptions", "SearchError", "SearchFilters",
    "SearchResponse", "filtered_chunks", "resolve_domain", "search",
]
