"""At most one pending BM25 rebuild per domain, whichever node or process asks for it."""

from __future__ import annotations

from django.conf import settings


def claim_refresh(domain_id: int) -> bool:
    """Whether this caller should queue the domain's rebuild: at most one pending at a time.

    The pending marker is cleared when the build starts (``clear_pending``), so documents that
    become ready during a build trigger the next one: a ready document is findable by BM25
    within KMS_BM25_REFRESH_SECONDS plus one build (seconds for 10,000s of chunks). It also
    expires soon after the task was due, so a task lost with a killed worker holds up the
    next refresh by that long at most (a duplicate task costs nothing: it finds the index
    fresh or the build running).
    """
    import redis

    client = redis.Redis.from_url(_redis_py_url(settings.REDIS_URL))
    delay = settings.KMS_BM25_REFRESH_SECONDS
    return bool(client.set(pending_key(domain_id), "1", nx=True, ex=max(delay * 3, 30)))


def pending_key(domain_id: int) -> str:
    """Namespaced by database, so installations (and test runs) sharing a Redis never clash."""
    from django.db import connection

    return f"kms:{connection.settings_dict['NAME']}:bm25-refresh-pending:{domain_id}"


def clear_pending(domain_id: int) -> None:
    import redis

    redis.Redis.from_url(_redis_py_url(settings.REDIS_URL)).delete(pending_key(domain_id))


def _redis_py_url(url: str) -> str:
    """kombu's ``redis+socket://`` spelling as redis-py's ``unix://``."""
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+") else url
