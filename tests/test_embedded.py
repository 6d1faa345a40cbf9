"""Embedded services for machines without PostgreSQL/Redis, and the demo corpus."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from django.db import connection

from kms import embedded
from search.ingestion.demo import demo_dir
from search.ingestion.parsing import parse
from tests.conftest import ROOT


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_falls_back_to_an_embedded_server(tmp_path: Path) -> None:
    port = closed_port()
    assert not embedded.local_redis_answers("127.0.0.1", port)
    url = embedded.redis_url(tmp_path, local=("127.0.0.1", port))
    assert url.startswith("redis+socket://")
    client = redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    assert client.ping()
    client.set("kms", "ok")
    assert client.get("kms") == b"ok"
    client.close()
    embedded.stop_embedded_redis()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=url.removeprefix("redis+socket://")).ping()


def test_database_has_pgvector(db) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)


def test_every_demo_file_parses_and_the_manifest_points_at_real_files() -> None:
    root = demo_dir()
    files = [p for p in root.rglob("*") if p.is_file() and p.parent != root]
    assert len(files) >= 60
    for path in files:
        parsed = parse(path.read_bytes(), path.name)
        assert parsed.blocks, path
    manifest = json.loads((root / "manifest.json").read_text())
    for source, entry in manifest.items():
        assert (root / source).is_file(), source
        assert entry["access_groups"], source


def service_free_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without the service URLs or the permission to start servers."""
    removed = {"DATABASE_URL", "REDIS_URL", "KMS_EMBEDDED", "DJANGO_SETTINGS_MODULE"}
    env = {name: value for name, value in os.environ.items() if name not in removed}
    return {**env, "KMS_DATA_DIR": str(data_dir), **extra}


def test_a_process_without_the_urls_stops_and_names_the_setting(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, timeout=120,
                            env=service_free_environment(tmp_path), capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr and "KMS_EMBEDDED=1" in result.stderr
    assert not (tmp_path / "postgres").exists()  # no empty database of its own
    redis_only = service_free_environment(tmp_path, DATABASE_URL="postgresql://x@db.invalid/x")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, timeout=120,
                            env=redis_only, capture_output=True, text=True)
    assert result.returncode != 0 and "REDIS_URL is not set" in result.stderr


def test_a_one_off_command_leaves_no_embedded_server_behind(tmp_path: Path) -> None:
    env = service_free_environment(tmp_path, KMS_EMBEDDED="1",
                                   REDIS_URL=settings.REDIS_URL)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.db import connection; connection.ensure_connection(); print('connected')"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0 and "connected" in result.stdout, result.stderr
    pgdata = str(tmp_path / "postgres")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and running_postgres(pgdata):
        time.sleep(0.5)
    assert not running_postgres(pgdata)


def running_postgres(pgdata: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "postgres" in (process.info["name"] or "") and pgdata in cmdline:
            found.append(process)
    return found


def _settings_of(tmp_path: Path, code: str, **extra: str) -> subprocess.CompletedProcess:
    env = service_free_environment(tmp_path, DATABASE_URL="postgresql://x@db.invalid/x",
                                   REDIS_URL="redis://127.0.0.1:1/0",
                                   DJANGO_SETTINGS_MODULE="kms.settings", **extra)
    return subprocess.run([sys.executable, "-c", f"from django.conf import settings; {code}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_transaction_pooler_turns_server_side_cursors_off(tmp_path: Path) -> None:
    code = "print(settings.DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS'])"
    assert _settings_of(tmp_path, code).stdout.strip() == "False"
    pooled = _settings_of(tmp_path, code, KMS_DB_TRANSACTION_POOLER="true")
    assert pooled.stdout.strip() == "True", pooled.stderr


def test_a_storage_alias_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    result = _settings_of(tmp_path, "settings.DEBUG", KMS_MODEL_STORAGE="bucket")
    assert result.returncode != 0
    assert "KMS_MODEL_STORAGE='bucket' names no storage; use one of default" in result.stderr
