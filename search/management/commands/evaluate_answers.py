"""manage.py evaluate_answers ../shared/data/pubmedqa: answer quality per backend, as a table."""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from search.answering.generation.backends import BACKENDS, get_generator
from search.answering.generation.base import GeneratorError
from search.answering.support_model import VerifierUnavailable, load_verifier
from search.answering.verifier_runs import verifier_directory
from search.evaluation.answers import (
    OFF_TOPIC,
    VERIFICATIONS,
    ensure_index,
    evaluate,
    format_table,
    pick_questions,
    read_pubmedqa,
    store_contexts,
)
from search.evaluation.domains import OwnedDomainError, drop, owned_domain
from search.ingestion.beir import DatasetError
from search.management.cli import process_with_progress
from search.retrieval.search import SearchError


class Command(BaseCommand):
    help = (
        "Store PubMedQA's contexts as documents of a domain (once), answer its test questions "
        "with each backend, and print token-F1, ROUGE-L, yes/no/maybe accuracy, ALCE-style "
        "citation precision and recall with and without verification, abstention and latency."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset_dir", type=Path)
        parser.add_argument("--domain", default="pubmedqa",
                            help="An evaluation domain of its own (created if missing; a "
                            "staff domain is refused).")
        parser.add_argument("--backends", default="extractive,local",
                            help=f"Comma-separated, of {', '.join(BACKENDS)}.")
        parser.add_argument("--limit", type=int, default=100,
                            help="Test questions to answer (the same ones for every backend); "
                            "0 for all 500. SmolLM2 takes about 10 s per question.")
        parser.add_argument("--seed", type=int, default=13, help="Which questions --limit picks.")
        parser.add_argument("--verifications", default=",".join(VERIFICATIONS))
        parser.add_argument("--verifier", help="The support verifier for the 'model' rows and "
                            "judge of the others: a run id or a directory (default: the "
                            "newest promoted one).")
        parser.add_argument("--json", type=Path, help="Also write the report here.")
        parser.add_argument("--keep", action="store_true",
                            help="Keep the evaluation domain (and its embedded contexts) for "
                            "the next run instead of removing it.")

    def handle(self, *args, **options) -> None:
        try:
            items = read_pubmedqa(options["dataset_dir"])
            test = pick_questions(items, options["limit"], options["seed"])
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        names = [n.strip() for n in options["backends"].split(",") if n.strip()]
        if not names:
            raise CommandError(f"Name at least one backend: {', '.join(BACKENDS)}.")
        verifications = [v.strip() for v in options["verifications"].split(",") if v.strip()]
        unknown = [v for v in verifications if v not in VERIFICATIONS]
        if unknown:
            raise CommandError(f"Unknown verification {unknown}; use {', '.join(VERIFICATIONS)}.")
        try:
            backends = {name: get_generator(name) for name in names}
            verifier, described = verifier_directory(options["verifier"])
            if verifier is not None:
                load_verifier(verifier)  # now, not after every draft is generated
        except (GeneratorError, VerifierUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        if verifier is None:
            self.stderr.write("No verifier is promoted (manage.py train_verifier): the 'model' "
                              "rows fall back to the lexical check and the others are judged "
                              "by both checks, which is not independent of them.")
        options["verifier"], options["verifier_described"] = verifier, described

        try:
            domain = owned_domain(options["domain"], "PubMedQA",
                                  "PubMedQA's contexts, owned by manage.py evaluate_answers.")
        except OwnedDomainError as exc:
            raise CommandError(str(exc)) from exc
        try:
            self._run(options, items, test, backends, domain, verifications)
        finally:
            if options["keep"]:
                self.stdout.write(f"Kept the evaluation domain {domain.slug!r} (--keep).")
            else:
                deleted = drop(domain)
                self.stdout.write(f"Removed the evaluation domain {domain.slug!r} "
                                  f"({deleted} chunks); pass --keep to reuse it.")

    def _run(self, options, items, test, backends, domain, verifications) -> None:
        queued = store_contexts(items, domain)
        if queued:
            self.stdout.write(f"Embedding {len(queued)} new PubMedQA contexts in this process.")
            process_with_progress(queued, inline=True, label="Processing")
        ensure_index(domain)

        bar = tqdm(total=len(test) * len(backends), desc="Answering", unit="q",
                   dynamic_ncols=True)
        started = time.monotonic()
        try:
            report = evaluate(test, backends, domain, verifications=verifications,
                              verifier=options["verifier"],
                              on_answer=lambda name: (bar.set_postfix(backend=name),
                                                      bar.update()))
        except (GeneratorError, SearchError, VerifierUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        self.stdout.write(
            f"\nPubMedQA PQA-L test: {len(test)} questions (seed {options['seed']}), "
            f"{len(items)} abstracts in domain {domain.slug}; {time.monotonic() - started:.0f} s"
        )
        self.stdout.write(format_table(report))
        self.stdout.write(f"\nVerifier: {options['verifier_described']}. Citation support "
                          f"judges: {report.judge}.")
        for row in report.rows:
            if row.verification == "none":
                continue
            self.stdout.write(
                f"{row.backend}/{row.verification}: the relevance check withheld "
                f"{row.relevance_abstained} answers ({row.relevance_abstained_gold} of them citing "
                f"the question's own abstract); {row.contradicted} sentences contradicted by a "
                f"cited passage; {row.fallbacks} answers checked by the lexical fallback.")
        self.stdout.write(
            "Best passage similarity (abstention below KMS_ANSWER_MIN_SIMILARITY): PubMedQA "
            "questions " + _show(report.retrieval_similarity) + "; off-topic questions "
            + _show(report.off_topic_similarity) + ". Off-topic questions answered with the "
            "no-answer sentence: " + ", ".join(
                f"{name} {count}/{len(OFF_TOPIC)}"
                for name, count in report.off_topic_abstained.items()
            )
        )
        for example in report.examples:
            self.stdout.write(f"\n[{example['backend']}] {example['question']}\n"
                              f"  draft:    {example['draft'][:400]}\n"
                              f"  verified: {example['verified'][:400]}\n"
                              f"  gold:     {example['gold'][:400]}")
        if options["json"]:
            options["json"].write_text(report.as_json())
            self.stdout.write(f"\nReport written to {options['json']}")


def _show(percentiles: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in percentiles.items())
