"""Training the citation-support verifier: a cross-encoder that reads an answer sentence and
a cited passage together and says whether the passage supports it, contradicts it, or says
nothing about it (three labels, as in SciFact and NLI).

It starts from the embedding model's weights (the local MiniLM) with a new three-logit
head whose labels are written into the saved config (``id2label``), so serving reads the
meaning of each logit from the model and not from a convention.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
from transformers import PrinterCallback

from tuning.data.claims import LABELS, LabelledPair
from tuning.losses import verifier_loss
from tuning.params import VerifierParams
from tuning.training.run import ProgressCallback, ProgressFn, TrainingResult, common_arguments


def train_verifier(
    base_model: Path,
    pairs: list[LabelledPair],
    params: VerifierParams,
    output_dir: Path,
    on_progress: ProgressFn | None = None,
) -> TrainingResult:
    """Train from ``base_model`` on labelled pairs and save to ``output_dir``."""
    counts = Counter(pair.label for pair in pairs)
    missing = [label for label in LABELS if not counts[label]]
    if missing:
        raise ValueError(f"the verifier needs pairs of every label; none are {missing}")
    dataset = Dataset.from_dict({
        "sentence": [pair.sentence for pair in pairs],
        "passage": [pair.passage for pair in pairs],
        "label": [LABELS.index(pair.label) for pair in pairs],
    })
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(str(base_model), num_labels=len(LABELS), max_length=params.max_length,
                         device=device, local_files_only=True)
    model.model.config.id2label = dict(enumerate(LABELS))
    model.model.config.label2id = {label: i for i, label in enumerate(LABELS)}
    progress = ProgressCallback(on_progress)
    with tempfile.TemporaryDirectory(prefix="kms-verifier-") as scratch:
        trainer = CrossEncoderTrainer(
            model=model,
            args=CrossEncoderTrainingArguments(output_dir=scratch,
                                               **common_arguments(params, device)),
            train_dataset=dataset,
            loss=verifier_loss(model, [counts[label] for label in LABELS]),
            callbacks=[progress],
        )
        trainer.remove_callback(PrinterCallback)
        state = trainer.train()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return TrainingResult(steps=state.global_step, seconds=round(time.perf_counter() - started, 2),
                          loss_curve=progress.loss_curve, train_pairs=len(pairs))
