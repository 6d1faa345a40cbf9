"""The trained citation-support verifier at serving time: a three-label cross-encoder.

``classify`` labels (statement, passage) pairs as supports / contradicts / not enough
information with the label names the model's config carries (``tuning`` writes them when it
trains one). The model is loaded once per process and path; a node that lacks the files
fetches them from the model store first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kms.store import model_files

LABELS = ("supports", "contradicts", "not_enough_info")
_models: dict[Path, object] = {}
_lock = threading.Lock()


class VerifierUnavailable(RuntimeError):
    """The verifier's files cannot be loaded; the caller falls back to the lexical check."""


@dataclass(frozen=True)
class Judgement:
    label: str
    probabilities: dict[str, float]


def load_verifier(path: Path):
    from sentence_transformers import CrossEncoder

    path = Path(path)
    with _lock:
        if path not in _models:
            try:
                if not model_files.ensure_local(path):
                    raise VerifierUnavailable(f"No verifier model at {path}.")
                model = CrossEncoder(str(path), device="cpu")
            except (OSError, ValueError, model_files.ModelFilesUnavailable) as exc:
                raise VerifierUnavailable(f"Cannot load the verifier at {path}: {exc}") from exc
            names = [model.model.config.id2label.get(i) for i in range(model.num_labels)]
            if sorted(map(str, names)) != sorted(LABELS):
                raise VerifierUnavailable(
                    f"The model at {path} predicts {names}, not {', '.join(LABELS)}: it is "
                    "not a support verifier (train one with manage.py train_verifier).")
            _models[path] = model
        return _models[path]


def classify(path: Path, pairs: Sequence[tuple[str, str]],
             batch_size: int = 32) -> list[Judgement]:
    """One judgement per (statement, passage); an empty statement or passage says nothing."""
    model = load_verifier(path)
    names = [model.model.config.id2label[i] for i in range(model.num_labels)]
    judged: list[Judgement | None] = [None] * len(pairs)
    todo = [i for i, (sentence, passage) in enumerate(pairs)
            if sentence.strip() and passage.strip()]
    if todo:
        logits = np.asarray(model.predict([pairs[i] for i in todo], batch_size=batch_size,
                                          show_progress_bar=False, convert_to_numpy=True))
        logits = logits.reshape(len(todo), len(names))
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        for row, i in enumerate(todo):
            p = {name: round(float(v), 4) for name, v in zip(names, probabilities[row],
                                                             strict=True)}
            judged[i] = Judgement(max(p, key=p.get), p)
    empty = {name: 0.0 for name in LABELS} | {"not_enough_info": 1.0}
    return [j if j is not None else Judgement("not_enough_info", dict(empty)) for j in judged]


def forget() -> None:
    """Drop the loaded verifiers, as a fresh process would start."""
    with _lock:
        _models.clear()
