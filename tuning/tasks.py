"""Celery tasks of the models queue: thin wrappers around ``tuning.cycle``.

``train_run`` is acknowledged late: a worker killed mid-run hands the message back, and the
run it finds still *training* is failed with that reason (``registry.begin_training``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from kms.store.models import Domain, ModelRun
from tuning import cycle, generator_cycle, registry, verifier_cycle

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def train_run(run_id: int) -> str:
    run = ModelRun.objects.select_related("domain").filter(pk=run_id).first()
    if run is None:
        return "gone"
    try:
        if run.kind == ModelRun.Kind.VERIFIER:
            run = verifier_cycle.run_verifier_cycle(run)
        elif run.kind == ModelRun.Kind.GENERATOR:
            run = generator_cycle.run_generator_cycle(run)
        else:
            options = cycle.DataOptions.for_domain(run.domain, **cycle.stored_options(run))
            run = cycle.run_cycle(run, options)
    except Exception:  # recorded on the run by run_cycle
        logger.exception("Model run %s failed", run_id)
        return "failed"
    return run.state


@shared_task
def tune_due_domains() -> int:
    """Periodic: start the cycles of domains whose tuning is due (``Domain.options``
    ``{"tuning": {"every_days": N, "kinds": [...]}}``), and fail runs whose worker is lost."""
    registry.fail_lost_runs(settings.KMS_TUNING_LOST_AFTER_SECONDS)
    started = 0
    for domain in Domain.objects.all():
        options = cycle.tuning_options(domain)
        every = options.get("every_days")
        if not every:
            continue
        for kind in options.get("kinds", [ModelRun.Kind.EMBEDDER, ModelRun.Kind.RERANKER]):
            last = ModelRun.objects.filter(domain=domain, kind=kind).first()
            if last and last.created_at > timezone.now() - timedelta(days=every):
                continue
            try:
                run = cycle.new_run(domain, kind)
            except (registry.RegistryError, cycle.CycleError) as exc:
                logger.warning("Not tuning %s %s: %s", domain.slug, kind, exc)
                continue
            train_run.delay(run.pk)
            started += 1
    return started
