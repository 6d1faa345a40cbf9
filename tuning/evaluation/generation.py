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
              distractors: int = 2):
    """The recipe's prompt for ``pair`` (the same distractors for every model judged)."""
    if recipe == "rag" and pair.contexts:
        return rag_example(pair, pool, distractors, random.Random(f"{seed}:{pair.id}"))[0]
    return closed_book_example(pair)[0]


def _log_probs(model: Any, tokenizer: Any, prompt: list[int], continuation: list[int]) -> float:
    import torch

    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1]
    chosen = torch.log_softmax(logits.float(), dim=-1)[range(len(continuation)), continuation]
    return float(chosen.sum())


def score_generator(name: str, model: Any, tokenizer: Any, pairs: Sequence[QAPair],
                    recipe: str, seed: int = 13, max_length: int = 1024,
                    distractors: int = 2) -> GeneratorScores:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from search.answering.generation.local import encode_chat

    model.eval()
    gold, chosen, nll, tokens = [], [], 0.0, 0
    words = {label: tokenizer.encode(label.capitalize(), add_special_tokens=False)
             for label in LABELS}
    for pair in pairs:
        prompt = encode_chat(tokenizer, prompt_of(pair, pairs, recipe, seed, distractors))
        prompt = prompt[-(max_length // 2):] if len(prompt) > max_length // 2 else prompt
        if pair.decision in LABELS:
            scores = {label: _log_probs(model, tokenizer, prompt, ids)
                      for label, ids in words.items()}
            gold.append(pair.decision)
            chosen.append(max(scores, key=scores.get))
        answer = tokenizer.encode(answer_text(pair), add_special_tokens=False)
        answer = answer[:max_length - len(prompt)]
        nll -= _log_probs(model, tokenizer, prompt, answer)
        tokens += len(answer)
    perplexity = round(math.exp(nll / max(tokens, 1)), 3)
    if not gold:
        return GeneratorScores(name, len(pairs), None, None, None, None, perplexity)
    precision, recall, f1, _ = precision_recall_fscore_support(
        gold, chosen, labels=list(LABELS), average="macro", zero_division=0)
    return GeneratorScores(name, len(pairs), round(float(accuracy_score(gold, chosen)), 4),
                           round(float(precision), 4), round(float(recall), 4),
                           round(float(f1), 4), perplexity)


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
