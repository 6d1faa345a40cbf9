"""One verifier cycle: labelled pairs from a claims dataset, train, judge every method side by
side on the held-out claims, record in the registry (promoted only through the gate)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from kms.store.models import Domain, ModelRun
from tuning import registry
from tuning.cycle import CycleError, OnStep, recording, run_guarded, tuning_options
from tuning.data.claims import (
    WindowSearch,
    contradiction_pairs,
    held_out_claims,
    labelled_pairs,
    read_abstracts,
    read_claims,
)
from tuning.evaluation.verification import (
    MethodScores,
    check_labeller,
    decide,
    model_labeller,
    score,
)
from tuning.params import VerifierParams
from tuning.training.verifier import train_verifier

KIND = ModelRun.Kind.VERIFIER
CHECKS = ("lexical", "embedding")


def new_verifier_run(domain: Domain, dataset_dir: Path, params: dict | None = None) -> ModelRun:
    """A queued verifier run; the dataset and parameters are checked before it is queued."""
    options = {**tuning_options(domain).get(KIND, {}), **(params or {})}
    checked = VerifierParams.from_options(options)
    read_claims(dataset_dir)  # ClaimsError now, not in a worker later
    return registry.start_run(domain, KIND, base_model=str(settings.KMS_EMBEDDING_MODEL),
                              params=checked.as_dict(),
                              data_options={"dataset_dir": str(Path(dataset_dir).resolve())})


def run_verifier_cycle(run: ModelRun, *, on_step: OnStep | None = None,
                       on_stage: Callable[[str], None] | None = None) -> ModelRun:
    say = on_stage or (lambda _: None)
    return run_guarded(run, lambda: _train_and_judge(run, on_step, say))


def _train_and_judge(run: ModelRun, on_step: OnStep | None,
                     say: Callable[[str], None]) -> ModelRun:
    params = VerifierParams.from_options(run.params)
    dataset = Path(run.data_options.get("dataset_dir") or "")
    claims, abstracts = read_claims(dataset), read_abstracts(dataset)
    train, held = held_out_claims(claims, params.held_out)  # the same split for every run
    if not held:
        raise CycleError(f"No held-out claims among {len(claims)}: raise held_out.")
    say(f"Pairs from {len(train)} training and {len(held)} held-out claims")
    search = WindowSearch(abstracts, params.window)
    train_pairs = labelled_pairs(train, abstracts, window=params.window, copied=True,
                                 seed=params.seed, search=search)
    held_pairs = labelled_pairs(held, abstracts, window=params.window, seed=params.seed,
                                search=search)
    made_false = contradiction_pairs(held_pairs)
    contradictions = [pair for pair, _ in made_false]
    step = recording(run, on_step)
    say(f"Training the verifier on {len(train_pairs)} pairs")
    output = registry.run_directory(run)
    started = time.perf_counter()
    result = train_verifier(Path(run.base_model), train_pairs, params, output, step)
    training_seconds = round(time.perf_counter() - started, 1)
    say(f"Judging every method on {len(held_pairs)} held-out pairs and "
        f"{len(contradictions)} contradictions")
    candidate = score("verifier", model_labeller(output), held_pairs, contradictions)
    checks = {method: score(method, check_labeller(method), held_pairs, contradictions)
              for method in CHECKS}
    served = _served_scores(run.domain, checks, held_pairs, contradictions)
    gate = decide(candidate, served, [row for row in checks.values() if row is not served])
    counts = {
        "train_claims": len(train), "held_out_claims": len(held),
        "train_pairs": _by_kind(train_pairs), "held_out_pairs": _by_kind(held_pairs),
        "contradictions": dict(Counter(rule for _, rule in made_false)),
        "steps": result.steps, "training_seconds": training_seconds,
    }
    registry.finish(run, model_dir=output, data_counts=counts, loss_curve=result.loss_curve,
                    metrics=gate.as_dict(), passed=gate.passed)
    run.refresh_from_db()
    return run


def _served_scores(domain: Domain, checks: dict[str, MethodScores], held_pairs,
                   contradictions) -> MethodScores:
    """What serves now: the promoted verifier if there is one, else the configured check."""
    served = registry.served_run(domain, KIND)
    if served is not None and registry.files_present(served):
        return score(f"verifier run {served.pk}", model_labeller(Path(served.model_dir)),
                     held_pairs, contradictions)
    return checks.get(settings.KMS_VERIFY_METHOD, checks["lexical"])


def _by_kind(pairs) -> dict[str, int]:
    return dict(Counter(f"{pair.kind}/{pair.label}" for pair in pairs))
