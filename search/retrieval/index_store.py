"""Per-domain BM25 indexes: built from PostgreSQL, versioned on disk, hot-reloaded.

Each domain has two: one over chunks (which passage of a document matches) and one over whole
documents (which documents match: a whole document's term statistics rank documents better
than its best chunk does). A build writes ``bm25-<version>.npz`` and then atomically
replaces the ``CURRENT`` pointer beside it. Every web and worker process checks the pointer's
stat on each query (a few microseconds) and loads the new version when it changed, so a
rebuild reaches all processes without a restart. Builds are queued (debounced) when
documents become ready; see ``claim_refresh`` and ``search.retrieval.tasks``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.db.models import QuerySet

from kms.store.models import Chunk, Document, Domain
from search.ingestion.embedding import passage_text
from search.retrieval.bm25 import FILE_PREFIX, BM25Index, BM25Params
from search.retrieval.text_analysis import analyze

logger = logging.getLogger(__name__)
POINTER = "CURRENT"
KEEP_VERSIONS = 2


Level = Literal["chunks", "documents"]


def index_dir(domain_slug: str, level: Level = "chunks") -> Path:
    return Path(settings.KMS_INDEX_DIR) / "bm25" / domain_slug / level


def params() -> BM25Params:
    return BM25Params(settings.KMS_BM25_K1, settings.KMS_BM25_B, settings.KMS_BM25_EPSILON)


def searchable_chunks(domain: Domain) -> QuerySet[Chunk]:
    """The served chunks: the active set of the version each document serves."""
    return Chunk.objects.filter(domain=domain, is_current=True)


def bm25_text(title: str, heading: str, text: str) -> str:
    """What BM25 indexes for a chunk: the same context the embedding sees."""
    return passage_text(title, heading, text)


def chunk_texts(domain: Domain) -> Iterator[tuple[int, str]]:
    """(chunk id, indexed text) of the domain's searchable chunks, in id order."""
    rows = (
        searchable_chunks(domain)
        .order_by("pk")
        .values_list("pk", "document__title", "heading", "text")
        .iterator(chunk_size=5000)
    )
    for pk, title, heading, text in rows:
        yield pk, bm25_text(title, heading, text)


def build_index(domain: Domain) -> BM25Index:
    """Build, save and publish new chunk and document indexes; returns the chunk index."""
    chunks = _build_and_publish(domain, "chunks", chunk_texts(domain))
    document_rows = (
        Document.objects.filter(domain=domain, current_version__isnull=False)
        .order_by("pk")
        .values_list("pk", "title", "current_version__extracted_text")
        .iterator(chunk_size=1000)
    )
    _build_and_publish(
        domain, "documents", ((pk, f"{title}\n{text}") for pk, title, text in document_rows)
    )
    return chunks


def _build_and_publish(domain: Domain, level: Level, rows) -> BM25Index:
    ids: list[int] = []
    tokens: list[list[str]] = []
    for pk, text in rows:
        ids.append(pk)
        tokens.append(analyze(text))
    index = BM25Index.build(ids, tokens, params())
    directory = index_dir(domain.slug, level)
    _publish(directory, index.save(directory))
    logger.info("BM25 %s index %s for %s: %d", level, index.version, domain.slug, len(index))
    return index


def _publish(directory: Path, path: Path) -> None:
    tmp = directory / f".{POINTER}.{os.getpid()}.tmp"
    tmp.write_text(path.name)
    os.replace(tmp, directory / POINTER)
    versions = sorted(directory.glob(f"{FILE_PREFIX}*"), key=lambda p: p.stat().st_mtime)
    for old in versions[:-KEEP_VERSIONS]:
        old.unlink(missing_ok=True)


def remove_indexes(domain_slug: str) -> None:
    """Delete a removed domain's index files, and forget them in this process."""
    shutil.rmtree(Path(settings.KMS_INDEX_DIR) / "bm25" / domain_slug, ignore_errors=True)
    for level in ("chunks", "documents"):
        _cache.pop((domain_slug, level), None)


@dataclass
class _Loaded:
    stamp: tuple[int, int, int]
    index: BM25Index


_cache: dict[tuple[str, Level], _Loaded] = {}
_lock = threading.Lock()


def current_index(domain_slug: str, level: Level = "chunks") -> BM25Index | None:
    """The published index of a domain, reloaded when a rebuild replaced it; None if none."""
    pointer = index_dir(domain_slug, level) / POINTER
    try:
        stat = pointer.stat()
    except FileNotFoundError:
        return None
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    key = (domain_slug, level)
    loaded = _cache.get(key)
    if loaded is not None and loaded.stamp == stamp:
        return loaded.index
    with _lock:
        loaded = _cache.get(key)
        if loaded is None or loaded.stamp != stamp:
            path = pointer.parent / pointer.read_text().strip()
            loaded = _Loaded(stamp, BM25Index.load(path))
            _cache[key] = loaded
    return loaded.index


def stale_domains() -> set[int]:
    """Domains whose index is missing or older than their newest ready version.

    Beat checks this periodically as a safety net for refreshes lost with a broker restart.
    """
    from django.db.models import Max

    from kms.store.models import DocumentVersion, Status

    stale = set()
    newest = (
        DocumentVersion.objects.filter(status=Status.READY)
        .values("document__domain_id", "document__domain__slug")
        .annotate(last=Max("processed_at"))
    )
    for row in newest:
        pointer = index_dir(row["document__domain__slug"]) / POINTER
        built = pointer.stat().st_mtime if pointer.exists() else None
        if built is None or (row["last"] and row["last"].timestamp() > built):
            stale.add(row["document__domain_id"])
    return stale


def claim_refresh(domain_id: int) -> bool:
    """Whether this caller should queue the domain's rebuild: at most one pending at a time.

    The pending marker is cleared when the build starts (``clear_pending``), so documents that
    become ready during a build trigger the next one: a ready document is findable by BM25
    within KMS_BM25_REFRESH_SECONDS plus one build (seconds for 10,000s of chunks).
    """
    import redis

    client = redis.Redis.from_url(_redis_py_url(settings.REDIS_URL))
    delay = settings.KMS_BM25_REFRESH_SECONDS
    return bool(client.set(pending_key(domain_id), "1", nx=True, ex=max(delay * 10, 600)))


def pending_key(domain_id: int) -> str:
    """Namespaced by database, so installations (and test runs) sharing a Redis never clash."""
    from django.db import connection

    return f"kms:{connection.settings_dict['NAME']}:bm25-refresh-pending:{domain_id}"


def clear_pending(domain_id: int) -> None:
    import redis

    redis.Redis.from_url(_redis_py_url(settings.REDIS_URL)).delete(pending_key(domain_id))


def _redis_py_url(url: str) -> str:
    """kombu's ``redis+socket://`` spelling as redis-py's ``unix://``."""
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+") else url
