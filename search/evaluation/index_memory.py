"""How much memory one serving process needs for a domain's BM25 indexes.

Measured in a fresh interpreter (``python -m search.evaluation.index_memory SLUG``), because
the benchmark process has just built the indexes and its resident size says nothing about a
web or worker process that only loads them. The child prints one JSON line: resident memory
after Django and the scientific stack are imported, after the chunk index is loaded and after
the document index is loaded, with the in-memory sizes of the arrays themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


class MemoryProbeError(RuntimeError):
    """The child process failed; the message carries its last output lines."""


@dataclass(frozen=True)
class IndexMemory:
    baseline_mb: float  # Django, numpy and scipy imported, nothing loaded
    chunks_mb: float  # resident increase for the chunk index
    documents_mb: float  # further increase for the document index
    chunks_array_mb: float  # bytes of the chunk index's arrays
    documents_array_mb: float
    chunks_load_s: float
    documents_load_s: float
    chunk_entries: int
    document_entries: int

    @property
    def total_mb(self) -> float:
        return self.chunks_mb + self.documents_mb

    def per_million_chunks_mb(self) -> float:
        """Both indexes' resident cost scaled to a million chunks (the document index grows
        with the documents those chunks belong to)."""
        return self.total_mb * 1_000_000 / self.chunk_entries if self.chunk_entries else 0.0


def measure(domain_slug: str, *, env: dict[str, str] | None = None,
            timeout: float = 3600) -> IndexMemory:
    """Run the probe in a child interpreter with this process's database settings."""
    from django.conf import settings

    from kms.system import child_environment, connected_database_url

    child_env = child_environment() | {"DATABASE_URL": connected_database_url()} | (env or {})
    result = subprocess.run(
        [sys.executable, "-m", __name__, domain_slug], env=child_env, capture_output=True,
        text=True, timeout=timeout, cwd=Path(settings.BASE_DIR),
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise MemoryProbeError(f"The memory probe for {domain_slug!r} failed:\n{tail}")
    return IndexMemory(**json.loads(lines[-1]))


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _array_mb(index) -> float:
    matrix = index.matrix
    arrays = (matrix.data, matrix.indices, matrix.indptr, index.ids)
    return sum(a.nbytes for a in arrays) / 2**20


def _probe(domain_slug: str) -> dict:
    import django

    django.setup()
    import numpy  # noqa: F401  (counted in the baseline, as in a serving process)
    import scipy.sparse  # noqa: F401

    from search.retrieval import index_cache

    figures: dict[str, float | int] = {"baseline_mb": _rss_mb()}
    before = figures["baseline_mb"]
    for level in ("chunks", "documents"):
        started = time.perf_counter()
        index = index_cache.current_index(domain_slug, level)
        if index is None:
            raise SystemExit(f"{domain_slug!r} has no published {level} index.")
        figures[f"{level}_load_s"] = time.perf_counter() - started
        now = _rss_mb()
        figures[f"{level}_mb"] = now - before
        figures[f"{level}_array_mb"] = _array_mb(index)
        figures[f"{level[:-1]}_entries"] = len(index)
        before = now
    return figures


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1])))
