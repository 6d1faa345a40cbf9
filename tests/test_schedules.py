"""Beat's schedule lives in the database (django-celery-beat): created with the database,
edited in the admin, and what a real beat process sends; periodic jobs never double work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from kms.schedules import install_periodic_tasks
from kms.store.models import DocumentVersion, Domain, Status
from search.ingestion import pipeline
from search.ingestion.documents import add_document
from tests.conftest import OPERATOR, ROOT, worker_database_url


@pytest.mark.django_db
def test_a_new_database_has_the_periodic_tasks_and_keeps_what_the_admin_changed() -> None:
    tasks = dict(PeriodicTask.objects.values_list("name", "task"))
    assert tasks == {name: task for name, (task, _) in settings.KMS_PERIODIC_TASKS.items()}
    tuning = PeriodicTask.objects.get(name="tune-due-domains")
    assert tuning.interval.every == settings.KMS_PERIODIC_TASKS["tune-due-domains"][1]

    daily, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    tuning.interval, tuning.enabled = daily, False  # as an operator would in the admin
    tuning.save()
    PeriodicTask.objects.filter(name="fill-embedding-spaces").delete()

    assert install_periodic_tasks() == ["fill-embedding-spaces"]
    tuning.refresh_from_db()
    assert (tuning.interval_id, tuning.enabled) == (daily.pk, False)
    with pytest.raises(ValueError, match="every 1 s or more"):
        install_periodic_tasks({"broken": ("tuning.tasks.tune_due_domains", 0)})


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_sends_tasks_on_the_schedule_edited_in_the_database(
    worker_factory, domain: Domain, tmp_path
) -> None:
    """A version whose message was lost is sent again by beat once its interval is edited
    down from 300 s to 1 s in the database: beat reads the schedule there."""
    with transaction.atomic():
        lost = add_document(domain, uploader=OPERATOR, source="lost.md", filename="lost.md",
                            content=b"# Falls\n\nCheck the bed rails every shift.\n", queue=False)
    every_second, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name="requeue-stalled-documents").update(interval=every_second)
    PeriodicTask.objects.exclude(name="requeue-stalled-documents").update(enabled=False)

    worker = worker_factory(KMS_STALLED_AFTER_SECONDS="0")
    worker.start()
    log = tmp_path / "beat.log"
    with log.open("ab") as fh:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kms", "beat", "--loglevel=INFO"],
            cwd=ROOT, env=worker.env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            status = DocumentVersion.objects.get(pk=lost.version_id).status
            if status == Status.READY:
                break
            assert beat.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert status == Status.READY, log.read_text()[-3000:]
        sent = PeriodicTask.objects.get(name="requeue-stalled-documents")
        assert sent.total_run_count >= 1 and sent.last_run_at is not None
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(30)


@pytest.mark.django_db(transaction=True)
def test_overlapping_requeues_never_claim_one_version_twice(domain: Domain) -> None:
    """Two beats (or a slow run and the next) re-sending lost versions at the same time."""
    with transaction.atomic():
        lost = [add_document(domain, uploader=OPERATOR, source=f"lost-{n}.md",
                             filename=f"lost-{n}.md", content=f"# Lost {n}\n\nText {n}.\n".encode(),
                             queue=False) for n in range(3)]
    ids = sorted(result.version_id for result in lost)
    DocumentVersion.objects.filter(pk__in=ids).update(
        queued_at=timezone.now() - timedelta(hours=1))
    other = psycopg.connect(worker_database_url())  # the other requeue, mid-claim
    try:
        other.execute(f"SELECT id FROM {DocumentVersion._meta.db_table} WHERE id = %s "
                      "FOR UPDATE", [ids[0]])
        assert pipeline.claim_stalled_versions(600) == ids[1:]
        other.rollback()
    finally:
        other.close()
    assert pipeline.claim_stalled_versions(600) == ids[:1]
    assert pipeline.claim_stalled_versions(600) == []  # each was claimed once
