"""Question/answer pairs for generator fine-tuning: a domain's curated pairs, or a dataset file.

The file format is JSON Lines, one pair per line::

    {"id": "q1", "question": "...", "answer": "...", "decision": "yes",
     "contexts": ["passage that holds the answer", "..."], "split": "train"}

``id`` and ``question`` and ``answer`` are required; ``decision`` is a short label the
answer opens with (yes/no/maybe), ``contexts`` the passages the retrieval-augmented recipe
quotes, ``split`` ``train`` or ``test`` (held out). PubMedQA's ``pqal.jsonl`` (``pmid``,
``long_answer``, ``final_decision``, ``split`` trainval/test) is read as it is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from kms.store.models import CuratedPair, Domain

MIN_PAIRS = 8  # fewer cannot both train and judge a run
SPLITS = {"train": "train", "trainval": "train", "test": "test"}


class QADatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the line and the fix."""


@dataclass(frozen=True)
class QAPair:
    id: str
    question: str
    answer: str
    decision: str | None = None
    contexts: tuple[str, ...] = ()
    split: str | None = None  # "train" or "test" where the dataset says


def _pair(row: object, where: str) -> QAPair:
    if not isinstance(row, dict):
        raise QADatasetError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    if "pmid" in row and "long_answer" in row:  # PubMedQA's layout
        row = {"id": row["pmid"], "question": row.get("question"),
               "answer": row["long_answer"], "decision": row.get("final_decision"),
               "contexts": row.get("contexts", []), "split": row.get("split")}
    missing = [key for key in ("id", "question", "answer")
               if not isinstance(row.get(key), str | int) or not str(row[key]).strip()]
    if missing:
        raise QADatasetError(f"{where}: needs {', '.join(missing)} (see tuning/data/qa.py "
                             "for the format).")
    contexts = row.get("contexts") or []
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise QADatasetError(f"{where}: contexts must be a list of strings.")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise QADatasetError(f"{where}: split must be one of {', '.join(SPLITS)}, not "
                             f"{split!r}.")
    decision = row.get("decision")
    return QAPair(id=str(row["id"]), question=str(row["question"]).strip(),
                  answer=str(row["answer"]).strip(),
                  decision=str(decision).strip().lower() if decision else None,
                  contexts=tuple(c.strip() for c in contexts if c.strip()),
                  split=SPLITS[split] if split else None)


def read_pairs(path: Path) -> list[QAPair]:
    """The pairs of a JSON Lines file (or a folder holding ``pqal.jsonl``)."""
    path = Path(path)
    file = path / "pqal.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise QADatasetError(f"No dataset file at {file}: give a JSON Lines file of "
                             "question/answer pairs (or PubMedQA's pqal.jsonl).")
    pairs, seen = [], set()
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QADatasetError(f"{file.name} line {number}: not JSON ({exc.msg}).") \
                    from exc
            pair = _pair(row, f"{file.name} line {number}")
            if pair.id in seen:
                raise QADatasetError(f"{file.name} line {number}: id {pair.id!r} repeats.")
            seen.add(pair.id)
            pairs.append(pair)
    return pairs


def curated_pairs(domain: Domain) -> list[QAPair]:
    """The domain's active curated pairs (its gold set), oldest first."""
    return [QAPair(id=f"curated:{pk}", question=q, answer=a) for pk, q, a in
            CuratedPair.objects.filter(domain=domain, active=True).order_by("pk")
            .values_list("pk", "question", "answer")]


def held_out(pairs: list[QAPair], share: float) -> tuple[list[QAPair], list[QAPair]]:
    """(train, held-out): the dataset's own split where it has one, else a stable share by
    id hash, so every run of a domain is judged on the same pairs."""
    if any(p.split for p in pairs):
        return ([p for p in pairs if p.split != "test"], [p for p in pairs if p.split == "test"])
    limit = int(share * 10_000)
    chosen = {p.id for p in pairs
              if int(hashlib.sha256(p.id.encode()).hexdigest(), 16) % 10_000 < limit}
    return [p for p in pairs if p.id not in chosen], [p for p in pairs if p.id in chosen]


def check_enough(train: list[QAPair], held: list[QAPair]) -> None:
    if len(train) < MIN_PAIRS or not held:
        raise QADatasetError(f"Too few pairs: {len(train)} to train on and {len(held)} held "
                             f"out; a run needs at least {MIN_PAIRS} and 1. Add curated pairs "
                             "in the admin (or promote feedback), or give --dataset.")
