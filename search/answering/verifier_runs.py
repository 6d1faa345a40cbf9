"""Selectors: which trained models' files serve a domain (verifier, generator), or an
evaluation.

Apart from :mod:`~search.answering.support_model` so that loading and classifying need no
database (the trainers import its labels).
"""

from __future__ import annotations

from pathlib import Path

from kms.store.models import Domain, ModelRun
from search.answering.support_model import VerifierUnavailable


def promoted_directory(domain: str | Domain, kind: str) -> Path | None:
    """The model directory of the domain's promoted run of ``kind``, or None."""
    runs = ModelRun.objects.filter(kind=kind, state=ModelRun.State.PROMOTED)
    runs = runs.filter(domain=domain) if isinstance(domain, Domain) else runs.filter(
        domain__slug=domain)
    run = runs.only("model_dir").first()
    return Path(run.model_dir) if run is not None and run.model_dir else None


def served_verifier(domain: str | Domain) -> Path | None:
    return promoted_directory(domain, ModelRun.Kind.VERIFIER)


def served_generator(domain: str | Domain) -> Path | None:
    """The domain's promoted fine-tuned generator, or None (the base model serves)."""
    return promoted_directory(domain, ModelRun.Kind.GENERATOR)


def verifier_directory(choice: str | None = None) -> tuple[Path | None, str]:
    """A verifier directory for evaluation and its description: ``choice`` is a run id or a
    directory; without one, the newest promoted verifier of any domain (None if there is
    none). Raises VerifierUnavailable for a choice that names nothing."""
    runs = ModelRun.objects.filter(kind=ModelRun.Kind.VERIFIER).exclude(model_dir="")
    if choice and choice.isdigit():
        run = runs.filter(pk=int(choice)).first()
        if run is None:
            raise VerifierUnavailable(f"No trained verifier run {choice}.")
        return Path(run.model_dir), f"verifier run {run.pk} ({run.get_state_display()})"
    if choice:
        if not Path(choice).is_dir():
            raise VerifierUnavailable(f"No verifier directory at {choice}.")
        return Path(choice), f"verifier at {choice}"
    run = runs.filter(state=ModelRun.State.PROMOTED).order_by("-promoted_at").first()
    if run is None:
        return None, "no verifier (none promoted)"
    return Path(run.model_dir), f"verifier run {run.pk} (promoted for {run.domain.slug})"
