"""Hyper-parameters of a fine-tuning run, validated before any model is loaded.

A run is started from options a person typed (an admin form, a command line), so every value
is checked up front: a typo in a key or a learning rate of 3 fails at once with the allowed
range, not an hour into training. The defaults are the recipe measured best on SciFact (BEIR) on a
2-core CPU; ``max_steps`` bounds a run (tests take a few steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
EMBEDDER_LOSSES = ("mnrl", "cached_mnrl")


def _number(low: float, high: float, *, integer: bool = False, low_open: bool = False):
    """A range check for ``field(metadata=...)``: returns an error text, or None if valid."""
    left = "(" if low_open else "["
    kind = "an integer" if integer else "a number"
    bounds = f"{low:,}, {high:,}" if integer else f"{low:g}, {high:g}"
    allowed = f"{kind} in {left}{bounds}]"

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return allowed
        if integer and not isinstance(value, int):
            return allowed
        if value > high or value < low or (low_open and value == low):
            return allowed
        return None

    return check


def _choice(options: tuple[str, ...]):
    def check(value: Any) -> str | None:
        return None if value in options else f"one of {', '.join(options)}"

    return check


def _optional(inner):
    def check(value: Any) -> str | None:
        error = None if value is None else inner(value)
        return None if error is None else f"None or {error}"

    return check


def _option(default: Any, check) -> Any:
    return field(default=default, metadata={"check": check})


class _Params:
    """Shared ``from_options``/``as_dict`` of the parameter dataclasses."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        """The defaults overridden by ``options``; ValueError naming the key and the allowed
        values for an unknown key or a bad value."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in options:
            if key not in fields:
                raise ValueError(f"unknown option {key!r}; allowed: {', '.join(fields)}")
        return cls(**dict(options))

    def validate(self) -> None:
        """ValueError for the first field outside its allowed range."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            error = f.metadata["check"](value)
            if error is not None:
                raise ValueError(f"{f.name} must be {error}; got {value!r}")
        self._check_together()

    def _check_together(self) -> None:
        """Constraints between fields (none by default)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain values, e.g. to store with the trained model for reproducibility."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class EmbedderParams(_Params):
    """How the bi-encoder is fine-tuned (MultipleNegativesRankingLoss and its cached form)."""

    learning_rate: float = _option(5e-5, _number(0.0, 1e-3, low_open=True))
    batch_size: int = _option(32, _number(2, 4096, integer=True))
    # SciFact, 1,342 pairs: a second epoch took the held-out gain from +1.0 to +4.6 nDCG@10.
    epochs: int = _option(2, _number(1, 20, integer=True))
    warmup_ratio: float = _option(0.1, _number(0.0, 0.5))
    scheduler: str = _option("linear", _choice(SCHEDULERS))
    # Training truncation only (the saved model keeps the base model's length): 128 tokens
    # halve the cost of a step on a CPU; freezing the embeddings and 2 layers saves more.
    max_seq_length: int = _option(128, _number(16, 512, integer=True))
    freeze_layers: int = _option(2, _number(0, 48, integer=True))
    loss: str = _option("mnrl", _choice(EMBEDDER_LOSSES))
    # Rows per forward pass of cached MNRL: memory, not results, depends on it.
    mini_batch_size: int = _option(32, _number(1, 1024, integer=True))
    hard_negatives: int = _option(1, _number(0, 8, integer=True))
    max_steps: int | None = _option(None, _optional(_number(1, 1_000_000, integer=True)))
    seed: int = _option(13, _number(0, 2**32 - 1, integer=True))

    def __post_init__(self) -> None:
        self.validate()


@dataclass(frozen=True)
class RerankerParams(_Params):
    """How the cross-encoder reranker is trained (binary cross-entropy on labelled pairs)."""

    # Measured on SciFact's held-out queries: 1e-4 for 2 epochs with one hard and one random
    # negative learns (+1.4 nDCG@10); 5e-5 for 1 epoch with two hard ones stays at chance.
    learning_rate: float = _option(1e-4, _number(0.0, 1e-3, low_open=True))
    batch_size: int = _option(16, _number(1, 1024, integer=True))
    epochs: int = _option(2, _number(1, 20, integer=True))
    warmup_ratio: float = _option(0.1, _number(0.0, 0.5))
    # Also the serving length: each pair costs ~85 ms at 128 tokens on 2 CPU cores.
    max_length: int = _option(128, _number(16, 512, integer=True))
    hard_negatives: int = _option(1, _number(0, 32, integer=True))
    random_negatives: int = _option(1, _number(0, 32, integer=True))
    max_steps: int | None = _option(None, _optional(_number(1, 1_000_000, integer=True)))
    seed: int = _option(13, _number(0, 2**32 - 1, integer=True))

    def __post_init__(self) -> None:
        self.validate()

    def _check_together(self) -> None:
        if self.negatives == 0:
            raise ValueError("hard_negatives + random_negatives must be at least 1: a reranker "
                             "trained on positives alone learns that every passage is relevant")

    @property
    def negatives(self) -> int:
        """Negatives per positive, hard and random together."""
        return self.hard_negatives + self.random_negatives


@dataclass(frozen=True)
class VerifierParams(_Params):
    """How the citation-support verifier is trained: a three-label cross-encoder
    (supports / contradicts / not enough information), class-weighted cross-entropy."""

    learning_rate: float = _option(1e-4, _number(0.0, 1e-3, low_open=True))
    batch_size: int = _option(16, _number(1, 1024, integer=True))
    epochs: int = _option(3, _number(1, 20, integer=True))
    warmup_ratio: float = _option(0.1, _number(0.0, 0.5))
    # A claim and a window of three sentences: 75 words on average, 256 at most in SciFact.
    max_length: int = _option(256, _number(32, 512, integer=True))
    window: int = _option(3, _number(1, 10, integer=True))  # sentences per passage
    held_out: float = _option(0.2, _number(0.05, 0.5))  # share of the claims, never trained on
    max_steps: int | None = _option(None, _optional(_number(1, 1_000_000, integer=True)))
    seed: int = _option(13, _number(0, 2**32 - 1, integer=True))

    def __post_init__(self) -> None:
        self.validate()


GENERATOR_METHODS = ("lora", "full")
GENERATOR_RECIPES = ("closed_book", "rag")


def _names(value: Any) -> str | None:
    if isinstance(value, list | tuple) and value and all(
            isinstance(v, str) and v.strip() for v in value):
        return None
    return "a non-empty list of module names (e.g. q_proj, v_proj)"


@dataclass(frozen=True)
class GeneratorParams(_Params):
    """How a local causal LM is fine-tuned on a domain's question/answer pairs: LoRA
    adapters (merged into the saved model, so serving loads one plain checkpoint) or full
    fine-tuning with the lowest ``freeze_layers`` frozen. ``recipe`` is closed-book
    (question to answer) or retrieval-augmented (question and passages, some of them
    distractors, to an answer citing the right one, RAFT-style)."""

    learning_rate: float = _option(2e-4, _number(0.0, 1e-2, low_open=True))
    batch_size: int = _option(4, _number(1, 256, integer=True))
    gradient_accumulation: int = _option(4, _number(1, 256, integer=True))
    epochs: int = _option(2, _number(1, 20, integer=True))
    warmup_ratio: float = _option(0.05, _number(0.0, 0.5))
    scheduler: str = _option("cosine", _choice(SCHEDULERS))
    # The serving prompt's rules alone are ~400 tokens; with two passages, ~800.
    max_length: int = _option(1024, _number(32, 4096, integer=True))
    method: str = _option("lora", _choice(GENERATOR_METHODS))
    lora_rank: int = _option(8, _number(1, 256, integer=True))
    lora_alpha: int = _option(16, _number(1, 1024, integer=True))
    lora_dropout: float = _option(0.05, _number(0.0, 0.5))
    target_modules: tuple[str, ...] = _option(("q_proj", "v_proj"), _names)
    freeze_layers: int = _option(0, _number(0, 128, integer=True))
    recipe: str = _option("rag", _choice(GENERATOR_RECIPES))
    distractors: int = _option(1, _number(0, 8, integer=True))
    # Each passage of a rag example, in words: about a served chunk (KMS_CHUNK_TOKENS 200).
    passage_words: int = _option(120, _number(20, 2000, integer=True))
    held_out: float = _option(0.1, _number(0.0, 0.5))  # share of the pairs, never trained on
    # The gate judges at most this many held-out pairs (a forward pass each, ~1 s on CPU).
    gate_pairs: int = _option(200, _number(1, 100_000, integer=True))
    max_steps: int | None = _option(None, _optional(_number(1, 1_000_000, integer=True)))
    seed: int = _option(13, _number(0, 2**32 - 1, integer=True))

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # options come as JSON lists
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        self.validate()
