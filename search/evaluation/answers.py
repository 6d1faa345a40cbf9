"""Answer quality on PubMedQA: the figures ``manage.py evaluate_answers`` prints.

Each PubMedQA item's context (an abstract without its conclusion, in labelled sections) is
stored as one document of a domain, so every question is answered by real retrieval over all
1,000 abstracts; the gold long answer is the abstract's conclusion.

Each backend generates once per question with verification off; every verification method is
then applied to that same draft (:func:`search.answering.answers.reverify`), so "with" and "without"
verification are compared on identical text.

Citation quality follows ALCE (Gao et al., 2023): citation recall is the share of answer
sentences that their cited passages, taken together, support; citation precision is the share
of citations that support their sentence alone, or are needed for the joint support. ALCE
judges support with an NLI model; none ships offline here. A row is never judged by its own
serving check, which would measure the check agreeing with itself: the trained support
verifier (:class:`VerifierJudge`) judges the rows verified lexically, by embedding or not at
all, and the lexical check with matching numbers (:class:`LexicalJudge`) judges the rows the
verifier checked. Each row names its judge. The gold-source share (citations into the
question's own abstract) and the off-source share (answers citing only other abstracts) need
no model at all.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from django.db import transaction

from kms.access import Access
from kms.store.models import Domain
from search.answering.answers import Answer, AnswerOptions, answer, reverify
from search.answering.citations import MARKER_LIKE
from search.answering.generation.base import Generator
from search.answering.verification import (
    EMBEDDING_THRESHOLD,
    LEXICAL_THRESHOLD,
    MODEL_THRESHOLD,
    embedding_support,
    lexical_support,
    model_scores,
    numbers_in,
    strip_citations,
)
from search.evaluation import stats
from search.ingestion.beir import DatasetError
from search.ingestion.documents import add_document
from search.retrieval import index_store as bm25_store

SOURCE_PREFIX = "pubmedqa:"
# The command stores and answers over the dataset's own, owned domain (not a staff one).
EVALUATION = Access.everything("answer evaluation")
VERIFICATIONS = ("none", "embedding", "lexical", "model")
DECISIONS = ("yes", "no", "maybe")
# Questions no biomedical abstract answers: every one should get the no-answer sentence.
OFF_TOPIC = (
    "Who won the football world cup in 1998?",
    "What is the capital of Australia?",
    "How do I reset my email password?",
    "What is the interest rate on a 30-year mortgage?",
    "When is the deadline for course registration?",
    "Can you recommend a good pasta recipe?",
    "How tall is the Eiffel Tower?",
    "What is the exchange rate from euros to dollars?",
    "How many players are on a basketball team?",
    "Who wrote Pride and Prejudice?",
)
# "Yes, ...", "No.", and the small models' "The answer to this question is: No."
_DECISION = re.compile(
    r"^\W*(?:the answer(?: to (?:this|the) question)? is\W*)?(yes|no|maybe)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class QAItem:
    pmid: str
    split: str
    question: str
    contexts: tuple[str, ...]
    labels: tuple[str, ...]
    long_answer: str
    decision: str


def read_pubmedqa(path: Path) -> list[QAItem]:
    """Items of ``pqal.jsonl`` (``path`` is that file or its directory)."""
    file = path / "pqal.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise DatasetError(f"No PubMedQA file at {file} (expected pqal.jsonl).")
    items = []
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(QAItem(
                    str(row["pmid"]), row["split"], row["question"], tuple(row["contexts"]),
                    tuple(row.get("context_labels") or ()), row["long_answer"],
                    row["final_decision"],
                ))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{file}:{number}: not a PubMedQA row ({exc})") from exc
    return items


def context_markdown(item: QAItem) -> str:
    """The abstract as Markdown, one section per labelled context (BACKGROUND, METHODS, ...)."""
    labels = item.labels if len(item.labels) == len(item.contexts) else ()
    parts = []
    for k, text in enumerate(item.contexts):
        if labels:
            parts.append(f"## {labels[k].strip().title()}\n\n{text.strip()}")
        else:
            parts.append(text.strip())
    return "\n\n".join(parts) + "\n"


def store_contexts(items: Iterable[QAItem], domain: Domain) -> list[int]:
    """Add each context as a document (unchanged ones are skipped); the versions to process."""
    queued = []
    for item in items:
        with transaction.atomic():
            result = add_document(
                domain, uploader=EVALUATION, source=f"{SOURCE_PREFIX}{item.pmid}",
                filename=f"{item.pmid}.md",
                content=context_markdown(item).encode("utf-8"), title=f"PMID {item.pmid}",
                queue=False,
            )
        if result.outcome == "queued":
            queued.append(result.version_id)
    return queued


def pick_questions(items: Sequence[QAItem], limit: int, seed: int) -> list[QAItem]:
    """The test questions to answer: ``limit`` of them (0: all), the same for a given seed."""
    if limit < 0:
        raise DatasetError(f"--limit must be 0 (all) or more, not {limit}.")
    test = [item for item in items if item.split == "test"]
    if limit:
        test = random.Random(seed).sample(test, min(limit, len(test)))
    return sorted(test, key=lambda item: item.pmid)


def ensure_index(domain: Domain) -> None:
    if domain.pk in bm25_store.stale_domains([domain.pk]):
        bm25_store.build_index(domain)


# --- answer text metrics ------------------------------------------------------------------

def _normalise(text: str) -> list[str]:
    """SQuAD's normalisation: lower case, no punctuation, articles or citation markers."""
    text = MARKER_LIKE.sub("", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return [t for t in text.split() if t not in ("a", "an", "the")]


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = _normalise(prediction), _normalise(gold)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected or not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


_rouge = None


def rouge_l(prediction: str, gold: str) -> float:
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_rouge.score(gold, MARKER_LIKE.sub("", prediction))["rougeL"].fmeasure)


def decision_of(text: str) -> str | None:
    """yes / no / maybe when the answer opens with one, else None."""
    match = _DECISION.match(text)
    return match.group(1).lower() if match else None


# --- citation quality (ALCE-style) --------------------------------------------------------

Judge = Callable[[str, Sequence[str]], bool]


def _numbers_match(claim: str, passages: Sequence[str]) -> bool:
    return numbers_in(claim) <= set().union(*(numbers_in(p) for p in passages))


class LexicalJudge:
    """The lexical check at its threshold with matching numbers: the verifier rows' judge."""

    name = f"lexical >= {LEXICAL_THRESHOLD} and the numbers match"

    def __call__(self, sentence: str, passages: Sequence[str]) -> bool:
        claim = strip_citations(sentence)
        return bool(claim and passages) and _numbers_match(claim, passages) \
            and lexical_support(claim, list(passages)) >= LEXICAL_THRESHOLD


class BothChecksJudge(LexicalJudge):
    """Both checks with matching numbers: what judged every row before a verifier existed,
    and still the fallback when there is none (then not independent of those rows)."""

    name = (f"embedding >= {EMBEDDING_THRESHOLD} and lexical >= {LEXICAL_THRESHOLD} and the "
            "numbers match (no verifier: not independent of those rows' checks)")

    def __call__(self, sentence: str, passages: Sequence[str]) -> bool:
        return super().__call__(sentence, passages) and embedding_support(
            strip_citations(sentence), list(passages)) >= EMBEDDING_THRESHOLD


class VerifierJudge:
    """The trained support verifier: some window of a passage supports the sentence, with
    matching numbers, or the passage quotes it. Judgements are cached, since every row
    judges the same sentences."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"support verifier {self.path.name} (p >= {MODEL_THRESHOLD})"
        self._cache: dict[tuple[str, str], float] = {}

    def support(self, claim: str, passage: str) -> float:
        if (claim, passage) not in self._cache:
            self._cache[claim, passage] = model_scores([(claim, passage)], self.path)[0][0]
        return self._cache[claim, passage]

    def __call__(self, sentence: str, passages: Sequence[str]) -> bool:
        claim = strip_citations(sentence)
        return bool(claim and passages) and _numbers_match(claim, passages) and any(
            self.support(claim, p) >= MODEL_THRESHOLD for p in passages)


@dataclass
class CitationCounts:
    sentences: int = 0
    supported: int = 0  # sentences their citations support (recall numerator)
    citations: int = 0
    precise: int = 0  # citations that support alone or are needed (precision numerator)
    gold: int = 0  # citations into the question's own abstract

    def add(self, other: CitationCounts) -> None:
        for name in ("sentences", "supported", "citations", "precise", "gold"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def citation_counts(result: Answer, gold_document: int | None,
                    judge: Judge) -> CitationCounts:
    """ALCE counts for the sentences the user sees (none when the answer abstains)."""
    counts = CitationCounts()
    if result.abstained:
        return counts
    by_number = {c.number: c for c in result.passages}
    for claim in result.claims:
        if not claim.kept:
            continue
        counts.sentences += 1
        texts = {n: result.passage_texts[n] for n in claim.citations}
        together = judge(claim.text, list(texts.values()))
        counts.supported += together
        for n in claim.citations:
            counts.citations += 1
            counts.gold += by_number[n].document_id == gold_document
            alone = judge(claim.text, [texts[n]])
            others = [t for m, t in texts.items() if m != n]
            needed = together and not (others and judge(claim.text, others))
            counts.precise += alone or needed
    return counts


# --- the evaluation -----------------------------------------------------------------------

@dataclass
class Row:
    """One backend under one verification setting, over the same questions."""

    backend: str
    verification: str
    questions: int
    token_f1: float
    rouge_l: float
    answered_token_f1: float | None  # over the questions it answered
    decisions: int  # answers opening with yes/no/maybe
    accuracy: float | None  # of those decisions
    citation_precision: float | None
    citation_recall: float | None
    gold_source_share: float | None
    citations_per_answer: float
    abstention_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    sentences_removed: int = 0
    judge: str = ""  # what scored citation precision and recall (never the row's own check)
    verification_p50_ms: float = 0.0  # the check's own time per answer
    verification_p95_ms: float = 0.0
    # Answers citing only passages of other abstracts, of the answers shown: with the
    # relevance check, and without it (the answers it turned into abstentions put back).
    off_source_share: float | None = None
    off_source_share_unchecked: float | None = None
    off_source_counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # off, of shown; unchecked
    relevance_abstained: int = 0  # answers the relevance check withheld
    relevance_abstained_gold: int = 0  # of those, ones that cited the question's own abstract
    contradicted: int = 0  # sentences a cited passage contradicts (the verifier rows)
    fallbacks: int = 0  # answers the lexical check verified because the verifier could not


@dataclass
class Report:
    dataset: str
    questions: int
    judge: str
    rows: list[Row] = field(default_factory=list)
    retrieval_similarity: dict[str, float] = field(default_factory=dict)
    off_topic_similarity: dict[str, float] = field(default_factory=dict)
    off_topic_abstained: dict[str, int] = field(default_factory=dict)  # backend -> of OFF_TOPIC
    examples: list[dict] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarise(
    backend: str, verification: str, items: Sequence[QAItem], results: Sequence[Answer],
    gold_documents: dict[str, int], judge: Judge,
) -> Row:
    f1s, rouges, answered_f1, latencies, checking = [], [], [], [], []
    decided = correct = removed = withheld = withheld_gold = 0
    off_source = {"checked": [0, 0], "unchecked": [0, 0]}  # [off source, answers]
    counts = CitationCounts()
    for item, result in zip(items, results, strict=True):
        text = "" if result.abstained else result.text
        f1s.append(token_f1(text, item.long_answer))
        rouges.append(rouge_l(text, item.long_answer) if text else 0.0)
        if text:
            answered_f1.append(f1s[-1])
        decision = decision_of(result.draft)  # the generator's, whatever verification kept
        if decision:
            decided += 1
            correct += decision == item.decision
        gold = gold_documents.get(item.pmid)
        counts.add(citation_counts(result, gold, judge))
        removed += sum(1 for c in result.claims if not c.kept)
        latencies.append(result.timings_ms.get("total", 0.0))
        checking.append(result.timings_ms.get("verification", 0.0))
        cited = _cited_documents(result)
        if result.off_topic:
            withheld += 1
            withheld_gold += gold in cited
        for name, shown in (("checked", not result.abstained),
                            ("unchecked", not result.abstained or result.off_topic)):
            if shown and cited:
                off_source[name][1] += 1
                off_source[name][0] += gold not in cited
    answered = sum(1 for r in results if not r.abstained)
    latency = stats.percentiles(latencies, (50, 95))
    verifying = stats.percentiles(checking, (50, 95))
    return Row(
        backend=backend,
        verification=verification,
        questions=len(items),
        token_f1=_mean(f1s),
        rouge_l=_mean(rouges),
        answered_token_f1=_mean(answered_f1) if answered_f1 else None,
        decisions=decided,
        accuracy=round(correct / decided, 4) if decided else None,
        citation_precision=_share(counts.precise, counts.citations),
        citation_recall=_share(counts.supported, counts.sentences),
        gold_source_share=_share(counts.gold, counts.citations),
        citations_per_answer=round(counts.citations / answered, 2) if answered else 0.0,
        abstention_rate=round(1 - answered / len(items), 4) if items else 0.0,
        latency_p50_ms=round(latency.get("p50", 0.0), 1),
        latency_p95_ms=round(latency.get("p95", 0.0), 1),
        sentences_removed=removed,
        judge=getattr(judge, "name", str(judge)),
        verification_p50_ms=round(verifying.get("p50", 0.0), 1),
        verification_p95_ms=round(verifying.get("p95", 0.0), 1),
        off_source_share=_share(*off_source["checked"]),
        off_source_share_unchecked=_share(*off_source["unchecked"]),
        off_source_counts=(*off_source["checked"], *off_source["unchecked"]),
        relevance_abstained=withheld,
        relevance_abstained_gold=withheld_gold,
        contradicted=sum(len(r.contradicted) for r in results),
        fallbacks=sum(1 for r in results if r.verification_note),
    )


def _cited_documents(result: Answer) -> set[int]:
    """The documents the shown answer cites, or the one it would have shown (off topic)."""
    by_number = {c.number: c.document_id for c in result.passages}
    if result.abstained and not result.off_topic:
        return set()
    return {by_number[n] for c in result.claims if c.kept for n in c.citations}


def judges_for(verifier: Path | None) -> dict[str, Judge]:
    """Which judge scores each verification's row: never that row's own check."""
    if verifier is None:  # the "model" rows fall back to the lexical check: judged like it
        both = BothChecksJudge()
        return {"none": both, "embedding": both, "lexical": both, "model": both}
    model = VerifierJudge(verifier)
    return {"none": model, "embedding": model, "lexical": model, "model": LexicalJudge()}


def evaluate(
    items: Sequence[QAItem],
    backends: dict[str, Generator],
    domain: Domain,
    *,
    verifications: Sequence[str] = VERIFICATIONS,
    verifier: Path | None = None,
    on_answer: Callable[[str], None] | None = None,
    examples: int = 3,
) -> Report:
    """Answer every item with every backend; one row per backend and verification setting.

    ``verifier`` serves the "model" rows and judges the others; without one the "model" rows
    fall back to the lexical check (and say so) and every row is judged by both checks.
    """
    gold_documents = dict(
        (source[len(SOURCE_PREFIX):], pk) for pk, source in
        domain.documents.filter(source__startswith=SOURCE_PREFIX).values_list("pk", "source")
    )
    judges = judges_for(verifier)
    verifier_option = str(verifier) if verifier else None
    report = Report(
        dataset="PubMedQA PQA-L", questions=len(items),
        judge="; ".join(f"{method} rows: {judges[method].name}" for method in verifications),
    )
    similarities: list[float] = []
    for name, generator in backends.items():
        drafts = []
        for item in items:
            result = answer(
                item.question, domain=domain, access=EVALUATION, generator=generator,
                options=AnswerOptions.from_settings(verify="none"),
            )
            drafts.append(result)
            if on_answer:
                on_answer(name)
        if not similarities:
            similarities = [r.similarity for r in drafts]
        for verification in verifications:
            options = AnswerOptions.from_settings(verify=verification, verifier=verifier_option)
            results = drafts if verification == "none" else [reverify(r, options) for r in drafts]
            report.rows.append(summarise(name, verification, items, results, gold_documents,
                                         judges[verification]))
        served = AnswerOptions.from_settings(verifier=verifier_option)
        off_topic = [
            answer(question, domain=domain, access=EVALUATION, generator=generator,
                   options=served)
            for question in OFF_TOPIC
        ]
        report.off_topic_abstained[name] = sum(r.abstained for r in off_topic)
        if not report.off_topic_similarity:
            report.off_topic_similarity = _percentiles([r.similarity for r in off_topic],
                                                       (50, 95, 100))
        for item, result in list(zip(items, drafts, strict=True))[:examples]:
            report.examples.append({
                "backend": name, "question": item.question, "draft": result.draft,
                "verified": reverify(result, served).text,
                "gold": item.long_answer,
            })
    if similarities:
        report.retrieval_similarity = _percentiles(similarities, (0, 5, 25, 50))
    return report


def _percentiles(values: Sequence[float], qs: Iterable[int]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in stats.percentiles(values, qs).items()}


def format_table(report: Report) -> str:
    """The report as a Markdown table (pasted into closing notes and the README)."""
    def show(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| backend | verification | token-F1 | ROUGE-L | yes/no/maybe acc. (n) | "
        "citation precision | citation recall | judge | gold-source share | "
        "off-source answers (no relevance check) | abstained | latency p50 / p95 | "
        "check p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        accuracy = f"{show(row.accuracy)} ({row.decisions})" if row.decisions else "n/a"
        lines.append(
            f"| {row.backend} | {row.verification} | {show(row.token_f1)} | {show(row.rouge_l)} "
            f"| {accuracy} | {show(row.citation_precision)} | {show(row.citation_recall)} | "
            f"{_judge_label(row.judge)} | {show(row.gold_source_share)} | "
            f"{_counted(row.off_source_counts)} | "
            f"{row.abstention_rate:.1%} | "
            f"{row.latency_p50_ms / 1000:.2f} s / {row.latency_p95_ms / 1000:.2f} s | "
            f"{row.verification_p50_ms:.0f} / {row.verification_p95_ms:.0f} ms |"
        )
    return "\n".join(lines)


def _judge_label(name: str) -> str:
    """A short name for the table; the report's footer gives each judge in full."""
    if name.startswith("support verifier"):
        return "verifier"
    return "lexical" if name.startswith("lexical") else "both checks"


def _counted(counts: Sequence[int]) -> str:
    off, shown, off_unchecked, shown_unchecked = counts
    if not shown_unchecked:
        return "n/a"
    return f"{off}/{shown} ({off_unchecked}/{shown_unchecked})"
