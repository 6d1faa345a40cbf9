"""Selector: the fine-tuned generator a domain serves (its promoted run), if any."""

from __future__ import annotations

from pathlib import Path

from kms.store.models import Domain, ModelRun


def served_generator(domain: str | Domain) -> Path | None:
    """The model directory of the domain's promoted generator, or None (the base model)."""
    runs = ModelRun.objects.filter(kind=ModelRun.Kind.GENERATOR, state=ModelRun.State.PROMOTED)
    runs = runs.filter(domain=domain) if isinstance(domain, Domain) else runs.filter(
        domain__slug=domain)
    run = runs.only("model_dir").first()
    return Path(run.model_dir) if run is not None and run.model_dir else None
