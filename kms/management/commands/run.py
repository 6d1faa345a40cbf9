"""manage.py run: web, worker, beat and the embedded PostgreSQL/Redis, plus the demo corpus."""

from __future__ import annotations

import os
import signal
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms import embedded, system
from kms.store.models import Domain, ModelRun
from kms.supervisor import ServiceDied, Supervisor
from search.ingestion.demo import load_demo
from search.management.cli import print_summary, process_with_progress


class Command(BaseCommand):
    help = "Run the whole system in the foreground until Ctrl+C (stops everything cleanly)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("KMS_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("KMS_PORT", "8000")))
        parser.add_argument(
            "--concurrency", type=int, default=int(os.environ.get("KMS_WORKER_CONCURRENCY", "2"))
        )
        parser.add_argument("--no-demo", action="store_true", help="Do not load the demo corpus.")

    def handle(self, *args, **options) -> None:
        host, port = options["host"], options["port"]
        if not system.port_free(host, port):
            raise CommandError(f"Port {port} on {host} is in use: pass --port or set KMS_PORT.")
        self.stdout.write(f"Database: {settings.DATABASES['default']['NAME']} via "
                          f"{'DATABASE_URL' if os.environ.get('DATABASE_URL') else 'embedded'}"
                          f" PostgreSQL; broker: {settings.REDIS_URL}")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        username, password = system.ensure_admin_user()

        def terminate(signum, frame) -> None:
            raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl+C

        signal.signal(signal.SIGTERM, terminate)
        supervisor = Supervisor(settings.DATA_DIR / "logs", system.child_environment())
        commands = system.service_commands(host, port, options["concurrency"])
        threads = str(max(1, (os.cpu_count() or 2) // max(1, options["concurrency"])))
        for name, argv in commands.items():
            extra = {"KMS_ENCODER_THREADS": threads} if name in ("worker", "trainer") else None
            log = supervisor.start(name, argv, extra)
            self.stdout.write(f"Started {name} (log: {log})")
        try:
            system.wait_for_http(f"http://{host}:{port}/healthz", 60, supervisor.check)
            if not options["no_demo"]:
                self._load_demo(supervisor)
                self._queue_verifier("healthcare")
            self.stdout.write(self.style.SUCCESS(
                f"\nkms is running: http://{host}:{port}/portal/ (admin: /admin/)  user "
                f"{username}" + (f", password {password}" if password else "")
                + f"\nLogs in {settings.DATA_DIR / 'logs'}. Press Ctrl+C to stop."
                + "\nOther commands against this system: KMS_EMBEDDED=1 "
                f"{os.path.relpath(sys.executable)} manage.py ask \"...\" --domain healthcare --all"
            ))
            supervisor.wait()
        except KeyboardInterrupt:
            self.stdout.write("")
        except (ServiceDied, TimeoutError) as exc:
            raise CommandError(f"{exc}\nStopping everything.") from exc
        finally:
            self.stdout.write("Stopping web, worker, trainer and beat ...")
            supervisor.stop()
            embedded.stop_embedded_redis()
            self.stdout.write("Stopped. The embedded PostgreSQL stops as this process exits.")

    def _load_demo(self, supervisor: Supervisor) -> None:
        self.stdout.write("Waiting for the worker to load the embedding model ...")
        system.wait_for_worker(120, supervisor.check)
        results = load_demo()
        version_ids = [r.version_id for r in results if r.outcome == "queued"]
        state = None
        if version_ids:
            state, seconds = process_with_progress(version_ids, inline=False, label="Demo corpus")
            self.stdout.write(f"Demo corpus: {state.embedded} chunks embedded in {seconds:.1f} s")
        print_summary(self.stdout, results, state, version_ids)

    def _queue_verifier(self, slug: str) -> None:
        """First start: the trainer learns a support verifier for the demo domain, if that
        domain has never had a verifier run and the claims data is present. It serves answers
        under KMS_VERIFY_METHOD=model and judges them in evaluate_answers."""
        domain = Domain.objects.filter(slug=slug).first()
        if domain is None or ModelRun.objects.filter(domain=domain,
                                                     kind=ModelRun.Kind.VERIFIER).exists():
            return
        try:
            call_command("train_verifier", "--domain", slug, "--queue", stdout=self.stdout)
        except CommandError as exc:
            self.stdout.write(f"No support verifier is trained ({exc}). Set "
                              "KMS_VERIFIER_DATASET to a SciFact folder to train one at the "
                              "next start; until then KMS_VERIFY_METHOD=model checks "
                              "answers lexically.")
            return
        except Exception as exc:  # noqa: BLE001 - the broker: the system runs without it
            self.stdout.write(f"Could not queue the support verifier ({exc}); run manage.py "
                              "train_verifier later.")
            return
        self.stdout.write("The trainer is learning a support verifier for the demo domain "
                          "(about 20 minutes; follow it in the admin's model runs). Answers "
                          "use it with KMS_VERIFY_METHOD=model once it is promoted.")
