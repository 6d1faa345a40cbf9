"""The evaluation gate: a new model is served only if it beats the served one on held-out
queries of the domain that it never trained on.

Both models are judged on the same queries and the same corpus, with ranx's nDCG@10 and
Recall@100. A candidate passes when its nDCG@10 is at least ``margin`` above the served
model's and its Recall@100 is not more than ``|margin|`` below it (a reranker reorders the top
documents, so it cannot lift Recall@100; an embedder that trades recall for precision fails).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from ranx import Qrels, Run, evaluate

METRICS = ("ndcg@10", "recall@100")

Ranking = dict[str, float]  # document key -> score
Ranker = Callable[[str], Ranking]


@dataclass(frozen=True)
class GateResult:
    candidate: dict[str, float]
    served: dict[str, float]
    margin: float
    queries: int
    passed: bool
    reason: str
    chosen: dict = field(default_factory=dict)  # serving options the gate chose, if any

    def as_dict(self) -> dict:
        return asdict(self)


def scores(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
           ranker: Ranker, on_query: Callable[[], None] | None = None) -> dict[str, float]:
    """nDCG@10 and Recall@100 of ``ranker`` on ``queries``."""
    run: dict[str, Ranking] = {}
    for qid, text in queries.items():
        ranking = ranker(text)
        run[qid] = ranking or {"<none>": 0.0}  # ranx needs an entry per query
        if on_query is not None:
            on_query()
    result = evaluate(Qrels({q: dict(d) for q, d in qrels.items()}), Run(run), list(METRICS),
                      make_comparable=True)
    return {name: round(float(result[name]), 4) for name in METRICS}


def decide(candidate: dict[str, float], served: dict[str, float], margin: float,
           queries: int) -> GateResult:
    gain = candidate["ndcg@10"] - served["ndcg@10"]
    recall = candidate["recall@100"] - served["recall@100"]
    if queries == 0:
        return GateResult(candidate, served, margin, 0, False,
                          "No held-out queries to judge on: add pairs, then train again.")
    if gain < margin:
        reason = (f"nDCG@10 {candidate['ndcg@10']:.4f} vs served {served['ndcg@10']:.4f}: "
                  f"{gain:+.4f}, below the margin {margin:.4f}.")
        return GateResult(candidate, served, margin, queries, False, reason)
    if recall < -abs(margin):
        reason = (f"Recall@100 {candidate['recall@100']:.4f} vs served "
                  f"{served['recall@100']:.4f}: {recall:+.4f}, worse than the margin allows.")
        return GateResult(candidate, served, margin, queries, False, reason)
    return GateResult(candidate, served, margin, queries, True,
                      f"nDCG@10 {gain:+.4f}, Recall@100 {recall:+.4f} on {queries} queries.")


def dense_ranker(encode: Callable[[list[str]], np.ndarray], keys: list[str],
                 passages: list[str], k: int = 100) -> Ranker:
    """Exact cosine ranking of ``passages`` (encoded once) for a query: the gate's corpus is
    small enough that no index is needed, and both models get the same exact search."""
    matrix = encode(passages)

    def rank(query: str) -> Ranking:
        similarity = matrix @ encode([query])[0]
        top = np.argsort(-similarity, kind="stable")[:k]
        return {keys[i]: float(similarity[i]) for i in top}

    return rank
