"""Make (once) and find the ONNX export of a local sentence-transformers model.

An export lives in ``<cache>/<model>@<checksum>/<backend>/``: ``model.onnx`` and
``manifest.json``. The manifest names the source model's SHA-256, so a changed model (a
promoted tuned one, a new release) gets its own export, and the export's own SHA-256, so a
truncated or edited file is found and made again instead of being run. The manifest also
holds how far the export's vectors are from torch's on fixed probe texts: the embedder uses
it to decide whether the export shares torch's embedding space.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from search.ingestion.encoders import BACKENDS, EncoderError, Export
from search.ingestion.encoders.onnx_runtime import run_session

logger = logging.getLogger(__name__)

FORMAT = 1
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Modules the exported graph may contain after the Transformer (what all-MiniLM and most
# sentence-transformers models are made of); anything else stays on torch.
POOLING_MODULES = {"Pooling", "Normalize", "Dense"}
# Model types ONNX Runtime's transformer optimizer knows how to fuse; others are exported
# unfused (still correct, only slower).
FUSABLE = {"bert", "roberta", "xlm-roberta"}
# Short queries and longer passages of several domains, one past the length limit: the
# export must agree with torch on all of them.
PROBE_TEXTS = (
    "How long should staff rub alcohol gel into their hands?",
    "hand hygiene",
    "Which account does a refund post to?",
    "Does vitamin D supplementation reduce the risk of fractures in older adults?",
    "Interest accrues daily and is charged monthly on the outstanding balance.",
    "Pupils who miss more than ten sessions are referred to the attendance officer.",
    "Guideline > Surgical site infection\nPatients should shower with soap the day before "
    "surgery. Hair is removed with clippers, not razors, if it must be removed at all.",
    "Quarterly VAT returns are due one month and seven days after the end of the period.",
    "BRCA1 mutation carriers have a 60–70% lifetime risk of breast cancer.",
    "The committee approved the budget (£1.2m) with two abstentions.",
    "¿Dónde se guardan los registros de vacunación?",
    "Lymphocyte counts below 1.0 × 10⁹/L were treated as lymphopenia.",
    " ".join(["Long documents are cut at the model's sequence limit, so the export must "
              "truncate exactly where sentence-transformers does."] * 20),
)


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_checksum(model_path: Path) -> str:
    """SHA-256 of the model's weights (or of its file names when it has no weights file)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_path / name).exists():
            return file_sha256(model_path / name)
    names = json.dumps(sorted(p.name for p in model_path.iterdir())).encode()
    return hashlib.sha256(names).hexdigest()


def model_name(model_path: Path) -> str:
    return model_path.name if model_path.name != "model" else model_path.parent.name


def export_directory(model_path: Path, backend: str, cache_dir: Path, checksum: str) -> Path:
    return Path(cache_dir) / f"{model_name(model_path)}@{checksum[:12]}" / backend


def ensure_export(model_path: Path, backend: str, cache_dir: Path, checksum: str) -> Export:
    """The valid export for this model and backend, made now if missing or corrupt."""
    if backend not in BACKENDS or backend == "torch":
        raise EncoderError(f"No ONNX export for backend {backend!r}.")
    _require_packages()
    directory = export_directory(model_path, backend, cache_dir, checksum)
    found = load_export(directory, checksum)
    if found is not None:
        return found
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _locked(directory.parent / f".{backend}.lock"):
        found = load_export(directory, checksum)  # another process may have made it meanwhile
        if found is not None:
            return found
        logger.info("Exporting %s to ONNX (%s) in %s", model_path, backend, directory)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{backend}-"))
        try:
            manifest = build_export(model_path, backend, tmp, checksum)
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
            directory.chmod(0o755)  # mkdtemp makes it private to this user
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "ONNX export %s ready: cosine with torch on %d probe texts min %.5f, mean %.5f",
            backend, manifest["agreement"]["texts"], manifest["agreement"]["min_cosine"],
            manifest["agreement"]["mean_cosine"],
        )
        return Export(directory, manifest)


def load_export(directory: Path, checksum: str) -> Export | None:
    """The export in ``directory`` if it is complete, of this model and unchanged."""
    manifest_file = directory / "manifest.json"
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
        valid = (
            manifest.get("format") == FORMAT
            and manifest.get("source_sha256") == checksum
            and file_sha256(directory / "model.onnx") == manifest.get("onnx_sha256")
        )
    except (OSError, ValueError) as exc:
        logger.warning("ONNX export in %s is unreadable (%s): making it again", directory, exc)
        return None
    if not valid:
        logger.warning("ONNX export in %s does not match its manifest or model: making it "
                       "again", directory)
        return None
    return Export(directory, manifest)


def build_export(model_path: Path, backend: str, target: Path, checksum: str) -> dict:
    """Export, fuse, (quantise) and check against torch; returns the manifest it wrote."""
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention exports as the plain MatMul/Softmax pattern the fusion recognises.
    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True,
                                model_kwargs={"attn_implementation": "eager"})
    modules = [type(module).__name__ for module in model]
    if not modules or modules[0] != "Transformer" or not set(modules[1:]) <= POOLING_MODULES:
        raise EncoderError(f"{model_path} is made of {modules}; only a Transformer followed "
                           f"by {sorted(POOLING_MODULES)} can be exported.")
    config = model[0].auto_model.config
    sample = model.tokenizer(["a probe", "a longer probe text"], padding=True,
                             return_tensors="pt")
    inputs = [name for name in INPUTS if name in sample]
    graph = target / "graph.onnx"
    try:
        # The tracer warns about shape checks it freezes; the probe agreement below is the
        # check that matters (it covers short, long and truncated texts).
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _traceable(model, inputs).eval(), tuple(sample[n] for n in inputs),
                str(graph), input_names=inputs, output_names=["sentence_embedding"],
                dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in inputs},
                              "sentence_embedding": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        fused = _fuse(graph, target / "fused.onnx", config)
        final = target / "model.onnx"
        if backend == "onnx-int8":
            _quantize(fused, final)
        else:
            fused.rename(final)
    except EncoderError:
        raise
    except Exception as exc:  # torch.onnx and the optimizer raise many kinds
        raise EncoderError(f"Exporting {model_path} to ONNX failed: {exc}") from exc
    for leftover in target.glob("*.onnx"):
        if leftover.name != "model.onnx":
            leftover.unlink()
    max_length = int(model.max_seq_length)
    reference = model.encode(list(PROBE_TEXTS), normalize_embeddings=True,
                             convert_to_numpy=True)
    session = onnxruntime.InferenceSession(str(final), providers=["CPUExecutionProvider"])
    vectors = run_session(session, model.tokenizer, list(PROBE_TEXTS), max_length, 16)
    cosines = np.sum(vectors * reference, axis=1)
    manifest = {
        "format": FORMAT,
        "backend": backend,
        "source": str(model_path),
        "source_sha256": checksum,
        "onnx_sha256": file_sha256(final),
        "inputs": inputs,
        "max_seq_length": max_length,
        "dimensions": int(reference.shape[1]),
        "fused": config.model_type in FUSABLE,
        "quantization": "dynamic int8, per channel, MatMul and Attention weights"
        if backend == "onnx-int8" else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "agreement": {"texts": len(PROBE_TEXTS), "min_cosine": float(cosines.min()),
                      "mean_cosine": float(cosines.mean())},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _traceable(model, inputs: list[str]):
    """The whole sentence-transformers pipeline as one module of plain tensors (pooled)."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(inputs, tensors, strict=True)))["sentence_embedding"]

    return SentenceEmbedding()


def _fuse(graph: Path, target: Path, config) -> Path:
    if config.model_type not in FUSABLE:
        return graph
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(graph), model_type="bert", num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
    optimized.save_model_to_file(str(target))
    return target


def _quantize(source: Path, target: Path) -> None:
    """Per-channel int8 weights: per-tensor scales cost MiniLM 0.06 in cosine, per channel 0.005."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.INFO)  # the quantiser logs a line per tensor to the root logger
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)


def _require_packages() -> None:
    missing = [name for name in ("onnx", "onnxruntime") if not _importable(name)]
    if missing:
        raise EncoderError(f"The ONNX backends need {' and '.join(missing)} "
                           f"(pip install {' '.join(missing)}).")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One exporter at a time per model and backend, across processes."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
