"""Supervised fine-tuning of a local causal LM on question/answer pairs, with transformers'
Trainer and, by default, LoRA adapters from peft (merged before saving, so serving loads one
plain checkpoint).

The examples are the closed-book or retrieval-augmented prompts of ``tuning.data.sft``.

A run writes checkpoints as it goes and resumes from the newest one; the model is saved into
a ``.partial`` folder and renamed into place when complete, so a half-written model is never
where a run's ``model_dir`` points.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.answering.generation.local import PLAIN_TEMPLATE, convert_gguf
from tuning.data.qa import QAPair
from tuning.data.sft import closed_book_example, encode_example, rag_example
from tuning.params import GeneratorParams
from tuning.training.run import ProgressCallback, ProgressFn, TrainingResult, common_arguments


class GeneratorTrainingError(RuntimeError):
    """A base model or data the run cannot use; nothing was saved."""


def training_examples(pairs: Sequence[QAPair], tokenizer: Any,
                      params: GeneratorParams) -> tuple[list[dict[str, list[int]]], int]:
    """Encoded examples of the recipe, and how many pairs could not be used."""
    rng = random.Random(params.seed)
    examples, skipped = [], 0
    for pair in pairs:
        made = rag_example(pair, pairs, params.distractors, rng, params.passage_words) \
            if params.recipe == "rag" else closed_book_example(pair)
        encoded = encode_example(tokenizer, *made, params.max_length) if made else None
        if encoded is None:
            skipped += 1
        else:
            examples.append(encoded)
    return examples, skipped


class PaddingCollator:
    """Right-pads a batch: ids with the pad token, labels with -100 (not learned)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [self.pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}


def checked_model_path(base: str | Path) -> Path:
    """``base`` if it is a checkpoint folder (with config.json) or a .gguf file."""
    path = Path(base).expanduser()
    if not (path.is_file() and path.suffix == ".gguf") and not (path / "config.json").is_file():
        raise GeneratorTrainingError(f"No model at {path}: give a checkpoint folder (with "
                                     "config.json) or a .gguf file.")
    return path


def model_directory(base: str | Path, cache_dir: Path) -> Path:
    """A checkpoint folder for ``base``: itself, or the one-time conversion of a GGUF file."""
    path = checked_model_path(base)
    return convert_gguf(path, cache_dir) if path.suffix == ".gguf" else path


def load_base(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
    return model, tokenizer


def _adapt(model: Any, params: GeneratorParams) -> Any:
    """LoRA adapters on ``target_modules``, or full fine-tuning above ``freeze_layers``."""
    if params.method == "lora":
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in params.target_modules if m not in names]
        if missing:
            raise GeneratorTrainingError(f"The model has no modules named {missing}; "
                                         "set target_modules (e.g. q_proj, v_proj).")
        return get_peft_model(model, LoraConfig(
            r=params.lora_rank, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
            target_modules=list(params.target_modules), task_type="CAUSAL_LM"))
    layers = model.get_decoder().layers
    if params.freeze_layers > len(layers):
        raise GeneratorTrainingError(f"freeze_layers is {params.freeze_layers} but the model "
                                     f"has {len(layers)} layers.")
    if params.freeze_layers:
        for module in [model.get_input_embeddings(), *layers[:params.freeze_layers]]:
            module.requires_grad_(False)
    return model


def newest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def train_generator(pairs: Sequence[QAPair], base: str | Path, out_dir: Path,
                    params: GeneratorParams, *, cache_dir: Path,
                    on_progress: ProgressFn | None = None,
                    save_steps: int = 50) -> TrainingResult:
    """Fine-tune ``base`` on ``pairs`` into ``out_dir`` (resuming the run's checkpoints)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    model, tokenizer = load_base(model_directory(base, cache_dir))
    examples, _ = training_examples(pairs, tokenizer, params)
    if not examples:
        raise GeneratorTrainingError(f"None of the {len(pairs)} pairs makes a {params.recipe} "
                                     "example (the rag recipe needs pairs with contexts).")
    model = _adapt(model, params)
    checkpoints = out_dir.with_name(out_dir.name + ".checkpoints")
    started = time.perf_counter()
    progress = ProgressCallback(on_progress)
    arguments = {**common_arguments(params, "cpu"), "output_dir": str(checkpoints),
                 "gradient_accumulation_steps": params.gradient_accumulation,
                 "lr_scheduler_type": params.scheduler, "save_strategy": "steps",
                 "save_steps": save_steps, "save_total_limit": 1}
    trainer = Trainer(model=model, args=TrainingArguments(**arguments),
                      train_dataset=examples,
                      data_collator=PaddingCollator(tokenizer.pad_token_id),
                      callbacks=[progress])
    trainer.remove_callback(PrinterCallback)  # progress goes to on_progress, not stdout
    trainer.train(resume_from_checkpoint=str(newest_checkpoint(checkpoints) or "") or None)
    trained = model.merge_and_unload() if params.method == "lora" else model
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trained.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    shutil.rmtree(checkpoints, ignore_errors=True)
    seconds = time.perf_counter() - started
    seen = trainer.state.global_step * params.batch_size * params.gradient_accumulation
    mean_tokens = sum(len(e["input_ids"]) for e in examples) / len(examples)
    return TrainingResult(steps=trainer.state.global_step, seconds=round(seconds, 1),
                          loss_curve=progress.loss_curve, train_pairs=len(examples),
                          tokens_per_second=round(seen * mean_tokens / max(seconds, 1e-9), 1))
