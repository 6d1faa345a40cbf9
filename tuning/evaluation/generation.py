"""How well a generator answers held-out pairs, scored from its probabilities: the decision
it gives (the label word it finds likeliest as the answer's first word, not parsed from free
text), and the perplexity of the gold answer. Metrics are scikit-learn's."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tuning.data.qa import QAPair
from tuning.data.sft import answer_text, closed_book_example, rag_example

LABELS = ("yes", "no", "maybe")


@dataclass(frozen=True)
class GeneratorScores:
    name: str
    pairs: int
    accuracy: float | None  # over the pairs with a decision
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    perplexity: float

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_of(pair: QAPair, pool: Sequence[QAPair], recipe: str, seed: int,
              distractors: int = 1, passage_words: int = 120):
    """The recipe's prompt for ``pair`` (the same distractors for every model judged)."""
    if recipe == "rag" and pair.contexts:
        return rag_example(pair, pool, distractors, random.Random(f"{seed}:{pair.id}"),
                           passage_words)[0]
    return closed_book_example(pair)[0]


def _one_pass(model: Any, prompt: list[int], answer: list[int],
              label_ids: dict[str, int]) -> tuple[dict[str, float], float]:
    """One forward pass over prompt and gold answer: the label words' log-probabilities as
    the answer's first token, and the answer's summed log-probability."""
    import torch

    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    first = torch.log_softmax(logits[len(prompt) - 1], dim=-1)
    labels = {label: float(first[token]) for label, token in label_ids.items()}
    steps = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return labels, float(steps[range(len(answer)), answer].sum())


def score_generator(name: str, model: Any, tokenizer: Any, pairs: Sequence[QAPair],
                    recipe: str, seed: int = 13, distractors: int = 1,
                    passage_words: int = 120) -> GeneratorScores:
    """The gate's scores: the recipe's own prompts for the held-out pairs."""
    prompts = [(prompt_of(pair, pairs, recipe, seed, distractors, passage_words), pair)
               for pair in pairs]
    return score_prompts(name, model, tokenizer, prompts)


def score_prompts(name: str, model: Any, tokenizer: Any,
                  prompts: Sequence[tuple[list[dict[str, str]], QAPair]],
                  answer_tokens: int = 128) -> GeneratorScores:
    """Decision accuracy and macro precision, recall and F1 (the label word likeliest as the
    answer's first token; a word of several tokens by its first), and the perplexity of the
    gold answers (their first ``answer_tokens``), in one forward pass per prompt."""
    from search.answering.generation.local import encode_chat

    model.eval()
    label_ids = {label: tokenizer.encode(label.capitalize(), add_special_tokens=False)[0]
                 for label in LABELS}
    gold, chosen, log_prob, tokens = [], [], 0.0, 0
    for messages, pair in prompts:
        prompt = encode_chat(tokenizer, messages)
        answer = tokenizer.encode(answer_text(pair), add_special_tokens=False)[:answer_tokens]
        labels, answer_log_prob = _one_pass(model, prompt, answer, label_ids)
        log_prob += answer_log_prob
        tokens += len(answer)
        if pair.decision in LABELS:
            gold.append(pair.decision)
            chosen.append(max(labels, key=labels.get))
    perplexity = round(math.exp(-log_prob / max(tokens, 1)), 3)
    return GeneratorScores(name, len(prompts), *decision_metrics(gold, chosen), perplexity)


def decision_metrics(gold: Sequence[str], chosen: Sequence[str | None]
                     ) -> tuple[float | None, float | None, float | None, float | None]:
    """Accuracy and macro precision, recall and F1 over yes/no/maybe (None: no decisions);
    a missing choice counts as wrong."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if not gold:
        return None, None, None, None
    picked = [c or "none" for c in chosen]
    precision, recall, f1, _ = precision_recall_fscore_support(
        gold, picked, labels=list(LABELS), average="macro", zero_division=0)
    return (round(float(accuracy_score(gold, picked)), 4), round(float(precision), 4),
            round(float(recall), 4), round(float(f1), 4))


@dataclass(frozen=True)
class GeneratorGate:
    passed: bool
    reason: str
    candidate: GeneratorScores
    served: GeneratorScores

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason,
                "candidate": self.candidate.as_dict(), "served": self.served.as_dict()}


def decide(candidate: GeneratorScores, served: GeneratorScores,
           margin: float = 0.0) -> GeneratorGate:
    """Promote on decision accuracy where the pairs have decisions (macro-F1 breaks a tie),
    else on a lower perplexity of the gold answers."""
    if candidate.accuracy is not None and served.accuracy is not None:
        gain = candidate.accuracy - served.accuracy
        passed = gain > margin or (gain == margin == 0.0
                                   and candidate.macro_f1 > served.macro_f1)
        reason = (f"accuracy {candidate.accuracy:.3f} vs {served.accuracy:.3f} "
                  f"({served.name}); macro-F1 {candidate.macro_f1:.3f} vs "
                  f"{served.macro_f1:.3f}")
    else:
        passed = candidate.perplexity < served.perplexity * (1 - margin)
        reason = (f"gold-answer perplexity {candidate.perplexity:.2f} vs "
                  f"{served.perplexity:.2f} ({served.name})")
    return GeneratorGate(passed, ("Passed: " if passed else "Did not beat the served model: ")
                         + reason, candidate, served)
