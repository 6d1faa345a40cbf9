"""Reranking: a domain's promoted cross-encoder rescores the best fused documents.

Only a domain with a promoted reranker run (``tuning``'s registry) is reranked; the others
are served exactly as fused. Each of the top ``depth`` documents is scored by its best
chunk (with its title, as it is embedded), and the final score interpolates the reranker's
with the fused one, both min-max normalised over those documents, so a weak reranker cannot
throw away what fusion found.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from kms.store import model_files
from kms.store.models import Domain, ModelRun


class RerankerUnavailable(RuntimeError):
    """The promoted reranker's files cannot be loaded."""


@dataclass(frozen=True)
class Reranker:
    run_id: int
    path: Path
    depth: int
    weight: float  # of the reranker's score; 1 - weight of the fused score

    def model(self):
        return load_cross_encoder(self.path)


def served_reranker(domain: Domain) -> Reranker | None:
    """The domain's promoted reranker with its serving options, or None."""
    run = ModelRun.objects.filter(domain=domain, kind=ModelRun.Kind.RERANKER,
                                  state=ModelRun.State.PROMOTED).first()
    if run is None:
        return None
    chosen = run.metrics.get("chosen", {}) if isinstance(run.metrics, dict) else {}
    return reranker_for(domain, run.pk, Path(run.model_dir), chosen.get("weight"))


def reranker_for(domain: Domain, run_id: int, path: Path,
                 weight: float | None = None) -> Reranker:
    """The model at ``path`` with the domain's serving options: its depth, and the weight
    the domain pins, else ``weight`` (the one its gate chose), else the default."""
    options = _options(domain)
    if "weight" in options:
        weight = options["weight"]
    return Reranker(run_id, path, int(options.get("depth", settings.KMS_RERANK_DEPTH)),
                    float(settings.KMS_RERANK_WEIGHT if weight is None else weight))


def weights_to_try(domain: Domain) -> tuple[float, ...]:
    """The weights a gate chooses from: the domain's pinned one, or KMS_RERANK_WEIGHTS."""
    options = _options(domain)
    return (float(options["weight"]),) if "weight" in options else settings.KMS_RERANK_WEIGHTS


def _options(domain: Domain) -> dict:
    options = domain.options.get("reranking", {}) if isinstance(domain.options, dict) else {}
    return options if isinstance(options, dict) else {}


_lock = threading.Lock()
_models: dict[Path, object] = {}


def load_cross_encoder(path: Path):
    """The process-wide CrossEncoder at ``path`` (loaded on first use)."""
    from sentence_transformers import CrossEncoder

    with _lock:
        if path not in _models:
            try:
                if not model_files.ensure_local(path):
                    raise RerankerUnavailable(f"No reranker model at {path}.")
                _models[path] = CrossEncoder(str(path), device="cpu")
            except (OSError, ValueError, model_files.ModelFilesUnavailable) as exc:
                raise RerankerUnavailable(f"Cannot load the reranker at {path}: {exc}") from exc
        return _models[path]


@dataclass(frozen=True)
class Reranked:
    position: int  # in the list that was given
    rank: int  # by the reranker's score alone, 1-based
    rerank_score: float
    score: float  # interpolated with the fused score: what the result is ranked by


def rerank(reranker: Reranker, query: str, passages: list[str],
           fused: list[float]) -> list[Reranked]:
    """The passages (best fused first) reordered by the reranker blended with fusion."""
    return reorder(rerank_scores(reranker, query, passages), fused, reranker.weight)


def reorder(scores: np.ndarray, fused: list[float], weight: float) -> list[Reranked]:
    """Passages in the order of their reranker ``scores`` blended with ``fused`` at
    ``weight``: scored once, a list can be reordered at several weights."""
    final = combined(scores, np.asarray(fused, dtype=np.float64), weight)
    by_reranker = {int(i): rank for rank, i in enumerate(np.argsort(-scores, kind="stable"), 1)}
    order = np.argsort(-final, kind="stable")
    return [Reranked(int(i), by_reranker[int(i)], float(scores[i]), float(final[i]))
            for i in order]


def rerank_scores(reranker: Reranker, query: str, passages: list[str]) -> np.ndarray:
    """The cross-encoder's relevance score of each passage for ``query``."""
    if not passages:
        return np.zeros(0)
    model = reranker.model()
    scores = model.predict([(query, passage) for passage in passages],
                           batch_size=max(len(passages), 1), show_progress_bar=False)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def combined(rerank: np.ndarray, fused: np.ndarray, weight: float) -> np.ndarray:
    """``weight`` x reranker + (1 - weight) x fused, each min-max normalised."""
    return weight * _unit(rerank) + (1.0 - weight) * _unit(fused)


def _unit(values: np.ndarray) -> np.ndarray:
    spread = values.max() - values.min() if values.size else 0.0
    return (values - values.min()) / spread if spread > 0 else np.ones_like(values)
