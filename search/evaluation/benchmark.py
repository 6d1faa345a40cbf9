"""Search latency and BM25 speed on a large real corpus (``manage.py bench_search``).

A benchmark domain is grown to a target number of searchable chunks by replicating the chunks
of a real domain (e.g. SciFact in ``healthcare``): each replica is a new document and version
whose chunks keep the original texts and get the original embedding plus a little Gaussian
noise, so the HNSW graph and the BM25 postings look like a real corpus of that size instead of
exact duplicates. Versions copy the original extracted text too, because the document-level
BM25 index is built from it. Queries then go through the same ``search()`` the portal uses,
timed wall-clock including the query embedding, and the BM25 serving path is compared with
rank-bm25 on the very token lists the published chunk index was built from.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from tqdm import tqdm

from kms.access import Access
from kms.store.models import (
    Chunk,
    ChunkSet,
    Document,
    DocumentVersion,
    Domain,
    EmbeddingSpace,
    Status,
)
from search.evaluation import domains, index_memory, stats
from search.evaluation.bm25_comparison import RankBM25Comparison, compare_rank_bm25
from search.evaluation.index_memory import IndexMemory
from search.ingestion import spaces
from search.ingestion.sentences import split_sentences
from search.retrieval import index_cache
from search.retrieval import index_store as bm25_store
from search.retrieval.bm25 import BM25Index
from search.retrieval.search import MODES, FusionOptions, search
from search.retrieval.text_analysis import analyze

DEFAULT_QUERIES_FILE = Path(settings.BASE_DIR).parent / "shared/data/scifact/queries.jsonl"
SOURCE_PREFIX = "bench:"
# Replica words put in front of a copied title, so replicas are distinct BM25 documents.
REPLICA_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip

Echo = Callable[[str], None]
BENCHMARK = Access.everything("search benchmark")


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Growth:
    domain: str
    chunks: int
    documents: int
    added_chunks: int
    added_documents: int
    source_chunks: int
    seconds: float  # inserting the replicas (the HNSW index updates on every insert)
    reused: bool
    dropped_chunks: int = 0
    drop_seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.added_chunks / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Latency:
    mode: str
    queries: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    empty: int  # queries that returned no document


@dataclass(frozen=True)
class VectorIndex:
    """The HNSW index of the benchmark's embedding space (shared with the source domain)."""

    space: str
    vectors: int  # rows of the space, every domain's
    index_bytes: int
    vector_bytes: int  # the vectors' table and TOAST share, estimated as rows x row width
    build_s: float | None  # None unless --build-hnsw rebuilt it in this run
    maintenance_work_mem: str


@dataclass
class BenchReport:
    growth: Growth
    settle_s: float
    bm25_build_s: float
    index: dict[str, int | str]
    latency: dict[str, Latency]
    rank_bm25: RankBM25Comparison | None
    vector_index: VectorIndex | None = None
    bm25_memory: IndexMemory | None = None
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self) | {"chunks_per_second": self.growth.chunks_per_second}
        if self.bm25_memory is not None:
            data["bm25_memory"] |= {
                "total_mb": self.bm25_memory.total_mb,
                "per_million_chunks_mb": self.bm25_memory.per_million_chunks_mb(),
            }
        return data


@dataclass
class _SourceDocument:
    pk: int
    title: str
    media_type: str
    content_hash: str
    extracted_text: str
    page_count: int | None
    chunks: list[dict]
    vectors: np.ndarray  # one unit-length row per chunk


# --- growing the benchmark domain -----------------------------------------------------------


def replica_word(replica: int) -> str:
    """``alpha`` for replica 1, ..., ``zulu`` for 26, ``alpha2`` for 27: one short token."""
    word = REPLICA_WORDS[(replica - 1) % len(REPLICA_WORDS)]
    cycle = (replica - 1) // len(REPLICA_WORDS)
    return f"{word}{cycle + 1}" if cycle else word


def searchable_count(domain: Domain) -> int:
    return bm25_store.searchable_chunks(domain).count()


def grow_domain(
    size: int,
    *,
    domain: str = "bench",
    source_domain: str = "healthcare",
    drop: bool = False,
    batch_chunks: int = 2000,
    noise: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> Growth:
    """Make ``domain`` hold at least ``size`` searchable chunks, copying ``source_domain``'s.

    Idempotent: a domain that is already large enough is reused as it is, a smaller one is
    topped up with replicas it does not have yet (sources ``bench:<replica>:<document id>``).
    Each batch is one transaction, so an interrupted run leaves only complete documents.
    """
    if size < 1:
        raise BenchmarkError("--size must be at least 1.")
    if domain == source_domain:
        raise BenchmarkError("The benchmark domain must differ from the source domain.")
    target = domains.owned_domain(domain, domain.title(), "Synthetic corpus of bench_search.")
    started = time.perf_counter()
    dropped = domains.empty(target) if drop else 0
    drop_seconds = time.perf_counter() - started
    started = time.perf_counter()
    existing = searchable_count(target)
    if existing >= size:
        return Growth(
            domain, existing, Document.objects.filter(domain=target).count(), 0, 0, 0,
            time.perf_counter() - started, True, dropped, drop_seconds,
        )
    source = Domain.objects.filter(slug=source_domain).first()
    if source is None:
        raise BenchmarkError(f"Unknown source domain {source_domain!r}.")
    space = spaces.served_space(source)
    Domain.objects.filter(pk=target.pk).update(embedding_space=space, next_space=None)
    documents = _load_source(source, space)
    if not documents:
        raise BenchmarkError(f"The source domain {source_domain!r} has no embedded chunks.")
    taken = set(Document.objects.filter(domain=target).values_list("source", flat=True))
    rng = np.random.default_rng([seed, existing])
    need = size - existing
    added_chunks = added_documents = 0
    batch: list[tuple[int, _SourceDocument, int]] = []
    batch_size = 0
    with tqdm(total=need, desc=f"Growing {domain}", unit="chunk", disable=not progress,
              dynamic_ncols=True, mininterval=1) as bar:
        for replica, document in _plan(documents, taken):
            take = min(len(document.chunks), need - added_chunks - batch_size)
            batch.append((replica, document, take))
            batch_size += take
            if batch_size >= batch_chunks or added_chunks + batch_size >= need:
                _insert(target, space, batch, rng, noise)
                added_chunks += batch_size
                added_documents += len(batch)
                bar.update(batch_size)
                batch, batch_size = [], 0
            if added_chunks >= need:
                break
    return Growth(
        domain, searchable_count(target), Document.objects.filter(domain=target).count(),
        added_chunks, added_documents, sum(len(d.chunks) for d in documents),
        time.perf_counter() - started, False, dropped, drop_seconds,
    )


def _plan(
    documents: Sequence[_SourceDocument], taken: set[str]
) -> Iterator[tuple[int, _SourceDocument]]:
    """Replica 1 of every source document, then replica 2, ...: skipping copies that exist."""
    for replica in count(1):
        for document in documents:
            if _replica_source(replica, document) not in taken:
                yield replica, document


def _replica_source(replica: int, document: _SourceDocument) -> str:
    return f"{SOURCE_PREFIX}{replica}:{document.pk}"


def _load_source(source: Domain, space: EmbeddingSpace) -> list[_SourceDocument]:
    """The served chunks of ``source`` with a vector in ``space``, grouped by document, in
    a stable order."""
    rows = (
        bm25_store.searchable_chunks(source)
        .filter(vectors__space=space)
        .order_by("document_id", "ordinal")
        .values(
            "document_id", "version_id", "document__title", "document__media_type",
            "document__content_hash", "ordinal", "text", "start_offset", "end_offset", "page",
            "page_end", "heading", "token_count", embedding=F("vectors__embedding"),
        )
        .iterator(chunk_size=2000)
    )
    documents: list[_SourceDocument] = []
    versions: list[int] = []
    vectors: list[np.ndarray] = []
    for row in rows:
        if not documents or documents[-1].pk != row["document_id"]:
            _close(documents, vectors)
            documents.append(_SourceDocument(
                row["document_id"], row["document__title"], row["document__media_type"],
                row["document__content_hash"], "", None, [], np.empty(0),
            ))
            versions.append(row["version_id"])
            vectors = []
        vectors.append(np.asarray(row.pop("embedding"), dtype=np.float32))
        documents[-1].chunks.append(row)
    _close(documents, vectors)
    texts = {
        pk: (text, pages)
        for pk, text, pages in DocumentVersion.objects.filter(pk__in=versions).values_list(
            "pk", "extracted_text", "page_count"
        )
    }
    for document, version in zip(documents, versions, strict=True):
        document.extracted_text, document.page_count = texts[version]
    return documents


def _close(documents: list[_SourceDocument], vectors: list[np.ndarray]) -> None:
    if documents and vectors:
        documents[-1].vectors = np.vstack(vectors)


def _insert(
    target: Domain, space: EmbeddingSpace, batch: Sequence[tuple[int, _SourceDocument, int]],
    rng: np.random.Generator, noise: float,
) -> None:
    """One transaction: documents, their ready versions, current_version, then the chunks."""
    now = timezone.now()
    with transaction.atomic():
        documents = []
        for replica, source, _ in batch:
            digest = hashlib.sha256(f"{source.content_hash}:{replica}".encode()).hexdigest()
            documents.append(Document(
                domain=target, title=f"{replica_word(replica)}: {source.title}"[:500],
                source=_replica_source(replica, source), media_type=source.media_type,
                content_hash=digest, status=Status.READY,
            ))
        Document.objects.bulk_create(documents)
        versions = DocumentVersion.objects.bulk_create([
            DocumentVersion(
                document=document, number=1, filename=f"{document.source}.txt",
                content_hash=document.content_hash,
                size_bytes=len(source.extracted_text.encode()),
                media_type=source.media_type, status=Status.READY, processed_at=now,
                extracted_text=source.extracted_text, page_count=source.page_count,
            )
            for document, (_, source, take) in zip(documents, batch, strict=True)
        ])
        sets = ChunkSet.objects.bulk_create([
            ChunkSet(version=version, state=ChunkSet.State.ACTIVE, activated_at=now)
            for version in versions
        ])
        for document, version, chunk_set in zip(documents, versions, sets, strict=True):
            document.current_version = version
            version.active_chunks = chunk_set
        Document.objects.bulk_update(documents, ["current_version"])
        DocumentVersion.objects.bulk_update(versions, ["active_chunks"])
        chunks, vectors = [], []
        for document, version, chunk_set, (_, source, take) in zip(
            documents, versions, sets, batch, strict=True
        ):
            for row, vector in zip(source.chunks[:take], _jitter(source.vectors[:take], rng,
                                                                  noise), strict=True):
                chunks.append(Chunk(
                    document=document, version=version, chunk_set=chunk_set, domain=target,
                    is_current=True,
                    ordinal=row["ordinal"],
                    text=row["text"], start_offset=row["start_offset"],
                    end_offset=row["end_offset"], page=row["page"], page_end=row["page_end"],
                    heading=row["heading"], token_count=row["token_count"],
                ))
                vectors.append(vector)
        Chunk.objects.bulk_create(chunks, batch_size=500)
        spaces.write_vectors(space, chunks, vectors)


def _jitter(vectors: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """``vectors`` plus N(0, noise) per dimension, back to unit length (cosine space)."""
    noisy = vectors + rng.normal(0.0, noise, vectors.shape).astype(np.float32)
    norms = np.linalg.norm(noisy, axis=1, keepdims=True)
    return noisy / np.where(norms > 0, norms, 1.0)


def settle() -> float:
    """VACUUM ANALYZE the store tables; returns seconds.

    After a bulk growth the planner needs statistics, and after ``--drop`` the HNSW index
    holds 100k dead entries: left to autovacuum, that cleanup runs in the middle of the timed
    queries on a 2-core machine. Inside a transaction (tests) only ANALYZE is possible.
    """
    started = time.perf_counter()
    tables = [model._meta.db_table for model in (Chunk, Document, DocumentVersion)]
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"{command} {connection.ops.quote_name(table)}")
    return time.perf_counter() - started


# --- the HNSW index ---------------------------------------------------------------------------


def drop_vector_index(space: EmbeddingSpace) -> None:
    """Drop the space's HNSW index, so bulk inserts skip the per-row graph update."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {space.index_name}")


def build_vector_index(space: EmbeddingSpace, maintenance_work_mem: str) -> float:
    """Build the space's HNSW index as ``ensure_index`` does; returns seconds.

    ``maintenance_work_mem`` should hold the whole graph (pgvector warns and slows down by an
    order of magnitude once it does not): about 2 GB for a million 384-d vectors.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)",
                       [maintenance_work_mem])
        try:
            started = time.perf_counter()
            spaces.ensure_index(space)
            return time.perf_counter() - started
        finally:
            cursor.execute("RESET maintenance_work_mem")


def vector_index_figures(space: EmbeddingSpace, build_s: float | None,
                         maintenance_work_mem: str) -> VectorIndex:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(pg_column_size(embedding)), 0) "
                       "FROM store_chunkvector WHERE space_id = %s", [space.pk])
        vectors, vector_bytes = cursor.fetchone()
        cursor.execute("SELECT coalesce(pg_relation_size(to_regclass(%s)), 0)",
                       [space.index_name])
        (index_bytes,) = cursor.fetchone()
    return VectorIndex(space.name, vectors, index_bytes, vector_bytes, build_s,
                       maintenance_work_mem)


# --- queries and latency --------------------------------------------------------------------


def load_queries(
    n: int, *, path: Path | None = None, domain: Domain | None = None, seed: int = 0
) -> list[str]:
    """``n`` query texts sampled from a BEIR ``queries.jsonl``, or from chunk first sentences.

    Sampling is seeded, so repeated runs time the same queries.
    """
    rng = random.Random(seed)
    if path is not None:
        texts = []
        with Path(path).open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    text = json.loads(line).get("text", "").strip()
                    if text:
                        texts.append(text)
        if not texts:
            raise BenchmarkError(f"{path} has no queries.")
        return rng.sample(texts, min(n, len(texts)))
    if domain is None:
        raise BenchmarkError("Pass a queries file or a domain to sample sentences from.")
    ids = list(bm25_store.searchable_chunks(domain).values_list("pk", flat=True))
    picked = rng.sample(ids, min(n, len(ids)))
    texts = dict(Chunk.objects.filter(pk__in=picked).values_list("pk", "text"))
    return [_first_sentence(texts[pk]) for pk in picked]


def _first_sentence(text: str, max_words: int = 25) -> str:
    """A query a user might type: one line, so a leading heading stays with its sentence."""
    flat = " ".join(text.split())
    spans = split_sentences(flat)
    return " ".join(flat[spans[0][0] : spans[0][1]].split()[:max_words]) if spans else ""


def percentiles(samples_ms: Sequence[float], mode: str, empty: int = 0) -> Latency:
    values = np.asarray(samples_ms, dtype=np.float64)
    p = stats.percentiles(values, (50, 95, 99))
    return Latency(mode, len(values), p["p50"], p["p95"], p["p99"], float(values.mean()),
                   float(values.max()), empty)


def measure_latency(
    queries: Sequence[str], *, domain: str, mode: str, k: int = 10, warmup: int = 5
) -> Latency:
    """Wall-clock per ``search()`` call (query embedding included) after ``warmup`` calls."""
    if not queries:
        raise BenchmarkError("No queries to time.")
    for query in list(queries)[:warmup]:
        search(query, domain=domain, access=BENCHMARK, mode=mode, k=k)
    samples: list[float] = []
    empty = 0
    for query in queries:
        started = time.perf_counter()
        response = search(query, domain=domain, access=BENCHMARK, mode=mode, k=k)
        samples.append((time.perf_counter() - started) * 1000)
        empty += not response.documents
    return percentiles(samples, mode, empty)


# --- BM25Index vs rank-bm25 -----------------------------------------------------------------


def index_corpus(domain: Domain, index: BM25Index) -> list[list[str]]:
    """The token lists ``index`` was built from, rebuilt as ``bm25_store`` builds them."""
    rows = list(bm25_store.chunk_texts(domain))
    if [pk for pk, _ in rows] != index.ids.tolist():
        raise BenchmarkError("The domain changed after its BM25 index was built; run again.")
    return [analyze(text) for _, text in rows]


# --- the whole run --------------------------------------------------------------------------


def run_benchmark(
    *,
    size: int = 100_000,
    domain: str = "bench",
    source_domain: str = "healthcare",
    queries: int = 200,
    queries_file: Path | None = None,
    modes: Sequence[str] = MODES,
    rank_bm25_queries: int = 20,
    drop: bool = False,
    build_hnsw: bool = False,
    maintenance_work_mem: str = "4GB",
    measure_memory: bool = True,
    k: int = 10,
    warmup: int = 5,
    seed: int = 0,
    progress: bool = True,
    echo: Echo = print,
) -> BenchReport:
    """Grow, index, time every mode, compare with rank-bm25; nothing is written to disk.

    ``build_hnsw`` drops the source space's HNSW index before growing and builds it again
    afterwards, timed: meant for a development database, since dense search in every domain
    of that space scans without the index meanwhile. ``measure_memory`` loads the published
    BM25 indexes in a fresh process to read what a serving process holds.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise BenchmarkError(f"Unknown modes {unknown}; use some of {', '.join(MODES)}.")
    if queries_file is not None and not Path(queries_file).is_file():
        raise BenchmarkError(f"No queries file at {queries_file}.")
    source = Domain.objects.filter(slug=source_domain).first()
    if source is None:
        raise BenchmarkError(f"Unknown source domain {source_domain!r}.")
    space = spaces.served_space(source)
    hnsw_build_s = None
    if build_hnsw:
        echo(f"Dropping the HNSW index of space {space.name} until the growth is done.")
        drop_vector_index(space)
    try:
        growth = grow_domain(size, domain=domain, source_domain=source_domain, drop=drop,
                             seed=seed, progress=progress)
    finally:
        if build_hnsw:
            echo(f"Building the HNSW index (maintenance_work_mem={maintenance_work_mem})...")
            hnsw_build_s = build_vector_index(space, maintenance_work_mem)
    if growth.dropped_chunks:
        echo(f"Dropped {growth.dropped_chunks:,} chunks of {domain!r} in "
             f"{growth.drop_seconds:.1f} s.")
    if growth.reused:
        echo(f"Reusing domain {domain!r}: {growth.chunks:,} searchable chunks.")
    else:
        echo(f"Grew domain {domain!r} by {growth.added_chunks:,} chunks "
             f"({growth.added_documents:,} documents) to {growth.chunks:,} in "
             f"{growth.seconds:.1f} s = {growth.chunks_per_second:,.0f} chunks/s.")
    vector_index = vector_index_figures(space, hnsw_build_s, maintenance_work_mem)
    echo(f"HNSW index of {vector_index.vectors:,} vectors: "
         f"{vector_index.index_bytes / 2**20:,.0f} MiB"
         + (f", built in {hnsw_build_s:.1f} s." if hnsw_build_s is not None else "."))
    target = Domain.objects.get(slug=domain)
    settle_s = settle()
    echo(f"VACUUM/ANALYZE of the store tables: {settle_s:.1f} s.")

    started = time.perf_counter()
    index = bm25_store.build_index(target)
    bm25_build_s = time.perf_counter() - started
    documents_index = index_cache.current_index(domain, "documents")
    echo(f"Built BM25 indexes {index.version}: {len(index):,} chunks, "
         f"{len(index.vocabulary):,} terms (and "
         f"{len(documents_index) if documents_index else 0:,} documents) in {bm25_build_s:.1f} s.")

    memory = None
    if measure_memory:
        try:
            memory = index_memory.measure(domain)
        except (index_memory.MemoryProbeError, subprocess.TimeoutExpired) as exc:
            echo(f"Skipping the BM25 memory figure: {exc}")  # the other figures still count
        else:
            echo(f"BM25 indexes loaded by a fresh process: {memory.total_mb:,.0f} MB resident "
                 f"({memory.per_million_chunks_mb():,.0f} MB per million chunks).")

    texts = load_queries(queries, path=queries_file, domain=target, seed=seed)
    echo(f"Timing {len(texts)} queries per mode "
         f"({'from ' + str(queries_file) if queries_file else 'chunk sentences'}).")
    latency = {}
    for mode in modes:
        latency[mode] = measure_latency(texts, domain=domain, mode=mode, k=k, warmup=warmup)

    comparison = None
    if rank_bm25_queries > 0:
        echo(f"Comparing with rank_bm25.BM25Okapi on {rank_bm25_queries} queries...")
        comparison = compare_rank_bm25(
            index, index_corpus(target, index), [analyze(q) for q in texts[:rank_bm25_queries]]
        )
    return BenchReport(
        growth=growth,
        settle_s=settle_s,
        bm25_build_s=bm25_build_s,
        index={"version": index.version, "chunks": len(index),
               "terms": len(index.vocabulary), "postings": int(index.matrix.nnz),
               "documents": len(documents_index) if documents_index else 0},
        latency=latency,
        rank_bm25=comparison,
        vector_index=vector_index,
        bm25_memory=memory,
        settings=run_settings(k, len(texts), queries_file),
    )


def run_settings(k: int, queries: int, queries_file: Path | None) -> dict[str, object]:
    """What the figures depend on, so runs on other machines or settings can be compared."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), (SELECT extversion FROM pg_extension "
                       "WHERE extname = 'vector')")
        postgres, pgvector = cursor.fetchone()
    return {
        "k": k,
        "queries": queries,
        "queries_file": str(queries_file) if queries_file else None,
        "ef_search": settings.KMS_HNSW_EF_SEARCH,
        "candidates": settings.KMS_CANDIDATES,
        "fusion": asdict(FusionOptions.from_settings()),
        "encoder_threads": settings.KMS_ENCODER_THREADS,
        "cores": os.cpu_count(),
        "postgres": postgres.split(" on ")[0],
        "pgvector": pgvector,
    }


def format_table(report: BenchReport) -> str:
    """The figures as a plain-text table for the terminal."""
    growth = report.growth
    lines = [
        f"Domain {growth.domain}: {growth.chunks:,} searchable chunks, "
        f"{growth.documents:,} documents"
        + (" (reused)" if growth.reused else
           f" (grown by {growth.added_chunks:,} in {growth.seconds:.1f} s)"),
        f"BM25 chunk index: {report.index['terms']:,} terms, {report.index['postings']:,} "
        f"postings; document index: {report.index['documents']:,} documents; both built in "
        f"{report.bm25_build_s:.1f} s",
        "",
        f"{'mode':<8} {'queries':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'mean ms':>8} {'max ms':>8} {'empty':>6}",
    ]
    for lat in report.latency.values():
        lines.append(
            f"{lat.mode:<8} {lat.queries:>7} {lat.p50_ms:>8.1f} {lat.p95_ms:>8.1f} "
            f"{lat.p99_ms:>8.1f} {lat.mean_ms:>8.1f} {lat.max_ms:>8.1f} {lat.empty:>6}"
        )
    vectors = report.vector_index
    if vectors is not None:
        lines.append(
            f"HNSW index: {vectors.vectors:,} vectors ({vectors.vector_bytes / 2**20:,.0f} MiB "
            f"of vectors), index {vectors.index_bytes / 2**20:,.0f} MiB"
            + (f", built in {vectors.build_s:.1f} s (maintenance_work_mem="
               f"{vectors.maintenance_work_mem})" if vectors.build_s is not None else "")
        )
    memory = report.bm25_memory
    if memory is not None:
        lines.append(
            f"BM25 in one fresh process: chunks +{memory.chunks_mb:,.0f} MB "
            f"(arrays {memory.chunks_array_mb:,.0f} MB, loaded in {memory.chunks_load_s:.1f} s), "
            f"documents +{memory.documents_mb:,.0f} MB (arrays "
            f"{memory.documents_array_mb:,.0f} MB, {memory.documents_load_s:.1f} s) = "
            f"{memory.per_million_chunks_mb():,.0f} MB per million chunks"
        )
    if report.rank_bm25:
        cmp = report.rank_bm25
        lines += [
            "",
            f"BM25 top-{cmp.k} over {cmp.queries} queries: rank_bm25 {cmp.rank_bm25_ms:.1f} ms, "
            f"BM25Index {cmp.bm25_index_ms:.2f} ms = {cmp.speedup:.0f}x faster; "
            f"identical top-{cmp.k}: {cmp.identical} (scores too: {cmp.scores_identical})",
        ]
    s = report.settings
    lines.append(
        f"ef_search={s['ef_search']} candidates={s['candidates']} "
        f"fusion={s['fusion']['method']} cores={s['cores']} {s['postgres']} "
        f"pgvector {s['pgvector']}"
    )
    return "\n".join(lines)


def write_report(report: BenchReport, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.json"
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
