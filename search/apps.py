from django.apps import AppConfig
from django.core import checks


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Ingestion and search"

    def ready(self) -> None:
        checks.register(check_embedding_model)
        # The task modules connect the work signals of search.ingestion.signals to Celery.
        from search.ingestion import tasks as ingestion_tasks  # noqa: F401
        from search.retrieval import tasks as retrieval_tasks  # noqa: F401


def check_embedding_model(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Fail ``manage.py check`` / ``run`` early when the embedding model is missing."""
    from search.ingestion.embedding import ModelNotFoundError, checked_model_path

    try:
        checked_model_path()
    except ModelNotFoundError as exc:
        return [checks.Error(str(exc), id="kms.E001")]
    return []
