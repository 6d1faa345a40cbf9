"""What the training commands share: ``--set NAME=VALUE`` parsing, training in the foreground
with a progress bar (SIGTERM as Ctrl+C) or on the models queue."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kms.store.models import ModelRun
from tuning.cycle import OnStep


def parameter(item: str) -> tuple[str, object]:
    """``lr=1e-4`` -> ("lr", 0.0001): JSON values where they parse, else the text."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise CommandError(f"--set takes NAME=VALUE; got {item!r}.")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Stopping the command fails its run instead of leaving it training forever."""
    signal.signal(signal.SIGTERM, _interrupt)


def train_here_or_queue(
    command: BaseCommand, run: ModelRun, queue: bool,
    train: Callable[[OnStep, Callable[[str], None]], ModelRun],
    errors: tuple[type[Exception], ...],
) -> ModelRun | None:
    """``--queue``: hand the run to the models queue's worker (None). Else ``train(on_step,
    on_stage)`` here with a progress bar; ``errors`` and interruptions become a
    CommandError naming the run, which the cycle has marked failed."""
    if queue:
        from tuning.tasks import train_run

        train_run.delay(run.pk)
        command.stdout.write("Queued on the models queue; follow it in the admin (Model runs).")
        return None
    bar = StepBar()
    stop_on_sigterm()
    try:
        return train(bar.on_step, bar.say)
    except errors as exc:
        raise CommandError(f"{exc} (run {run.pk} is marked failed)") from exc
    except KeyboardInterrupt:
        raise CommandError(f"Interrupted; run {run.pk} is marked failed.") from None
    finally:
        bar.close()


class StepBar:
    """A tqdm bar driven by ``on_step(step, total, loss)``; ``say`` writes above it."""

    def __init__(self, desc: str = "Training") -> None:
        self.bar = tqdm(unit="step", desc=desc, dynamic_ncols=True)

    def on_step(self, step: int, total: int, loss: float | None) -> None:
        self.bar.total = total
        self.bar.n = step
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
        self.bar.refresh()

    def say(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
