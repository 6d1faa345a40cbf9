"""RAG, fine-tuning, or both, measured on the domain's own held-out questions.

Every configuration answers the same questions: the base model and the fine-tuned one,
closed-book (the question alone) and retrieval-augmented (the prompt serving builds from the
domain's search), and the extractive backend. Decisions (yes/no/maybe) are scored from the
model's probabilities of the label words as the answer's first word, and the gold answer's
perplexity from the same forward pass; a fixed sample of questions is also answered in full
(BLEU by sacrebleu, ROUGE-L by rouge-score; for retrieval rows, citation precision and recall
by the independent judge of ``search.evaluation.answers``, the gold-source share and the
abstention rate; latency of the whole answer). The extractive backend has no probabilities:
its decision is read from the answer's first word.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kms.access import Access
from kms.store.models import Document, Domain
from search.answering.answers import Answer, AnswerOptions, answer
from search.answering.generation.base import GenerationRequest, Message
from search.answering.generation.local import LocalGenerator, conversion_cache_dir
from search.answering.prompting import build_request, choose_passages, token_counter
from search.evaluation import stats
from search.evaluation.answers import (
    SOURCE_PREFIX,
    CitationCounts,
    Judge,
    citation_counts,
    decision_of,
    rouge_l,
)
from search.retrieval.search import search
from tuning.data.qa import QAPair
from tuning.data.sft import answer_text, closed_book_example
from tuning.evaluation.generation import GeneratorScores, decision_metrics, score_prompts
from tuning.training.generator import load_base

ACCESS = Access.everything("compare_approaches")


@dataclass(frozen=True)
class Configuration:
    name: str
    model_dir: Path | None  # None: the extractive backend
    retrieval: bool
    training_seconds: float | None = None


@dataclass
class ComparisonRow:
    name: str
    questions: int
    decided_by: str
    accuracy: float | None
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    perplexity: float | None
    generated: int = 0
    bleu: float | None = None
    rouge_l: float | None = None
    citation_precision: float | None = None
    citation_recall: float | None = None
    gold_source_share: float | None = None
    abstention_rate: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    training_seconds: float | None = None


@dataclass
class ComparisonReport:
    domain: str
    questions: int
    generated: int
    rows: list[ComparisonRow]
    judge: str
    seconds: float = 0.0

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def rag_messages(question: str, domain: Domain,
                 options: AnswerOptions) -> list[dict[str, str]]:
    """The prompt serving builds for ``question``: the domain's passages for it."""
    response = search(question, domain=domain, access=ACCESS, mode="hybrid",
                      k=options.max_passages, chunks_per_document=2)
    passages = choose_passages(response, options.passage_tokens, token_counter(),
                               options.max_passages)
    request = build_request(question, passages)
    return [{"role": m.role, "content": m.content} for m in request.messages]


def _generated(configuration: Configuration, pair: QAPair, domain: Domain,
               generator) -> tuple[str, Answer | None]:
    if configuration.retrieval:
        result = answer(pair.question, domain=domain, access=ACCESS, generator=generator)
        return result.text, result
    messages = closed_book_example(pair)[0]
    request = GenerationRequest(messages=tuple(Message(m["role"], m["content"])
                                               for m in messages), max_new_tokens=160,
                                question=pair.question)
    return "".join(generator.stream(request)).strip(), None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def compare(pairs: Sequence[QAPair], configurations: Sequence[Configuration], domain: Domain,
            *, sample: int, judge: Judge, judge_name: str,
            on_step: Callable[[str], None] | None = None) -> ComparisonReport:
    """Score every configuration on ``pairs``; answer the first ``sample`` of them in full."""
    import sacrebleu

    started = time.perf_counter()
    options = AnswerOptions.from_settings()
    gold_documents = dict(Document.objects.filter(
        domain=domain, source__in=[f"{SOURCE_PREFIX}{p.id}" for p in pairs]).values_list(
        "source", "pk"))
    rag = {pair.id: rag_messages(pair.question, domain, options) for pair in pairs}
    rows = []
    say = on_step or (lambda _: None)
    for configuration in configurations:
        say(configuration.name)
        if configuration.model_dir is not None:
            model, tokenizer = load_base(configuration.model_dir)
            prompts = [(rag[p.id] if configuration.retrieval else closed_book_example(p)[0], p)
                       for p in pairs]
            scores: GeneratorScores = score_prompts(configuration.name, model, tokenizer,
                                                    prompts)
            generator = LocalGenerator(configuration.model_dir, cache_dir=conversion_cache_dir())
            decided_by = "label-word probabilities"
        else:
            generator, decided_by = "extractive", "first word of the answer"
            scores = None
        predictions, references, latencies = [], [], []
        counts, abstained, chosen = CitationCounts(), 0, []
        shown = pairs if scores is None else pairs[:sample]  # extractive: all (it is fast)
        for pair in shown:
            began = time.perf_counter()
            text, result = _generated(configuration, pair, domain, generator)
            latencies.append((time.perf_counter() - began) * 1000)
            predictions.append(text)
            references.append(answer_text(pair))
            chosen.append(decision_of(text))
            if result is not None:
                abstained += result.abstained
                counts.add(citation_counts(
                    result, gold_documents.get(f"{SOURCE_PREFIX}{pair.id}"), judge))
        if scores is None:
            decisions = decision_metrics([p.decision for p in pairs if p.decision],
                                         [c for c, p in zip(chosen, pairs, strict=True)
                                          if p.decision])
            scores = GeneratorScores(configuration.name, len(pairs), *decisions, None)
        rows.append(ComparisonRow(
            name=configuration.name, questions=len(pairs), decided_by=decided_by,
            accuracy=scores.accuracy, macro_precision=scores.macro_precision,
            macro_recall=scores.macro_recall, macro_f1=scores.macro_f1,
            perplexity=scores.perplexity, generated=len(shown),
            bleu=round(sacrebleu.corpus_bleu(predictions, [references]).score, 2)
            if predictions else None,
            rouge_l=round(sum(rouge_l(p, r) for p, r in zip(predictions, references,
                                                           strict=True)) / len(predictions), 4)
            if predictions else None,
            citation_precision=_share(counts.precise, counts.citations)
            if configuration.retrieval else None,
            citation_recall=_share(counts.supported, counts.sentences)
            if configuration.retrieval else None,
            gold_source_share=_share(counts.gold, counts.citations)
            if configuration.retrieval else None,
            abstention_rate=_share(abstained, len(shown)) if configuration.retrieval else None,
            latency_ms=stats.percentiles(latencies, (50, 95)) if latencies else {},
            training_seconds=configuration.training_seconds))
    return ComparisonReport(domain.slug, len(pairs), sample, rows, judge_name,
                            round(time.perf_counter() - started, 1))


def markdown(report: ComparisonReport) -> str:
    def show(value, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| configuration | accuracy | macro-P | macro-R | macro-F1 | perplexity | BLEU | "
             "ROUGE-L | cit. P | cit. R | gold src | abstain | p50 ms | p95 ms | train s |",
             "|---|" + "---:|" * 14]
    for row in report.rows:
        lines.append(
            f"| {row.name} | {show(row.accuracy)} | {show(row.macro_precision)} | "
            f"{show(row.macro_recall)} | {show(row.macro_f1)} | {show(row.perplexity, 2)} | "
            f"{show(row.bleu, 1)} | {show(row.rouge_l)} | {show(row.citation_precision)} | "
            f"{show(row.citation_recall)} | {show(row.gold_source_share)} | "
            f"{show(row.abstention_rate)} | {show(row.latency_ms.get('p50'), 0)} | "
            f"{show(row.latency_ms.get('p95'), 0)} | {show(row.training_seconds, 0)} |")
    return "\n".join(lines)


def chart(report: ComparisonReport, path: Path) -> Path:
    """Accuracy and macro-F1 per configuration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.name for row in report.rows]
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.38
    for offset, (label, values) in enumerate((
            ("accuracy", [row.accuracy or 0 for row in report.rows]),
            ("macro-F1", [row.macro_f1 or 0 for row in report.rows]))):
        axis.bar([i + (offset - 0.5) * width for i in range(len(names))], values, width,
                 label=label)
    axis.set_xticks(range(len(names)), names, rotation=15, ha="right")
    axis.set_ylim(0, 1)
    axis.set_title(f"{report.domain}: {report.questions} held-out questions")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
