"""One generator cycle: question/answer pairs (a dataset file or the domain's curated pairs),
fine-tune, judge candidate and served model on the held-out pairs, record in the registry
(promoted only through the gate). The served model is the domain's promoted generator, or
the base model the run started from."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from kms.store.models import Domain, ModelRun
from search.answering.generation.local import conversion_cache_dir, default_gguf_path
from tuning import registry
from tuning.cycle import OnStep, recording, run_guarded, tuning_options
from tuning.data.qa import QAPair, check_enough, curated_pairs, held_out, read_pairs
from tuning.evaluation.generation import GeneratorScores, decide, score_generator
from tuning.params import GeneratorParams
from tuning.training.generator import (
    checked_model_path,
    load_base,
    model_directory,
    train_generator,
)

KIND = ModelRun.Kind.GENERATOR


def base_model(choice: str | Path | None = None) -> str:
    """The model a run starts from: ``choice``, KMS_GENERATOR_MODEL, or SmolLM2's GGUF."""
    return str(checked_model_path(choice or settings.KMS_GENERATOR_MODEL
                                  or default_gguf_path()).resolve())


def pairs_for(domain: Domain, dataset: str | None) -> list[QAPair]:
    return read_pairs(Path(dataset)) if dataset else curated_pairs(domain)


def new_generator_run(domain: Domain, *, dataset: Path | None = None,
                      base: str | Path | None = None, params: dict | None = None) -> ModelRun:
    """A queued run; parameters, dataset, pair count and base model are checked first, so
    a mistake is an error now and not in a worker later."""
    options = {**tuning_options(domain).get(KIND, {}), **(params or {})}
    checked = GeneratorParams.from_options(options)
    source = str(Path(dataset).resolve()) if dataset else None
    check_enough(*held_out(pairs_for(domain, source), checked.held_out))
    return registry.start_run(domain, KIND, base_model=base_model(base),
                              params=checked.as_dict(), data_options={"dataset": source})


def run_generator_cycle(run: ModelRun, *, on_step: OnStep | None = None,
                        on_stage: Callable[[str], None] | None = None) -> ModelRun:
    say = on_stage or (lambda _: None)
    return run_guarded(run, lambda: _train_and_judge(run, on_step, say))


def _train_and_judge(run: ModelRun, on_step: OnStep | None,
                     say: Callable[[str], None]) -> ModelRun:
    params = GeneratorParams.from_options(run.params)
    train, held = held_out(pairs_for(run.domain, run.data_options.get("dataset")),
                           params.held_out)
    check_enough(train, held)
    held = held[:params.gate_pairs]
    output = registry.run_directory(run)
    say(f"Fine-tuning {Path(run.base_model).name} ({params.method}, {params.recipe}) on "
        f"{len(train)} pairs")
    started = time.perf_counter()
    result = train_generator(train, run.base_model, output, params,
                             cache_dir=conversion_cache_dir(), on_progress=recording(run, on_step))
    seconds = round(time.perf_counter() - started, 1)
    say(f"Judging it and the served model on {len(held)} held-out pairs")
    candidate = _scores(f"run {run.pk}", output, held, params)
    served_run = registry.served_run(run.domain, KIND)
    if served_run is not None and registry.files_present(served_run):
        served = _scores(f"run {served_run.pk}", Path(served_run.model_dir), held, params)
    else:
        served = _scores("base model", model_directory(run.base_model, conversion_cache_dir()),
                         held, params)
    gate = decide(candidate, served, tuning_options(run.domain).get(
        "gate_margin", settings.KMS_GENERATOR_GATE_MARGIN))
    counts = {"train_pairs": len(train), "held_out_pairs": len(held),
              "examples": result.train_pairs, "steps": result.steps,
              "training_seconds": seconds, "tokens_per_second": result.tokens_per_second}
    registry.finish(run, model_dir=output, data_counts=counts, loss_curve=result.loss_curve,
                    metrics=gate.as_dict(), passed=gate.passed)
    run.refresh_from_db()
    return run


def _scores(name: str, directory: Path, held: list[QAPair],
            params: GeneratorParams) -> GeneratorScores:
    model, tokenizer = load_base(directory)
    return score_generator(name, model, tokenizer, held, params.recipe, params.seed,
                           params.distractors, params.passage_words)
