from django.apps import AppConfig
from django.core import checks


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Ingestion and search"

    def ready(self) -> None:
        checks.register(check_embedding_model)
        checks.register(check_stalled_after_time_limit)
        # The task modules connect the work signals of search.ingestion.signals to Celery.
        from search.ingestion import tasks as ingestion_tasks  # noqa: F401
        from search.retrieval import tasks as retrieval_tasks  # noqa: F401


def check_embedding_model(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Fail ``manage.py check`` / ``run`` early when the embedding model or backend is wrong."""
    from django.conf import settings

    from search.ingestion.embedding import ModelNotFoundError, checked_model_path
    from search.ingestion.encoders import BACKENDS

    errors = []
    try:
        checked_model_path()
    except ModelNotFoundError as exc:
        errors.append(checks.Error(str(exc), id="kms.E001"))
    if settings.KMS_EMBEDDING_BACKEND not in BACKENDS:
        errors.append(checks.Error(
            f"KMS_EMBEDDING_BACKEND={settings.KMS_EMBEDDING_BACKEND!r} is not a backend.",
            hint=f"Use one of {', '.join(BACKENDS)}.", id="kms.E002",
        ))
    return errors


def check_stalled_after_time_limit(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Beat must not take a task that is still within its time limit for a lost one."""
    from django.conf import settings

    if settings.KMS_STALLED_AFTER_SECONDS <= settings.CELERY_TASK_TIME_LIMIT:
        return [checks.Warning(
            f"KMS_STALLED_AFTER_SECONDS ({settings.KMS_STALLED_AFTER_SECONDS}) is not longer "
            f"than the task time limit ({settings.CELERY_TASK_TIME_LIMIT} s): beat would send "
            "work that is still running again.",
            hint="Raise KMS_STALLED_AFTER_SECONDS or lower KMS_TASK_TIME_LIMIT_SECONDS.",
            id="kms.W002",
        )]
    return []
