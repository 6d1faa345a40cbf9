"""What the training commands share: ``--set NAME=VALUE`` parsing, SIGTERM as Ctrl+C, and
a progress bar fed by a run's steps."""

from __future__ import annotations

import json
import signal

from django.core.management.base import CommandError
from tqdm import tqdm


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
