"""Encoder backends: the same sentence-transformers model run by torch or by ONNX Runtime.

``torch`` runs the model as sentence-transformers loads it. ``onnx`` runs an export of it
(attention and layer-norm fused by ONNX Runtime's transformer optimizer) and ``onnx-int8``
the same export with its matrix multiplications dynamically quantised to int8. The exports
are made from the local model directory, never downloaded (see ``onnx_export``).

optimum (what ``SentenceTransformer(backend="onnx")`` needs) requires transformers<4.58 and
cannot be installed beside the transformers this project uses, so the export is done with
``torch.onnx`` and run with ONNX Runtime directly. OpenVINO's package for sentence-transformers
(optimum-intel) would replace the pinned CPU torch with a CUDA build: not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("torch", "onnx", "onnx-int8")


class EncoderError(RuntimeError):
    """A backend cannot encode with this model (missing package, failed or corrupt export)."""


class Encoder(Protocol):
    """What the embedder needs of a backend: unit-length float32 vectors, one per text."""

    backend: str
    dimensions: int

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Export:
    """An ONNX export on disk (``model.onnx``) and what its manifest says of it."""

    directory: Path
    manifest: dict

    @property
    def model_file(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def min_cosine(self) -> float:
        return float(self.manifest["agreement"]["min_cosine"])
