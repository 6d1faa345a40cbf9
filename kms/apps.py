from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class KmsConfig(AppConfig):
    name = "kms"
    verbose_name = "kms"

    def ready(self) -> None:
        # Sent per app with models; beat's own app is the one whose tables this needs.
        post_migrate.connect(_install_periodic_tasks,
                             sender=apps.get_app_config("django_celery_beat"))


def _install_periodic_tasks(using: str = "default", **_) -> None:
    """After ``migrate`` (and a test database's flush): beat's periodic tasks exist."""
    from kms.schedules import install_periodic_tasks

    if using == "default":
        install_periodic_tasks()
