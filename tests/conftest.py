"""Shared fixtures: real PostgreSQL (embedded or DATABASE_URL), real Redis, real workers.

The suite runs on ``tests.settings``: its own data, media and index directories and its own
Redis database; ``_developer_data_untouched`` checks that ``.kms-data`` stays as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from kms.access import Access
from kms.store.models import Domain
from kms.system import connected_database_url

ROOT = Path(__file__).resolve().parent.parent
DEVELOPER_DATA = ROOT / ".kms-data"
# Folders of a running `make run` that change whatever the tests do.
LIVE_SERVER_FOLDERS = {"postgres", "redis", "logs"}
# Tests that act for the installation (an operator, evaluation) say so explicitly.
OPERATOR = Access.everything("tests")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.is_dir():
        return {}
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).parts[0] not in LIVE_SERVER_FOLDERS
    }


@pytest.fixture(scope="session", autouse=True)
def _developer_data_untouched() -> Iterator[None]:
    """Nothing of the suite lives in, or writes to, the developer's ``.kms-data``."""
    for name, path in (("KMS_DATA_DIR", settings.DATA_DIR), ("MEDIA_ROOT", settings.MEDIA_ROOT),
                       ("KMS_INDEX_DIR", settings.KMS_INDEX_DIR)):
        assert not Path(path).resolve().is_relative_to(DEVELOPER_DATA), (name, path)
    before = _snapshot(DEVELOPER_DATA)
    yield
    assert _snapshot(DEVELOPER_DATA) == before, "the test suite changed .kms-data"


@pytest.fixture(autouse=True)
def _plain_static_files(settings) -> None:
    """Pages render without ``collectstatic`` (the manifest storage needs it run first)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def domain(db) -> Domain:
    """The migration creates it; transactional tests flush it, so recreate when needed.

    Its BM25 refresh claim is cleared: ids repeat in every run's fresh database, and a claim
    left in Redis by an earlier run would hold this one's refreshes back.
    """
    from search.retrieval.refresh_claims import clear_pending

    domain = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    clear_pending(domain.pk)
    return domain


@pytest.fixture
def corpus(domain: Domain, settings, tmp_path: Path) -> dict:
    """Users of every kind over a small processed corpus (``tests.corpus``)."""
    from tests.corpus import make_corpus

    return make_corpus(domain, settings, tmp_path)


def worker_database_url() -> str:
    """A URL for the test database that another process (a worker) can use."""
    return connected_database_url()


@dataclass
class WorkerProcess:
    """A real ``celery worker`` subprocess bound to the test database and its own queue."""

    queue: str
    log: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self, concurrency: int = 2, timeout: float = 90.0) -> None:
        from kms.celery import app

        hostname = f"{self.queue}-{uuid.uuid4().hex[:4]}@%h"
        with self.log.open("ab") as fh:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "kms", "worker", "--loglevel=INFO",
                 f"--concurrency={concurrency}",
                 f"--queues={self.queue},{self.queue}.models",
                 f"--hostname={hostname}", "--without-mingle", "--without-gossip"],
                cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        name = hostname.replace("%h", os.uname().nodename)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if app.control.ping(destination=[name], timeout=0.5):
                return
        raise RuntimeError(f"worker did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_factory(transactional_db, tmp_path: Path) -> Iterator:
    """Start real worker processes on a queue of this test; all are stopped afterwards."""
    from kms.celery import app

    queue = f"kms-test-{uuid.uuid4().hex[:8]}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    workers: list[WorkerProcess] = []

    def make(**extra_env: str) -> WorkerProcess:
        env = {
            **{name: value for name, value in os.environ.items() if name != "KMS_EMBEDDED"},
            "DATABASE_URL": worker_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "KMS_CELERY_QUEUE": queue,
            "KMS_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "KMS_INDEX_DIR": str(settings.KMS_INDEX_DIR),
            "KMS_MODELS_DIR": str(settings.KMS_MODELS_DIR),
            "KMS_ENCODER_THREADS": "1",
            "DJANGO_SETTINGS_MODULE": "kms.settings",
            **extra_env,
        }
        worker = WorkerProcess(queue, tmp_path / f"worker-{len(workers)}.log", env)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
    app.conf.task_default_queue = previous


@dataclass
class S3Store:
    """A bucket on the local S3-compatible server, and the environment that reaches it."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"KMS_FILE_STORAGE": "s3", "KMS_S3_BUCKET": self.bucket,
                "KMS_S3_ENDPOINT_URL": self.endpoint, "KMS_S3_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "kms-test", "AWS_SECRET_ACCESS_KEY": "kms-test"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="kms-test", aws_secret_access_key="kms-test")

    def object_keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server in its own process, as a separate host's object store would be."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    yield endpoint
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(10)


@pytest.fixture
def s3_store(s3_server: str, settings, monkeypatch) -> S3Store:
    """A fresh bucket, made this test's file storage (as KMS_FILE_STORAGE=s3 would)."""
    store = S3Store(s3_server, f"kms-test-{uuid.uuid4().hex[:8]}")
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    store.client().create_bucket(Bucket=store.bucket)
    settings.KMS_FILE_STORAGE = "s3"
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": store.bucket, "endpoint_url": s3_server,
                    "region_name": "us-east-1", "default_acl": None,
                    "querystring_auth": True, "file_overwrite": False}}}
    return store
