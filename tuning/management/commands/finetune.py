"""manage.py finetune --domain D --model embedder|reranker: one tuning cycle in the foreground."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms.store.models import ModelRun
from search.ingestion.beir import DatasetError
from search.management.cli import domain_or_error
from tuning import cycle, registry
from tuning.management.cli import parameter, train_here_or_queue


class Command(BaseCommand):
    help = (
        "Fine-tune a domain's embedding model or reranker on its pairs (dataset files and "
        "synthetic pairs from its documents), judge it against the served model on held-out "
        "queries it never saw, and promote it only if it passes the gate. A promoted "
        "embedder's vectors are built beside the served ones (the models queue's worker, or "
        "`manage.py reembed`), and search switches when they are complete."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True)
        parser.add_argument("--model", choices=cycle.RETRIEVAL_KINDS, default="embedder")
        parser.add_argument("--dataset", type=Path,
                            help="A BEIR-layout directory whose corpus was imported with "
                                 "import_beir into this domain: its queries and qrels.")
        parser.add_argument("--split", default="train", help="Its qrels split (default train).")
        pairs = parser.add_mutually_exclusive_group()
        pairs.add_argument("--no-synthetic", action="store_true",
                           help="Only dataset pairs (no pairs made from the documents).")
        pairs.add_argument("--synthetic-only", action="store_true",
                           help="Label-free: only pairs made from the documents, even where "
                                "the domain's options name a dataset.")
        parser.add_argument("--synthetic-limit", type=int, help="At most this many synthetic "
                            "pairs (default KMS_TUNING_SYNTHETIC_LIMIT).")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="A training parameter for this run (JSON value), e.g. "
                                 "--set epochs=2 --set learning_rate=3e-5.")
        parser.add_argument("--queue", action="store_true",
                            help="Send it to the models queue's worker instead of training here.")

    def handle(self, *args, **options) -> None:
        domain = domain_or_error(options["domain"])
        params = dict(parameter(item) for item in options["set"])
        if options["synthetic_only"] and options["dataset"]:
            raise CommandError("--synthetic-only trains without a dataset; drop --dataset.")
        try:
            data = cycle.DataOptions.for_domain(
                domain, dataset_dir=options["dataset"], split=options["split"],
                synthetic=False if options["no_synthetic"] else None,
                real_pairs=False if options["synthetic_only"] else None,
                synthetic_limit=options["synthetic_limit"])
            run = cycle.new_run(domain, options["model"], params, data)
        except (ValueError, registry.RegistryError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Run {run.pk}: {run.kind} of {domain.slug} from {run.base_model}")
        trained = train_here_or_queue(
            self, run, options["queue"],
            lambda on_step, on_stage: cycle.run_cycle(run, data, on_step=on_step,
                                                      on_stage=on_stage),
            (cycle.CycleError, DatasetError, registry.RegistryError))
        if trained is not None:
            self._report(trained)

    def _report(self, run: ModelRun) -> None:
        counts = run.data_counts
        gate = run.metrics
        self.stdout.write(f"Pairs: {json.dumps(counts.get('by_source', {}))}, "
                          f"{counts.get('train_pairs')} trained on "
                          f"({counts.get('with_negatives', 0)} with hard negatives), "
                          f"{counts.get('held_out_queries')} held-out queries "
                          f"({counts.get('held_out_from')}); {counts.get('steps')} steps in "
                          f"{counts.get('training_seconds')} s.")
        if gate:
            self.stdout.write(
                f"Gate: candidate nDCG@10 {gate['candidate']['ndcg@10']:.4f} / Recall@100 "
                f"{gate['candidate']['recall@100']:.4f}; served "
                f"{gate['served']['ndcg@10']:.4f} / {gate['served']['recall@100']:.4f} "
                f"(margin {gate['margin']}). {gate['reason']}")
            chosen = gate.get("chosen") or {}
            if "weight" in chosen:
                tried = ", ".join(f"{w}: {m['ndcg@10']:.4f}"
                                  for w, m in chosen.get("tried", {}).items())
                self.stdout.write(f"Reranker weight {chosen['weight']:g} at depth "
                                  f"{chosen.get('depth')} (nDCG@10 by weight: {tried}).")
        style = self.style.SUCCESS if run.state == ModelRun.State.PROMOTED else self.style.WARNING
        self.stdout.write(style(f"Run {run.pk} is {run.get_state_display().lower()}"
                                f"{': ' + run.message.rstrip('.') if run.message else ''}."))
        if run.state == ModelRun.State.PROMOTED and run.kind == ModelRun.Kind.EMBEDDER:
            run.domain.refresh_from_db()
            if run.domain.next_space_id:
                self.stdout.write("Its vectors are being built beside the served ones; run "
                                  f"`manage.py reembed --domain {run.domain.slug}` to do it "
                                  "here, or let the models queue's worker do it.")

