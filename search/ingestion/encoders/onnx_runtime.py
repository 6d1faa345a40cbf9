"""The ONNX backends: an export (``onnx_export``) run by ONNX Runtime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.ingestion.encoders import EncoderError, Export


class OnnxEncoder:
    def __init__(self, export: Export, model_path: Path, threads: int = 0) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(export.model_file), options, providers=["CPUExecutionProvider"]
            )
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_path),
                                                           local_files_only=True)
        except Exception as exc:  # ONNX Runtime's errors share no useful base class
            raise EncoderError(f"ONNX Runtime cannot load {export.model_file}: {exc}") from exc
        self.backend = export.manifest["backend"]
        self.dimensions = int(export.manifest["dimensions"])
        self.max_length = int(export.manifest["max_seq_length"])
        self.export = export

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return run_session(self.session, self.tokenizer, texts, self.max_length, batch_size)


def run_session(session, tokenizer, texts: list[str], max_length: int,
                batch_size: int) -> np.ndarray:
    """Unit vectors in the order of ``texts``; batches of similar length pad least
    (sentence-transformers' own order: longest first)."""
    names = [node.name for node in session.get_inputs()]
    order = np.argsort([-len(text) for text in texts], kind="stable")
    vectors: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                          max_length=max_length, return_tensors="np")
        (output,) = session.run(None, {name: batch[name].astype(np.int64) for name in names})
        if vectors is None:
            vectors = np.zeros((len(texts), output.shape[1]), dtype=np.float32)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        vectors[rows] = output / np.maximum(norms, 1e-12)
    if vectors is None:
        raise ValueError("run_session needs at least one text.")
    return vectors
