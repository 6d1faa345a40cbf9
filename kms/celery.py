"""The Celery app: configured from Django settings (``CELERY_*``), tasks found in each app.

Model work (training, filling an embedding space) goes to the ``<queue>.models`` queue, so
ingestion never waits behind it; ``models_queue`` names it for workers and tests.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kms.settings")

app = Celery("kms")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

MODEL_TASKS = {"search.ingestion.tasks.fill_embedding_spaces", "tuning.tasks.train_run",
               "tuning.tasks.tune_due_domains"}


def models_queue() -> str:
    return f"{app.conf.task_default_queue}.models"


def route_models(name: str, args, kwargs, options, task=None, **_) -> dict | None:
    """Model tasks to the models queue (read at send time: tests change the default queue)."""
    return {"queue": models_queue()} if name in MODEL_TASKS else None


app.conf.task_routes = (route_models,)
