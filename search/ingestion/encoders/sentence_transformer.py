"""The torch backend: the model as sentence-transformers runs it (the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class SentenceTransformerEncoder:
    backend = "torch"

    def __init__(self, path: Path, threads: int = 0) -> None:
        from sentence_transformers import SentenceTransformer  # torch takes seconds to load

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dimension = (getattr(self.model, "get_embedding_dimension", None)  # s-t 5.2 and later
                     or self.model.get_sentence_embedding_dimension)
        self.dimensions = int(dimension())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)
