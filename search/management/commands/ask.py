"""manage.py ask "QUESTION" --domain D: a cited answer from the shell, with its sources."""

from __future__ import annotations

import json
from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandError, CommandParser

from search.answering.answers import (
    POLICIES,
    VERIFY_METHODS,
    Answer,
    AnswerOptions,
    GeneratorError,
    SearchError,
    Token,
    stream_answer,
)
from search.answering.generation.backends import BACKENDS
from search.management.cli import access_from_options, add_access_arguments


class Command(BaseCommand):
    help = (
        "Answer a question from a domain's documents, citing passages as [n] and listing "
        "each source's document, version, page and character span."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("question")
        parser.add_argument("--domain", required=True)
        parser.add_argument("--backend", choices=BACKENDS, help="Default: KMS_GENERATOR.")
        parser.add_argument("--verify", choices=VERIFY_METHODS, help="Default: KMS_VERIFY_METHOD.")
        parser.add_argument("--policy", choices=POLICIES, help="Unsupported sentences: "
                            "remove them, or keep them flagged and uncited.")
        parser.add_argument("--stream", action="store_true", help="Print the draft as it is "
                            "generated, then the verified answer.")
        parser.add_argument("--json", action="store_true", help="Print the answer as JSON.")
        add_access_arguments(parser, "Answer")

    def handle(self, *args, **options) -> None:
        access = access_from_options(options, "ask")
        try:
            settings_options = AnswerOptions.from_settings(
                verify=options["verify"], policy=options["policy"]
            )
            result = None
            for event in stream_answer(
                options["question"], domain=options["domain"], access=access,
                generator=options["backend"], options=settings_options,
            ):
                if isinstance(event, Token):
                    if options["stream"] and not options["json"]:
                        self.stdout.write(event.text, ending="")
                        self.stdout.flush()
                else:
                    result = event
        except (SearchError, GeneratorError) as exc:
            raise CommandError(str(exc)) from exc
        assert result is not None
        if options["json"]:
            self.stdout.write(json.dumps(_as_json(result), indent=2, ensure_ascii=False))
            return
        if options["stream"]:
            self.stdout.write("\n\n--- verified answer ---")
        self._print(result)

    def _print(self, result: Answer) -> None:
        self.stdout.write(result.text)
        if result.abstained:
            self.stdout.write(f"({result.reason})")
        for claim in result.flagged:
            action = "removed" if result.abstained or not claim.kept else "kept, no citation"
            what = (f"contradicted by [{', '.join(map(str, claim.contradicted))}]"
                    if claim.contradicted else "unsupported")
            self.stdout.write(f"  {what}, {action} (score {claim.score:.2f}): {claim.text}")
        for claim in result.claims:
            if claim.attributed and claim.kept:
                self.stdout.write(f"  cited by the check, not the generator: {claim.text}")
        if result.sources:
            self.stdout.write("\nSources:")
        for source in result.sources:
            page = ""
            if source.page:
                page = f", p. {source.page}"
                if source.page_end and source.page_end != source.page:
                    page += f"-{source.page_end}"
            heading = f" > {source.heading}" if source.heading else ""
            self.stdout.write(
                f"  [{source.number}] {source.title}{heading} (document {source.document_id}, "
                f"version {source.version_id}{page}, characters {source.start_offset}-"
                f"{source.end_offset})"
            )
        times = ", ".join(f"{name} {ms:.0f} ms" for name, ms in result.timings_ms.items())
        self.stdout.write(f"\n{result.backend}, verification {result.verification}: {times}")
        if result.verification_note:
            self.stdout.write(result.verification_note)


def _as_json(result: Answer) -> dict:
    data = asdict(result)
    data.pop("passage_texts")
    return data
