"""The verifier's gate: it is served only if it judges held-out claims better than the check
served now, measured side by side with every method on the same pairs.

Each method labels a (sentence, passage) pair as supports / contradicts / not enough
information. The lexical and embedding checks only say "supported" or not (they cannot see a
contradiction), so "not supported" counts as not enough information for them; they are run
through the same ``verify`` that serving uses, number check included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from search.answering.support_model import classify
from search.answering.verification import numbers_in, strip_citations, verify
from tuning.data.claims import LABELS, NOT_ENOUGH_INFO, SUPPORTS, LabelledPair

Labeller = Callable[[Sequence[LabelledPair]], list[str]]
CHECK_THRESHOLDS = {"lexical": 0.7, "embedding": 0.6}  # verification's defaults


@dataclass(frozen=True)
class MethodScores:
    method: str
    pairs: int
    accuracy: float
    macro_f1: float
    support_precision: float
    support_recall: float
    contradictions: int  # in the contradiction test set
    contradictions_accepted: float  # share of them labelled "supports"

    def as_dict(self) -> dict:
        return asdict(self)


def check_labeller(method: str, threshold: float | None = None) -> Labeller:
    """Serving's lexical or embedding check as a labeller (supports / not enough info)."""
    configured = settings.KMS_VERIFY_THRESHOLD if method == settings.KMS_VERIFY_METHOD else 0
    limit = threshold if threshold is not None else configured or CHECK_THRESHOLDS[method]

    def label(pairs: Sequence[LabelledPair]) -> list[str]:
        return [
            SUPPORTS if verify([(pair.sentence, (1,))], {1: pair.passage}, method,
                               limit)[0].supported else NOT_ENOUGH_INFO
            for pair in pairs
        ]
    return label


def model_labeller(path: Path) -> Labeller:
    """A trained verifier as serving uses it: the label of its highest logit, except that
    "supports" needs every number of the sentence in the passage (serving's number check,
    which the lexical and embedding rows go through as well)."""
    def label(pairs: Sequence[LabelledPair]) -> list[str]:
        found = classify(path, [(p.sentence, p.passage) for p in pairs])
        return [
            NOT_ENOUGH_INFO if judged.label == SUPPORTS
            and not numbers_in(strip_citations(pair.sentence)) <= numbers_in(pair.passage)
            else judged.label
            for pair, judged in zip(pairs, found, strict=True)
        ]
    return label


def score(method: str, labeller: Labeller, pairs: Sequence[LabelledPair],
          contradictions: Sequence[LabelledPair]) -> MethodScores:
    gold = [pair.label for pair in pairs]
    predicted = labeller(pairs)
    made_false = labeller(contradictions) if contradictions else []
    support_gold = [label == SUPPORTS for label in gold]
    support_predicted = [label == SUPPORTS for label in predicted]
    return MethodScores(
        method=method,
        pairs=len(pairs),
        accuracy=round(float(accuracy_score(gold, predicted)), 4),
        macro_f1=round(float(f1_score(gold, predicted, labels=list(LABELS), average="macro",
                                      zero_division=0)), 4),
        support_precision=round(float(precision_score(support_gold, support_predicted,
                                                      zero_division=0)), 4),
        support_recall=round(float(recall_score(support_gold, support_predicted,
                                                zero_division=0)), 4),
        contradictions=len(made_false),
        contradictions_accepted=round(
            sum(label == SUPPORTS for label in made_false) / len(made_false), 4)
        if made_false else 0.0,
    )


@dataclass(frozen=True)
class VerifierGate:
    candidate: MethodScores
    served: MethodScores
    others: tuple[MethodScores, ...]
    passed: bool
    reason: str

    def as_dict(self) -> dict:
        return {"candidate": self.candidate.as_dict(), "served": self.served.as_dict(),
                "others": [o.as_dict() for o in self.others], "passed": self.passed,
                "reason": self.reason}


def decide(candidate: MethodScores, served: MethodScores,
           others: Sequence[MethodScores] = ()) -> VerifierGate:
    """Pass when the candidate's macro-F1 is higher than the served check's and it accepts
    no larger share of contradictions; the reason gives both figures."""
    if candidate.pairs == 0:
        return VerifierGate(candidate, served, tuple(others), False,
                            "No held-out pairs to judge on.")
    figures = (f"macro-F1 {candidate.macro_f1:.4f} vs {served.method} {served.macro_f1:.4f}, "
               f"contradictions accepted {candidate.contradictions_accepted:.1%} vs "
               f"{served.contradictions_accepted:.1%}")
    if candidate.macro_f1 <= served.macro_f1:
        return VerifierGate(candidate, served, tuple(others), False, f"Not better: {figures}.")
    if candidate.contradictions_accepted > served.contradictions_accepted:
        return VerifierGate(candidate, served, tuple(others), False,
                            f"Accepts more contradictions: {figures}.")
    return VerifierGate(candidate, served, tuple(others), True, f"Better: {figures}.")


def format_scores(rows: Sequence[MethodScores]) -> str:
    lines = [f"{'method':<10} {'pairs':>6} {'accuracy':>9} {'macro-F1':>9} {'sup. P':>7} "
             f"{'sup. R':>7} {'contradictions accepted':>24}"]
    for row in rows:
        lines.append(
            f"{row.method:<10} {row.pairs:>6} {row.accuracy:>9.4f} {row.macro_f1:>9.4f} "
            f"{row.support_precision:>7.4f} {row.support_recall:>7.4f} "
            f"{row.contradictions_accepted:>15.1%} of {row.contradictions:<5}"
        )
    return "\n".join(lines)

