"""Bringing the whole system up on one machine: the processes, the admin user, readiness."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
import urllib.request
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection


def service_commands(host: str, port: int, concurrency: int) -> dict[str, list[str]]:
    """The argv of each long-running process (the same ones docker/compose.yaml runs)."""
    python = sys.executable
    return {
        "worker": [python, "-m", "celery", "-A", "kms", "worker", "--loglevel=INFO",
                   f"--concurrency={concurrency}", "--hostname=kms-worker@%h",
                   f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}"],
        # training and re-embedding, one at a time, beside ingestion
        "trainer": [python, "-m", "celery", "-A", "kms", "worker", "--loglevel=INFO",
                    "--concurrency=1", "--hostname=kms-trainer@%h",
                    f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}.models"],
        # its schedule is in the database (django-celery-beat), edited in the admin
        "beat": [python, "-m", "celery", "-A", "kms", "beat", "--loglevel=INFO"],
        "web": [python, "-m", "gunicorn", "kms.wsgi:application", f"--bind={host}:{port}",
                "--workers=2", "--timeout=120", "--access-logfile=-"],
    }


def child_environment() -> dict[str, str]:
    """Children reach the same (possibly embedded) PostgreSQL and Redis as this process.

    They get the URLs, never the permission to start servers of their own.
    """
    parent = {name: value for name, value in os.environ.items() if name != "KMS_EMBEDDED"}
    return {
        **parent,
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "kms.settings",
        "KMS_DATA_DIR": str(settings.DATA_DIR),
    }


def connected_database_url() -> str:
    """The URL of the database this process is connected to (in the suite, the test
    database, which ``DATABASE_URL`` does not name), for a child process to use."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = quote(db.get("HOST") or db.get("OPTIONS", {}).get("host", ""), safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{user}{password}@{host}{port}/{db['NAME']}"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_admin_user() -> tuple[str, str | None]:
    """Create the ``admin`` superuser on first start; returns (username, password if known).

    The password comes from KMS_ADMIN_PASSWORD, else is generated once and kept (mode 600)
    in the data dir, so it is never a default anyone could guess.
    """
    username = os.environ.get("KMS_ADMIN_USER", "admin")
    password_file = settings.DATA_DIR / "admin-password.txt"
    password = os.environ.get("KMS_ADMIN_PASSWORD")
    if not password and password_file.exists():
        password = password_file.read_text().strip()
    user_model = get_user_model()
    if not user_model.objects.filter(username=username).exists():
        if not password:
            password = secrets.token_urlsafe(12)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        user_model.objects.create_superuser(username=username, email="", password=password)
    return username, password


def wait_for_http(url: str, timeout: float, check: callable) -> None:
    """Poll ``url`` until it answers 200, calling ``check`` (which raises if a process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def wait_for_worker(timeout: float, check: callable) -> None:
    from kms.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if app.control.ping(timeout=1.0):
            return
    raise TimeoutError(f"No Celery worker answered within {timeout:.0f} s")
