"""Embedded services for machines without PostgreSQL/Redis, and the demo corpus."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import redis
from django.db import connection

from kms import embedded
from search.ingestion.demo import demo_dir
from search.ingestion.parsing import parse


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
