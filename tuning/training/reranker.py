"""Training the cross-encoder reranker: it reads query and passage together and scores the
first stage's top candidates, which a bi-encoder (one vector per side) cannot do as well.

The model starts from the embedding model's weights (the same local MiniLM) with a new
one-logit classification head, and learns from the domain's positives and mined hard
negatives. Nothing is fetched from or pushed to a hub; only the final model is written.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
from transformers import PrinterCallback

from tuning.data.pairs import TrainingPair
from tuning.losses import reranker_loss
from tuning.params import RerankerParams
from tuning.training.run import ProgressCallback, ProgressFn, TrainingResult, common_arguments


def train_reranker(
    base_model: Path,
    pairs: list[TrainingPair],
    params: RerankerParams,
    output_dir: Path,
    on_progress: ProgressFn | None = None,
) -> TrainingResult:
    """Train a reranker from ``base_model`` on the pairs and their negatives, save it to
    ``output_dir``; ``on_progress(step, total_steps, last_loss)`` is called as it trains."""
    dataset = reranker_dataset(pairs, params.negatives)
    if not any(dataset["label"]):
        raise ValueError("no training pairs")
    if all(dataset["label"]):
        raise ValueError("the reranker needs negatives: mine them first (mine_negatives)")
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(
        str(base_model),
        num_labels=1,
        max_length=params.max_length,
        device=device,
        local_files_only=True,
    )
    progress = ProgressCallback(on_progress)
    with tempfile.TemporaryDirectory(prefix="kms-reranker-") as scratch:
        trainer = CrossEncoderTrainer(
            model=model,
            args=CrossEncoderTrainingArguments(
                output_dir=scratch, **common_arguments(params, device)
            ),
            train_dataset=dataset,
            loss=reranker_loss(model, params),
            callbacks=[progress],
        )
        trainer.remove_callback(PrinterCallback)  # logs go to on_progress, not stdout
        state = trainer.train()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return TrainingResult(
        steps=state.global_step,
        seconds=round(time.perf_counter() - started, 2),
        loss_curve=progress.loss_curve,
        train_pairs=sum(1 for label in dataset["label"] if label),
    )


def reranker_dataset(pairs: list[TrainingPair], negatives_per_pair: int) -> Dataset:
    """Rows (query, passage, label): 1.0 for each pair's positive, 0.0 for each of its first
    ``negatives_per_pair`` negatives (hard ones first, then random). Pairs without negatives
    are left out: alone, their positives would only teach that every passage is relevant."""
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    for pair in pairs:
        if negatives_per_pair and not pair.negatives:
            continue
        rows = [(pair.positive, 1.0)] + [(n, 0.0) for n in pair.negatives[:negatives_per_pair]]
        for passage, label in rows:
            columns["query"].append(pair.query)
            columns["passage"].append(passage)
            columns["label"].append(label)
    return Dataset.from_dict(columns)
