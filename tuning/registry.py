"""The model registry: runs of a domain's models, and the services that move them.

``start_run`` is single-flight per domain and kind (a database constraint, not a lock file),
``promote`` serves a run (for an embedder: its space is filled beside the served one and
search switches when it is complete), ``roll_back`` restores the run promoted before it or
the base model. Nothing here trains; ``tuning.cycle`` does.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from kms.store import model_files
from kms.store.models import Domain, EmbeddingSpace, ModelRun
from search.ingestion import signals, spaces
from search.ingestion.embedding import Embedder

logger = logging.getLogger(__name__)

ACTIVE = (ModelRun.State.QUEUED, ModelRun.State.TRAINING)


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why and what to do."""


def run_directory(run: ModelRun) -> Path:
    return Path(settings.KMS_MODELS_DIR) / run.domain.slug / f"{run.kind}-{run.pk}"


def start_run(domain: Domain, kind: str, *, base_model: str, params: dict,
              data_options: dict) -> ModelRun:
    """A queued run; RegistryError if one of this domain and kind is already under way."""
    try:
        with transaction.atomic():
            return ModelRun.objects.create(domain=domain, kind=kind, base_model=base_model,
                                           params=params, data_options=data_options)
    except IntegrityError:
        running = ModelRun.objects.filter(domain=domain, kind=kind, state__in=ACTIVE).first()
        raise RegistryError(
            f"A {kind} run for {domain.slug} is already {running.state if running else 'busy'}"
            f" (run {running.pk if running else '?'}); wait for it or mark it failed."
        ) from None


def begin_training(run: ModelRun, total_steps: int = 0) -> bool:
    """Claim a queued run for training; False if it is no longer queued.

    A run found *training* without a recent heartbeat is one whose worker was killed (its
    message came back): it is marked failed with that reason rather than silently trained
    again. With a recent heartbeat it is still training (the broker redelivered a long task).
    """
    with transaction.atomic():
        current = ModelRun.objects.select_for_update().get(pk=run.pk)
        if current.state == ModelRun.State.TRAINING:
            quiet = timezone.now() - (current.heartbeat_at or current.started_at)
            if quiet < timedelta(seconds=settings.KMS_TUNING_HEARTBEAT_SECONDS):
                return False  # a duplicate delivery while its worker still trains it
            _fail(current, "The worker training this run stopped (killed or lost) at step "
                  f"{current.progress_step}/{current.progress_total}. Start a new run.")
            return False
        if current.state != ModelRun.State.QUEUED:
            return False
        now = timezone.now()
        ModelRun.objects.filter(pk=run.pk).update(
            state=ModelRun.State.TRAINING, started_at=now, heartbeat_at=now,
            progress_total=total_steps)
    run.refresh_from_db()
    return True


def record_progress(run: ModelRun, step: int, total: int, loss: float | None) -> None:
    """The run's progress and loss curve, and a heartbeat that says its worker is alive."""
    if loss is not None:
        run.loss_curve = [*run.loss_curve, [step, round(float(loss), 6)]]
    run.progress_step, run.progress_total = step, total
    run.heartbeat_at = timezone.now()
    ModelRun.objects.filter(pk=run.pk).update(
        progress_step=step, progress_total=total, heartbeat_at=run.heartbeat_at,
        loss_curve=run.loss_curve)


def finish(run: ModelRun, *, model_dir: Path, data_counts: dict, loss_curve: list,
           metrics: dict, passed: bool, space: EmbeddingSpace | None = None) -> ModelRun:
    """Record a trained run with the gate's numbers: promoted when it passed, else rejected."""
    run.model_dir, run.data_counts, run.metrics, run.space = str(model_dir), data_counts, \
        metrics, space
    run.loss_curve = [list(point) for point in loss_curve] or run.loss_curve
    run.finished_at = timezone.now()
    run.message = "" if passed else metrics.get("reason", "Did not beat the served model.")
    fields = ["model_dir", "data_counts", "metrics", "space", "loss_curve", "finished_at",
              "message"]
    if not passed:
        run.state = ModelRun.State.REJECTED
        fields.append("state")
    run.save(update_fields=fields)
    _publish(run)  # before promotion: any node may then serve it
    if passed:  # still *training* until it is served: nobody sees it rejected in between
        try:
            promote(run, judged=True)
        except Exception as exc:
            logger.exception("Run %s passed the gate but was not promoted", run.pk)
            ModelRun.objects.filter(pk=run.pk).update(
                state=ModelRun.State.REJECTED,
                message=f"Passed the gate but could not be promoted: {exc}"[:4000])
            raise
    return run


def _publish(run: ModelRun) -> bool:
    """Share the run's files through the model store; a failure is noted on the run (its
    files are fine here, and promoting it again publishes them), never fatal."""
    try:
        model_files.publish(Path(run.model_dir))
    except Exception as exc:  # the store's errors: OSError, botocore, ...
        logger.warning("Run %s not published to the model store: %s", run.pk, exc)
        note = f" Not published to the model store ({exc}); promoting it retries."
        run.message = (run.message + note).strip()[:4000]
        ModelRun.objects.filter(pk=run.pk).update(message=run.message)
        return False
    return True


def publish_runs(runs) -> tuple[int, int]:
    """Publish the runs whose files are on this node (an upgrade, a store that was down);
    returns (published, skipped)."""
    published = skipped = 0
    for run in runs:
        if run.model_dir and model_files.present(Path(run.model_dir)) and _publish(run):
            published += 1
        else:
            skipped += 1
    return published, skipped


def fail(run: ModelRun, message: str) -> None:
    with transaction.atomic():
        current = ModelRun.objects.select_for_update().get(pk=run.pk)
        if current.state in ACTIVE:
            _fail(current, message)


def _fail(run: ModelRun, message: str) -> None:
    logger.warning("Model run %s failed: %s", run.pk, message)
    ModelRun.objects.filter(pk=run.pk).update(
        state=ModelRun.State.FAILED, message=message[:4000], finished_at=timezone.now())


def fail_lost_runs(older_than_seconds: int) -> int:
    """Runs whose worker stopped sending heartbeats (killed, lost message): failed."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    lost = ModelRun.objects.filter(state=ModelRun.State.TRAINING, heartbeat_at__lt=cutoff)
    count = 0
    for run in lost:
        fail(run, f"No progress from its worker for {older_than_seconds} s (killed or lost). "
             "Start a new run.")
        count += 1
    return count


def promote(run: ModelRun, *, judged: bool = False) -> None:
    """Serve ``run``; the run it replaces is retired (and can be restored by roll back).

    A curator may promote a rejected or retired run; ``judged``: the gate just passed it.
    """
    check_files(run)
    if not judged and model_files.storage_name(Path(run.model_dir)) is not None:
        _publish(run)  # a curator's promotion: make sure every node can fetch it
    if run.kind == ModelRun.Kind.EMBEDDER and run.space_id is None:
        embedder = Embedder(Path(run.model_dir), settings.KMS_EMBEDDING_BACKEND)
        run.space = spaces.space_of(embedder)
        ModelRun.objects.filter(pk=run.pk).update(space=run.space)
    with transaction.atomic():
        run = ModelRun.objects.select_for_update().get(pk=run.pk)
        allowed = (ModelRun.State.REJECTED, ModelRun.State.RETIRED)
        if run.state not in (*allowed, *((ModelRun.State.TRAINING,) if judged else ())):
            raise RegistryError(f"Run {run.pk} is {run.state}; only a trained run can be "
                                "promoted.")
        ModelRun.objects.filter(domain=run.domain, kind=run.kind,
                                state=ModelRun.State.PROMOTED).update(
            state=ModelRun.State.RETIRED)
        run.state, run.promoted_at = ModelRun.State.PROMOTED, timezone.now()
        run.save(update_fields=["state", "promoted_at"])
        if run.kind == ModelRun.Kind.EMBEDDER:
            _serve_space(run.domain, run.space)
    logger.info("Promoted %s", run)


def roll_back(domain: Domain, kind: str) -> ModelRun | None:
    """Stop serving the promoted run: the one promoted before it (or the base model) serves
    again. An embedder's old vectors are still there, so search switches back at once
    (only chunks that arrived since need vectors). Returns the run now served, if any."""
    with transaction.atomic():
        current = (ModelRun.objects.select_for_update()
                   .filter(domain=domain, kind=kind, state=ModelRun.State.PROMOTED).first())
        if current is None:
            raise RegistryError(f"No promoted {kind} for {domain.slug} to roll back.")
        current.state = ModelRun.State.RETIRED
        current.message = f"Rolled back {timezone.now():%Y-%m-%d %H:%M}."
        current.save(update_fields=["state", "message"])
        previous = (ModelRun.objects.filter(domain=domain, kind=kind,
                                            state=ModelRun.State.RETIRED,
                                            promoted_at__lt=current.promoted_at)
                    .exclude(pk=current.pk).order_by("-promoted_at").first())
        if previous is not None and not files_present(previous):
            previous = None
        if previous is not None:
            previous.state = ModelRun.State.PROMOTED
            previous.save(update_fields=["state"])
        if kind == ModelRun.Kind.EMBEDDER:
            _serve_space(domain, previous.space if previous else spaces.default_space())
    return previous


def _serve_space(domain: Domain, space: EmbeddingSpace | None) -> None:
    """Start the switch to ``space``; switch at once when every served chunk has a vector."""
    if space is None:
        raise RegistryError("This embedder run has no embedding space; train it again.")
    if spaces.begin_switch(domain, space):
        transaction.on_commit(lambda: _complete_switch(domain.pk))


def _complete_switch(domain_id: int) -> None:
    domain = Domain.objects.get(pk=domain_id)
    if not spaces.switch_if_complete(domain):
        signals.send_on_commit(signals.space_requested, domain_id=domain_id)


def check_files(run: ModelRun) -> None:
    if not files_present(run):
        raise RegistryError(f"The files of run {run.pk} are missing from {run.model_dir}; "
                            "train a new run.")


def files_present(run: ModelRun) -> bool:
    """The run's files are on this node, fetched from the model store if need be."""
    try:
        return bool(run.model_dir) and model_files.ensure_local(Path(run.model_dir))
    except model_files.ModelFilesUnavailable as exc:
        logger.warning("%s", exc)
        return False


def served_run(domain: Domain, kind: str) -> ModelRun | None:
    return ModelRun.objects.filter(domain=domain, kind=kind,
                                   state=ModelRun.State.PROMOTED).first()

