"""The prompts a generator is fine-tuned and judged on, and their token ids.

*Closed-book*: the question alone, to the answer. *Retrieval-augmented* (RAFT-style): the
question with the passage that holds its answer among distractors from other pairs, in the
very prompt serving builds (``search.answering.prompting.build_request``), to the answer
citing the right passage with ``[n]``. Only the answer's tokens are learned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search.answering.generation.local import encode_chat
from search.answering.prompting import build_request
from tuning.data.qa import QAPair

CLOSED_BOOK_PROMPT = (
    "You answer questions about this domain from what you know. When the question asks "
    "for a decision, open with Yes, No or Maybe; then explain in one or two sentences.")


@dataclass(frozen=True)
class TrainingPassage:
    """A passage of a training prompt, numbered as the answer cites it."""

    number: int
    title: str
    text: str


def answer_text(pair: QAPair) -> str:
    """What the model learns to write: the decision first (so its first token can be scored
    by the label words' probabilities), then the answer."""
    lead = f"{pair.decision.capitalize()}. " if pair.decision else ""
    return lead + pair.answer


def closed_book_example(pair: QAPair) -> tuple[list[dict[str, str]], str]:
    return ([{"role": "system", "content": CLOSED_BOOK_PROMPT},
             {"role": "user", "content": pair.question}], answer_text(pair))


def best_window(text: str, answer: str, words: int) -> str:
    """The ``words``-word window of ``text`` sharing most words with ``answer``: a passage
    the size of a served chunk, where the answer's evidence is."""
    tokens = text.split()
    if len(tokens) <= words:
        return text
    wanted = {w.lower().strip(".,;:()") for w in answer.split()}
    starts = range(0, len(tokens) - words + 1, max(1, words // 2))
    best = max(starts, key=lambda s: sum(t.lower().strip(".,;:()") in wanted
                                         for t in tokens[s:s + words]))
    return " ".join(tokens[best:best + words])


def rag_example(pair: QAPair, others: Sequence[QAPair], distractors: int,
                rng: random.Random, passage_words: int = 120,
                ) -> tuple[list[dict[str, str]], str] | None:
    """The serving prompt with the pair's passage and ``distractors`` others (each a
    chunk-sized window), shuffled; the target cites the right one. None for a pair without
    contexts."""
    if not pair.contexts:
        return None
    pool = [o for o in others if o.contexts and o.id != pair.id]
    texts = [(best_window(" ".join(pair.contexts), pair.answer, passage_words), True)] + [
        (best_window(" ".join(o.contexts), o.question, passage_words), False)
        for o in rng.sample(pool, min(distractors, len(pool)))]
    rng.shuffle(texts)
    passages = [TrainingPassage(n, f"Source {n}", text) for n, (text, _) in enumerate(texts, 1)]
    oracle = next(n for n, (_, right) in enumerate(texts, 1) if right)
    request = build_request(pair.question, passages)
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    return messages, f"{answer_text(pair)} [{oracle}]"


def encode_example(tokenizer: Any, messages: list[dict[str, str]], target: str,
                   max_length: int) -> dict[str, list[int]] | None:
    """Prompt and answer ids, the prompt masked out of the loss; None when the prompt alone
    leaves no room for the answer."""
    prompt = encode_chat(tokenizer, messages)
    answer = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
    room = max_length - len(prompt)
    if room < min(16, len(answer)):
        return None
    answer = answer[:room]
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


