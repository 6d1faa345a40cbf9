"""The interface every generator backend implements.

The answer pipeline builds the messages (numbered passages, rules, question); a backend only
turns messages into text, streamed token by token so callers can show progress.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

# What a backend answers when the passages do not answer the question (the prompt's rule 3).
NO_ANSWER = "The knowledge base does not answer this question."


class GeneratorError(RuntimeError):
    """A backend could not produce text; the message names the backend and what to do."""


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Passage:
    """A retrieved passage as the prompt numbers it: the answer cites it as ``[number]``."""

    number: int
    text: str
    title: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, reproducible answers
    stop: tuple[str, ...] = ()
    # The question and passages behind ``messages``, for backends that work on them directly
    # (the extractive backend) rather than on the prompt text.
    question: str = ""
    passages: tuple[Passage, ...] = ()


class Generator(Protocol):
    name: str

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as they are produced; raises GeneratorError on failure."""
        ...


def generate(generator: Generator, request: GenerationRequest) -> str:
    """The whole text at once (joins the stream)."""
    return "".join(generator.stream(request))
