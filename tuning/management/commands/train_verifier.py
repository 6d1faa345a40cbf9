"""manage.py train_verifier: train the citation-support verifier on labelled claims."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms.store.models import Domain, ModelRun
from search.management.cli import domain_or_error
from tuning import registry, verifier_cycle
from tuning.data.claims import ClaimsError
from tuning.evaluation.verification import MethodScores, format_scores
from tuning.management.cli import parameter, train_here_or_queue


class Command(BaseCommand):
    help = (
        "Train a cross-encoder that labels (answer sentence, cited passage) as supports / "
        "contradicts / not enough information, from SciFact-format claims; judge it beside "
        "the lexical and embedding checks on held-out claims and promote it if it beats the "
        "check served now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", help="Domain whose answers it verifies (default: the "
                            "only staff domain).")
        parser.add_argument("--dataset", type=Path, default=None,
                            help="Directory with claims_train.jsonl and "
                            "corpus_sentences.jsonl.gz (default: KMS_VERIFIER_DATASET).")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="A training parameter (learning_rate, epochs, window, "
                            "held_out, max_steps, ...).")
        parser.add_argument("--queue", action="store_true",
                            help="Send it to the models queue's worker instead of training here.")

    def handle(self, *args, **options) -> None:
        domain = self._domain(options["domain"])
        params = dict(parameter(item) for item in options["set"])
        try:
            run = verifier_cycle.new_verifier_run(
                domain, options["dataset"] or settings.KMS_VERIFIER_DATASET, params)
        except (ValueError, registry.RegistryError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Run {run.pk}: verifier of {domain.slug} from {run.base_model}")
        trained = train_here_or_queue(
            self, run, options["queue"],
            lambda on_step, on_stage: verifier_cycle.run_verifier_cycle(
                run, on_step=on_step, on_stage=on_stage),
            (ClaimsError, ValueError, registry.RegistryError))
        if trained is not None:
            self._report(trained)

    def _domain(self, slug: str | None) -> Domain:
        if slug:
            return domain_or_error(slug)
        staff = list(Domain.objects.exclude(purpose=Domain.Purpose.EVALUATION)
                     .values_list("slug", flat=True))
        if len(staff) != 1:
            raise CommandError(f"Pass --domain: one of {', '.join(staff) or '(none yet)'}.")
        return domain_or_error(staff[0])

    def _report(self, run: ModelRun) -> None:
        counts, gate = run.data_counts, run.metrics
        self.stdout.write(
            f"Claims: {counts.get('train_claims')} trained on, {counts.get('held_out_claims')} "
            f"held out. Training pairs: {counts.get('train_pairs')}; held-out pairs: "
            f"{counts.get('held_out_pairs')}; contradictions made by rule: "
            f"{counts.get('contradictions')}. {counts.get('steps')} steps in "
            f"{counts.get('training_seconds')} s.")
        if gate:
            rows = [gate["candidate"], gate["served"], *gate.get("others", [])]
            self.stdout.write(format_scores([MethodScores(**row) for row in rows]))
            self.stdout.write(f"Gate (against {gate['served']['method']}): {gate['reason']}")
        style = self.style.SUCCESS if run.state == ModelRun.State.PROMOTED else self.style.WARNING
        self.stdout.write(style(f"Run {run.pk} is {run.get_state_display().lower()}"
                                f"{': ' + run.message.rstrip('.') if run.message else ''}."))
