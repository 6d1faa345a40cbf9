"""Beat's periodic tasks, kept in the database by django-celery-beat and edited in the admin.

A new database gets ``KMS_PERIODIC_TASKS``; an entry that exists is left as it is, so what an
operator changed or disabled in the admin survives migrations and restarts.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask


def install_periodic_tasks(tasks: dict[str, tuple[str, int]] | None = None) -> list[str]:
    """Creates the periodic tasks that are missing; returns the names it created."""
    wanted = settings.KMS_PERIODIC_TASKS if tasks is None else tasks
    created = []
    with transaction.atomic():
        existing = set(PeriodicTask.objects.filter(name__in=wanted).values_list("name", flat=True))
        for name, (task, every) in wanted.items():
            if name in existing:
                continue
            if every <= 0:
                raise ValueError(f"Periodic task {name} must run every 1 s or more, not {every}.")
            interval, _ = IntervalSchedule.objects.get_or_create(
                every=every, period=IntervalSchedule.SECONDS)
            PeriodicTask.objects.create(name=name, task=task, interval=interval)
            created.append(name)
    return created
