"""manage.py finetune_generator: fine-tune the local generator on a domain's pairs."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms.store.models import ModelRun
from search.management.cli import domain_or_error
from tuning import generator_cycle, registry
from tuning.data.qa import QADatasetError
from tuning.management.cli import parameter, train_here_or_queue
from tuning.training.generator import GeneratorTrainingError


class Command(BaseCommand):
    help = (
        "Fine-tune a local causal LM (LoRA by default) on a domain's question/answer pairs: "
        "its curated pairs, or --dataset (JSON Lines; PubMedQA's pqal.jsonl as it is). The "
        "candidate and the served model are judged on held-out pairs (decision accuracy from "
        "the label words' probabilities, else gold-answer perplexity); it is promoted, and "
        "then served by the local backend for the domain, only if it is better."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True)
        parser.add_argument("--dataset", type=Path, default=None,
                            help="A JSON Lines file of pairs (default: the curated pairs).")
        parser.add_argument("--base", default=None,
                            help="Checkpoint folder or .gguf file to start from (default: "
                            "KMS_GENERATOR_MODEL, else SmolLM2-135M-Instruct).")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="A training parameter (method, recipe, learning_rate, "
                            "epochs, lora_rank, target_modules, max_steps, ...).")
        parser.add_argument("--queue", action="store_true",
                            help="Send it to the models queue's worker instead of training here.")

    def handle(self, *args, **options) -> None:
        domain = domain_or_error(options["domain"])
        errors = (QADatasetError, GeneratorTrainingError, ValueError, registry.RegistryError)
        try:
            run = generator_cycle.new_generator_run(
                domain, dataset=options["dataset"], base=options["base"],
                params=dict(parameter(item) for item in options["set"]))
        except errors as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Run {run.pk}: generator of {domain.slug} from {run.base_model}")
        trained = train_here_or_queue(
            self, run, options["queue"],
            lambda on_step, on_stage: generator_cycle.run_generator_cycle(
                run, on_step=on_step, on_stage=on_stage), errors)
        if trained is not None:
            self._report(trained)

    def _report(self, run: ModelRun) -> None:
        counts, gate = run.data_counts, run.metrics
        self.stdout.write(f"{counts.get('train_pairs')} pairs trained on, "
                          f"{counts.get('held_out_pairs')} held out; {counts.get('steps')} "
                          f"steps in {counts.get('training_seconds')} s "
                          f"({counts.get('tokens_per_second')} tokens/s).")
        for row in (gate.get("candidate"), gate.get("served")):
            if row:
                self.stdout.write(
                    f"  {row['name']:<12} accuracy {row['accuracy']}  macro-F1 "
                    f"{row['macro_f1']}  perplexity {row['perplexity']}")
        style = self.style.SUCCESS if run.state == ModelRun.State.PROMOTED else self.style.WARNING
        self.stdout.write(style(f"Run {run.pk} is {run.get_state_display().lower()}"
                                f"{': ' + run.message.rstrip('.') if run.message else ''}."))
