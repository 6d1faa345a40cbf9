"""Fine-tuning the bi-encoder (the dense retriever's embedding model) on query/passage pairs.

Contrastive training with in-batch negatives (plus mined hard negatives) adapts a general
model to a domain's vocabulary and to what its users ask. Everything runs locally: the base
model is a directory, nothing is fetched from or pushed to a hub, nothing is reported, and
only the final model is written (no checkpoints: a run is short and is simply re-run).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers
from transformers import PrinterCallback

from tuning.data.pairs import TrainingPair
from tuning.losses import embedder_loss
from tuning.params import EmbedderParams
from tuning.training.run import ProgressCallback, ProgressFn, TrainingResult, common_arguments


def train_embedder(
    base_model: Path,
    pairs: list[TrainingPair],
    params: EmbedderParams,
    output_dir: Path,
    on_progress: ProgressFn | None = None,
) -> TrainingResult:
    """Fine-tune the sentence-transformers model at ``base_model`` and save it to
    ``output_dir``; ``on_progress(step, total_steps, last_loss)`` is called as it trains."""
    if not pairs:
        raise ValueError("no training pairs")
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(base_model), device=device, local_files_only=True)
    served_length = model.max_seq_length
    model.max_seq_length = params.max_seq_length
    freeze_lowest_layers(model, params.freeze_layers)
    dataset = embedder_dataset(pairs, params.hard_negatives, params.seed)
    progress = ProgressCallback(on_progress)
    with tempfile.TemporaryDirectory(prefix="kms-embedder-") as scratch:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=SentenceTransformerTrainingArguments(
                output_dir=scratch,
                batch_sampler=BatchSamplers.NO_DUPLICATES,
                **common_arguments(params, device),
                lr_scheduler_type=params.scheduler,
            ),
            train_dataset=dataset,
            loss=embedder_loss(model, params),
            callbacks=[progress],
        )
        trainer.remove_callback(PrinterCallback)  # logs go to on_progress, not stdout
        state = trainer.train()
    # The training length is a cost knob: the saved model embeds as far as the base model did.
    model.max_seq_length = served_length
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return TrainingResult(
        steps=state.global_step,
        seconds=round(time.perf_counter() - started, 2),
        loss_curve=progress.loss_curve,
        train_pairs=len(pairs),
    )


def embedder_dataset(pairs: list[TrainingPair], hard_negatives: int, seed: int) -> Dataset:
    """Columns anchor, positive and ``negative_1..k`` (the loss reads them by position).

    Every row needs all k negatives; a pair with too few mined ones is filled with positives
    of other groups (random, seeded): easy negatives, but never its own passage.
    """
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    for index in range(1, hard_negatives + 1):
        columns[f"negative_{index}"] = []
    for pair in pairs:
        columns["anchor"].append(pair.query)
        columns["positive"].append(pair.positive)
        negatives = list(pair.negatives[:hard_negatives])
        while len(negatives) < hard_negatives:
            negatives.append(_other_positive(pairs, pair, negatives, rng))
        for index, negative in enumerate(negatives, 1):
            columns[f"negative_{index}"].append(negative)
    return Dataset.from_dict(columns)


def _other_positive(
    pairs: list[TrainingPair], pair: TrainingPair, taken: list[str], rng: random.Random
) -> str:
    """A random positive of another group not yet among ``taken`` (a scan if sampling misses)."""
    for _ in range(64):
        other = pairs[rng.randrange(len(pairs))]
        if other.group != pair.group and other.positive not in taken:
            return other.positive
    for other in pairs:
        if other.group != pair.group and other.positive not in taken:
            return other.positive
    raise ValueError("too few pairs of other groups to fill every row's hard negatives")


def freeze_lowest_layers(model: SentenceTransformer, layers: int) -> None:
    """Freeze the embeddings and the lowest ``layers`` transformer layers: with little data,
    the general lexical knowledge down there is kept, and each step is cheaper."""
    if layers == 0:
        return
    transformer = model[0].auto_model
    encoder_layers = transformer.encoder.layer
    if layers > len(encoder_layers):
        raise ValueError(
            f"freeze_layers must be at most {len(encoder_layers)} for this model; got {layers}"
        )
    for module in [transformer.embeddings, *encoder_layers[:layers]]:
        for parameter in module.parameters():
            parameter.requires_grad = False
