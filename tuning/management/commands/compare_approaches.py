"""manage.py compare_approaches: RAG, fine-tuning or both, on the domain's held-out pairs."""

from __future__ import annotations

import random
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from kms.store.models import ModelRun
from search.answering.generation.local import conversion_cache_dir
from search.answering.verifier_runs import verifier_directory
from search.evaluation.answers import QAItem, ensure_index, judges_for, store_contexts
from search.evaluation.domains import OwnedDomainError, drop, owned_domain
from search.management.cli import domain_or_error, process_with_progress
from tuning import comparison
from tuning.data.qa import QADatasetError, QAPair, held_out
from tuning.generator_cycle import base_model, pairs_for
from tuning.params import GeneratorParams
from tuning.training.generator import GeneratorTrainingError, model_directory


class Command(BaseCommand):
    help = (
        "Answer the domain's held-out questions with the base and the fine-tuned generator, "
        "closed-book and with retrieval, and with the extractive backend; print decision "
        "accuracy and macro precision/recall/F1 (from the label words' probabilities), "
        "gold-answer perplexity, BLEU and ROUGE-L, citation precision/recall, gold-source "
        "share, abstention, latency and training time; write JSON, Markdown and a PNG chart."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True, help="Whose generator runs compare.")
        parser.add_argument("--dataset", type=Path, default=None,
                            help="Pairs with contexts (JSON Lines, PubMedQA's pqal.jsonl); "
                            "default: the domain's curated pairs over its own documents.")
        parser.add_argument("--limit", type=int, default=0,
                            help="Held-out questions to score (0: all), the same per seed.")
        parser.add_argument("--generate", type=int, default=20,
                            help="Of those, how many each model answers in full (BLEU, "
                            "ROUGE-L, citations, latency); generation is the slow part.")
        parser.add_argument("--seed", type=int, default=13)
        parser.add_argument("--closed-book-run", type=int, default=None,
                            help="The fine-tuned closed-book run (default: the newest).")
        parser.add_argument("--rag-run", type=int, default=None,
                            help="The fine-tuned retrieval-augmented run (default: the "
                            "promoted one, else the newest).")
        parser.add_argument("--base", default=None, help="The base model (default: the "
                            "runs' own base, else KMS_GENERATOR_MODEL or SmolLM2).")
        parser.add_argument("--out", type=Path, default=None,
                            help="Folder for the report (default: the data dir's reports/).")
        parser.add_argument("--keep", action="store_true",
                            help="Keep the evaluation domain of the dataset's contexts.")

    def handle(self, *args, **options) -> None:
        domain = domain_or_error(options["domain"])
        try:
            pairs = pairs_for(domain, str(options["dataset"]) if options["dataset"] else None)
        except QADatasetError as exc:
            raise CommandError(str(exc)) from exc
        closed = _run(domain, options["closed_book_run"], "closed_book")
        rag = _run(domain, options["rag_run"], "rag")
        anchor = rag or closed
        # The pairs the runs held out (their share; the dataset's split where it has one).
        share = (anchor.params if anchor else {}).get("held_out", GeneratorParams().held_out)
        _, held = held_out(pairs, share)
        if options["limit"]:
            held = sorted(random.Random(options["seed"]).sample(
                held, min(options["limit"], len(held))), key=lambda p: p.id)
        if not held:
            raise CommandError("No held-out pairs to compare on.")
        try:
            base = model_directory(base_model(options["base"] or (anchor.base_model if anchor
                                                                  else None)),
                                   conversion_cache_dir())
        except GeneratorTrainingError as exc:
            raise CommandError(str(exc)) from exc
        configurations = [comparison.Configuration("base, closed-book", base, False),
                          comparison.Configuration("base + RAG", base, True)]
        for run, retrieval, name in ((closed, False, "fine-tuned, closed-book"),
                                     (rag, True, "fine-tuned + RAG")):
            if run is None:
                self.stderr.write(f"No {name} run of {domain.slug}: its row is left out "
                                  "(manage.py finetune_generator).")
            else:
                configurations.append(comparison.Configuration(
                    f"{name} (run {run.pk})", Path(run.model_dir), retrieval,
                    run.data_counts.get("training_seconds")))
        configurations.append(comparison.Configuration("extractive", None, True))

        with_contexts = any(p.contexts for p in pairs)
        target = self._documents(domain, pairs) if with_contexts else domain
        verifier, described = verifier_directory()
        judge = judges_for(verifier)[settings.KMS_VERIFY_METHOD if settings.KMS_VERIFY_METHOD
                                     in ("none", "embedding", "lexical", "model") else "lexical"]
        bar = tqdm(total=len(configurations), desc="Comparing", unit="row", dynamic_ncols=True)
        try:
            report = comparison.compare(
                held, configurations, target, sample=min(options["generate"], len(held)),
                judge=judge, judge_name=getattr(judge, "name", described),
                on_step=lambda name: (bar.set_postfix_str(name), bar.update()))
        finally:
            bar.close()
            if with_contexts and not options["keep"]:
                drop(target)
        folder = options["out"] or settings.DATA_DIR / "reports" / domain.slug
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "comparison.json").write_text(report.as_json())
        table = comparison.markdown(report)
        (folder / "comparison.md").write_text(table + "\n")
        comparison.chart(report, folder / "comparison.png")
        self.stdout.write(f"\n{report.questions} held-out questions of {domain.slug} "
                          f"({report.generated} answered in full), {report.seconds:.0f} s; "
                          f"citations judged by {report.judge}.\n")
        self.stdout.write(table)
        self.stdout.write(f"\nWritten to {folder}/comparison.json, .md and .png")

    def _documents(self, domain, pairs: list[QAPair]):
        """The pairs' contexts as documents of an evaluation domain of this command's."""
        try:
            target = owned_domain(f"{domain.slug}-comparison", f"{domain.name} comparison",
                                  "Contexts of a dataset, owned by compare_approaches.")
        except OwnedDomainError as exc:
            raise CommandError(str(exc)) from exc
        items = [QAItem(p.id, p.split or "train", p.question, p.contexts, (), p.answer,
                        p.decision or "") for p in pairs if p.contexts]
        queued = store_contexts(items, target)
        if queued:
            self.stdout.write(f"Embedding {len(queued)} contexts in this process.")
            process_with_progress(queued, inline=True, label="Processing")
        ensure_index(target)
        return target


def _run(domain, chosen: int | None, recipe: str) -> ModelRun | None:
    runs = ModelRun.objects.filter(domain=domain, kind=ModelRun.Kind.GENERATOR,
                                   params__recipe=recipe).exclude(model_dir="")
    if chosen is not None:
        run = runs.filter(pk=chosen).first()
        if run is None:
            raise CommandError(f"No trained {recipe} generator run {chosen} of {domain.slug}.")
        return run
    return (runs.filter(state=ModelRun.State.PROMOTED).first()
            or runs.exclude(state=ModelRun.State.FAILED).order_by("-created_at").first())
