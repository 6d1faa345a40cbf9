"""manage.py publish_models: share the trained runs on this node through KMS_MODEL_STORAGE."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kms.store.models import ModelRun
from tuning import registry


class Command(BaseCommand):
    help = ("Publish every run whose files are on this node to the model store, e.g. after "
            "upgrading to a release that shares models through it, or after the store was down.")

    def handle(self, *args, **options) -> None:
        if not settings.KMS_MODEL_STORAGE:
            raise CommandError("KMS_MODEL_STORAGE is not set: there is no model store to "
                               "publish to (set it to a STORAGES alias such as default).")
        runs = ModelRun.objects.exclude(model_dir="").exclude(state=ModelRun.State.FAILED)
        published, skipped = registry.publish_runs(runs.order_by("pk"))
        self.stdout.write(f"Published {published} runs; {skipped} had no files here or "
                          "could not be published (see the log and each run's message).")
