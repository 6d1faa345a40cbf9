"""A node's copy of the published BM25 indexes: follow the pointer row, cache, hot-reload.

Each call reads the newest ``LexicalIndex`` row of the domain and level (one indexed query).
When it names a version this process has not loaded, the artifact is read from this node's
cache directory (``KMS_INDEX_DIR``) or else from the shared store, checked against its
checksum and swapped in, so a rebuild on any node reaches every process without a restart
or a shared filesystem. When the newest version cannot be loaded (store unreachable,
damaged artifact), the process keeps serving what it has, or the newest older version that
loads, and tries again after ``KMS_BM25_RETRY_SECONDS``. The cache directory may be deleted
at any time: loaded indexes live in memory and a missing file is fetched again.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import DatabaseError

from kms.store.models import LexicalIndex
from search.retrieval.bm25 import BM25Index
from search.retrieval.index_artifacts import copy_artifact, read_artifact, stream_checksum

logger = logging.getLogger(__name__)

Level = str  # "chunks" or "documents" (LexicalIndex.Level)


class IndexUnavailable(Exception):
    """A version is published but none can be loaded here; the message says why."""


@dataclass(frozen=True)
class _Loaded:
    row_id: int
    domain_id: int
    index: BM25Index


_loaded: dict[tuple[str, Level], _Loaded] = {}
_failed: dict[int, tuple[float, str]] = {}  # row id -> (monotonic time, reason)
_locks: dict[tuple[str, Level], threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock_of(key: tuple[str, Level]) -> threading.Lock:
    """One loader per domain and level: a big load never holds up another domain."""
    with _locks_lock:
        return _locks.setdefault(key, threading.Lock())


def _is_current(loaded: _Loaded | None, newest: LexicalIndex) -> bool:
    """Only move forward: a reader whose snapshot predates the loaded version keeps what is
    loaded instead of going back to an older one. Rows are compared by primary key, which
    grows with every insert, so versions numbered anew (rows deleted, a restored backup)
    still count as newer."""
    return (loaded is not None and loaded.domain_id == newest.domain_id
            and loaded.row_id >= newest.pk)


def cache_dir(domain_slug: str, level: Level) -> Path:
    return Path(settings.KMS_INDEX_DIR) / "bm25" / domain_slug / level


def current_index(domain_slug: str, level: Level = "chunks") -> BM25Index | None:
    """The newest loadable published index; None when none was ever built.

    Raises ``IndexUnavailable`` when versions exist but none of them loads on this node.
    """
    key = (domain_slug, level)
    rows = LexicalIndex.objects.filter(domain__slug=domain_slug, level=level)
    newest = rows.order_by("-version").first()
    if newest is None:
        _loaded.pop(key, None)
        return None
    loaded = _loaded.get(key)
    if _is_current(loaded, newest):
        return loaded.index  # type: ignore[union-attr]
    if loaded is not None and loaded.domain_id != newest.domain_id:
        loaded = None  # a domain of the same name made anew: nothing of the old one applies
    lock = _lock_of(key)
    # Another thread loading a new version: keep serving this one meanwhile.
    if not lock.acquire(blocking=loaded is None):
        return loaded.index  # type: ignore[union-attr]
    try:
        if _is_current(_loaded.get(key), newest):
            return _loaded[key].index
        if _load(key, newest):
            return _loaded[key].index
        if loaded is not None:
            return loaded.index
        for older in rows.filter(version__lt=newest.version).order_by("-version"):
            if _load(key, older):
                return _loaded[key].index
        raise IndexUnavailable(
            f"no version of the BM25 {level} index of {domain_slug} loads on this node "
            f"(newest: version {newest.version}; the server log says why)")
    finally:
        lock.release()


def _load(key: tuple[str, Level], row: LexicalIndex) -> bool:
    """Load ``row`` into this process unless it failed within the retry delay."""
    failed = _failed.get(row.pk)
    if failed is not None and time.monotonic() - failed[0] < settings.KMS_BM25_RETRY_SECONDS:
        return False
    try:
        with _artifact(key, row) as artifact:
            index = BM25Index.load(artifact)
    except DatabaseError:
        raise  # the search's own transaction is broken: nothing to fall back on
    except Exception as exc:  # damaged, unreachable, out of memory: serve what loads
        reason = f"BM25 index {row} cannot be loaded: {exc}"
        logger.error("%s. Serving the last good version; retrying in %s s.", reason,
                     settings.KMS_BM25_RETRY_SECONDS)
        _failed[row.pk] = (time.monotonic(), reason)
        return False
    _failed.pop(row.pk, None)
    _loaded[key] = _Loaded(row.pk, row.domain_id, index)
    logger.info("Loaded %s (%d entries)", row, len(index))
    return True


def _artifact(key: tuple[str, Level], row: LexicalIndex) -> BinaryIO:
    """The checked artifact, open: from this node's cache, else fetched from the shared store
    into it (streamed to disk and read back: one copy in memory, not two). Checked and read
    through one open file, so another process replacing the cache cannot swap it between."""
    directory = cache_dir(*key)
    path = directory / f"{row.version}-{row.checksum[:16]}.npz"
    cached = _open_checked(path, row.checksum)
    if cached is not None:
        return cached
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            copy_artifact(row, handle)
        os.replace(tmp, path)
    except OSError as exc:  # the cache is an optimisation: serve from memory regardless
        logger.warning("Cannot cache %s in %s: %s", row, directory, exc)
        tmp.unlink(missing_ok=True)
        return io.BytesIO(read_artifact(row))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for other in directory.glob("*.npz"):
        if other != path:
            other.unlink(missing_ok=True)  # a process still reading it keeps its open file
    fetched = _open_checked(path, row.checksum)
    return fetched if fetched is not None else io.BytesIO(read_artifact(row))


def _open_checked(path: Path, expected: str) -> BinaryIO | None:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        if stream_checksum(handle) == expected:
            handle.seek(0)
            return handle
    except BaseException:
        handle.close()
        raise
    handle.close()
    logger.warning("Cached %s is damaged; fetching it again", path)
    return None


def forget(domain_slug: str | None = None) -> None:
    """Drop loaded indexes (of one domain, or all) and their cache files."""
    for key in [k for k in _loaded if domain_slug in (None, k[0])]:
        with _lock_of(key):
            _loaded.pop(key, None)
    _failed.clear()
    root = Path(settings.KMS_INDEX_DIR) / "bm25"
    shutil.rmtree(root / domain_slug if domain_slug else root, ignore_errors=True)
