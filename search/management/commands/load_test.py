"""manage.py load_test: the running system's search API under concurrent clients (locust)."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from kms.access import Access, visible_domains
from kms.tokens import issue_token, revoke_token
from search.evaluation import load
from search.management.cli import named_user

SHOWN_FAILURES = 5


class Command(BaseCommand):
    help = (
        "Load-test the running system (`make run`) with locust: --searchers clients calling "
        "GET /api/v1/search and --askers calling POST /api/v1/ask for --seconds, each with "
        "its own API token (issued for --user, revoked afterwards). Prints requests/s, "
        "failures and p50/p95 latency per endpoint; fails when any request failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The system's web.")
        parser.add_argument("--domain", default="healthcare", help="Searched and asked.")
        parser.add_argument("--searchers", type=int, default=20)
        parser.add_argument("--askers", type=int, default=5)
        parser.add_argument("--seconds", type=int, default=60)
        parser.add_argument("--user", default=None,
                            help="Whose tokens the clients use (default: the first active "
                            "superuser, e.g. make run's admin).")
        parser.add_argument("--queries", type=Path, default=None,
                            help="A JSON list of search queries (default: the demo corpus's).")
        parser.add_argument("--questions", type=Path, default=None,
                            help="A JSON list of questions to ask (default: the demo's).")
        parser.add_argument("--rate", type=float, default=None,
                            help="Most requests per second per client (default: "
                            f"{load.RATE_MARGIN:.0%} of KMS_API_RATE, so none is throttled).")
        parser.add_argument("--no-warm-up", action="store_true",
                            help="Measure from cold: without a few searches and asks first, "
                            "each web worker's first request loads its models (seconds).")
        parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")

    def handle(self, *args, **options) -> None:
        url: str = options["url"].rstrip("/")
        searchers, askers, seconds = options["searchers"], options["askers"], options["seconds"]
        if searchers < 0 or askers < 0 or searchers + askers < 1 or seconds < 1:
            raise CommandError("Run at least one searcher or asker for at least one second.")
        try:
            load.check_health(url)
            rate = options["rate"] or load.client_rate(settings.KMS_API_RATE)
        except load.LoadError as exc:
            raise CommandError(str(exc)) from exc
        user = self._user(options["user"], options["domain"])
        queries, questions = _texts(options["queries"]), _texts(options["questions"])
        clients = searchers + askers
        self.stdout.write(f"{searchers} searchers and {askers} askers on {url} "
                          f"(domain {options['domain']}, tokens of {user.get_username()}, at "
                          f"most {rate:g} requests/s each) for {seconds} s ...")
        name = f"load_test {timezone.now():%Y-%m-%d %H:%M:%S}"
        tokens = []
        try:
            secrets = []
            for number in range(1, clients + 1):
                token, secret = issue_token(user, f"{name} client {number}", days=1)
                tokens.append(token)
                secrets.append(secret)
            if not options["no_warm_up"]:
                self._warm_up(url, secrets[0], options["domain"], queries, questions)
            report = self._run(url, secrets, options, rate, queries, questions)
        finally:
            for token in tokens:
                revoke_token(token)
            if tokens:
                self.stdout.write(f"Revoked the {len(tokens)} load-test tokens.")
        self._print(report)
        if options["json"]:
            options["json"].parent.mkdir(parents=True, exist_ok=True)
            options["json"].write_text(json.dumps(report.as_dict(), indent=2))
            self.stdout.write(f"Wrote {options['json']}")
        if report.failed:
            raise CommandError(f"{report.failed} requests failed; the first failures:\n  "
                               + "\n  ".join(report.failures[:SHOWN_FAILURES]))

    def _user(self, username: str | None, domain: str):
        if username:
            user = named_user(username)
            if not user.is_active:
                raise CommandError(f"{username!r} is inactive: their tokens would be refused.")
        else:
            user = get_user_model().objects.filter(is_superuser=True, is_active=True).order_by(
                "pk").first()
            if user is None:
                raise CommandError("No active superuser (make run creates 'admin'): pass "
                                   "--user NAME.")
        if not visible_domains(Access.for_user(user)).filter(slug=domain).exists():
            raise CommandError(f"{user.get_username()!r} cannot search the domain {domain!r} "
                               "(no such domain, or not a member): pass --domain or --user.")
        return user

    def _warm_up(self, url: str, secret: str, domain: str, queries: list[str] | None,
                 questions: list[str] | None) -> None:
        texts = {"query": queries[0]} if queries else {}
        if questions:
            texts["question"] = questions[0]
        self.stdout.write("Warming up the web workers (a few searches and asks) ...")
        try:
            seconds = load.warm_up(url, secret, domain, **texts)
        except load.LoadError as exc:
            raise CommandError(f"{exc} Nothing was measured.") from exc
        self.stdout.write(f"Warmed up in {seconds:.1f} s.")

    def _run(self, url: str, secrets: list[str], options: dict, rate: float,
             queries: list[str] | None, questions: list[str] | None) -> load.LoadReport:
        seconds = options["seconds"]
        bar = tqdm(total=seconds, desc="Load test", unit="s", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} s")

        def tick(elapsed: float) -> None:
            bar.n = min(elapsed, seconds)
            bar.refresh()

        try:
            return load.run_load(url, secrets, domain=options["domain"],
                                 searchers=options["searchers"], askers=options["askers"],
                                 seconds=seconds, rate=rate, queries=queries,
                                 questions=questions, on_tick=tick)
        except load.LoadError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()

    def _print(self, report: load.LoadReport) -> None:
        total = report.total
        self.stdout.write("")
        self.stdout.write(f"{total.requests:,} requests, {total.requests_per_second:,.1f} "
                          f"requests/s, {report.failed:,} failed "
                          f"({report.searchers} searchers, {report.askers} askers, "
                          f"{report.seconds} s on {report.url})")
        self.stdout.write("")
        self.stdout.write(load.format_table(report))
        for name in load.capped(report):
            self.stdout.write(f"\n{name}: the clients' own limit of {report.client_rate:g} "
                              "requests/s each bounded the throughput, not the system; "
                              "raise KMS_API_RATE and --rate to measure more.")


def _texts(path: Path | None) -> list[str] | None:
    """A JSON list of texts from ``--queries`` / ``--questions``; None: the defaults."""
    if path is None:
        return None
    try:
        texts = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(texts, list) or not texts or not all(
            isinstance(text, str) and text.strip() for text in texts):
        raise CommandError(f"{path} must be a JSON list of non-empty strings.")
    return texts
