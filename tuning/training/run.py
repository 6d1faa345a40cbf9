"""What the embedder and reranker runs share: their trainer arguments, live progress, and the
summary they report (size, time, loss curve)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuning.params import EmbedderParams, GeneratorParams, RerankerParams, VerifierParams

# on_progress(step, total_steps, last_loss): last_loss is None before the first logged step.
ProgressFn = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class TrainingResult:
    """Summary of a finished run, stored with the model so a job's history can be shown."""

    steps: int
    seconds: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    train_pairs: int = 0
    tokens_per_second: float | None = None  # generators: prompt and answer tokens trained


class ProgressCallback(TrainerCallback):
    """Forwards the trainer's step and loss to ``on_progress`` and keeps the loss curve."""

    def __init__(self, on_progress: ProgressFn | None = None) -> None:
        self.on_progress = on_progress
        self.loss_curve: list[tuple[int, float]] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(state.global_step, state.max_steps, None)  # > 0 when resumed

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.loss_curve.append((state.global_step, loss))
        if self.on_progress is not None:
            self.on_progress(state.global_step, state.max_steps, loss)


def common_arguments(params: EmbedderParams | RerankerParams | VerifierParams
                     | GeneratorParams, device: str) -> dict[str, Any]:
    """Training arguments shared by every trainer: local, quiet, no
    evaluation and no checkpoints inside the run."""
    return {
        "num_train_epochs": params.epochs,
        "max_steps": params.max_steps or -1,
        "per_device_train_batch_size": params.batch_size,
        "learning_rate": params.learning_rate,
        "warmup_steps": params.warmup_ratio,
        "seed": params.seed,
        "data_seed": params.seed,
        "use_cpu": device == "cpu",
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": [],
        "push_to_hub": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
