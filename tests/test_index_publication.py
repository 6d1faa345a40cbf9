"""BM25 indexes published through PostgreSQL: versions in order, staleness from database
facts, and nodes that keep serving through a damaged artifact, an unreachable store or a
deleted cache directory."""

from __future__ import annotations

import shutil
import threading

import pytest
from django.db import connection
from django.utils import timezone

from kms.store.models import Document, Domain, LexicalIndex, LexicalIndexPart
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_cache, index_store
from search.retrieval.search import search
from tests.conftest import OPERATOR

TEXTS = {
    "sepsis": "Sepsis screening uses NEWS2; a score of five triggers review.",
    "warfarin": "Warfarin dosing follows the INR; target range two to three.",
    "insulin": "Insulin infusions need hourly capillary glucose monitoring.",
}


def _add(domain: Domain, name: str, text: str) -> None:
    result = add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                          content=f"# {name.title()}\n\n{text}\n".encode(), queue=False)
    process_inline([result.version_id])


@pytest.fixture
def served(domain: Domain, settings, tmp_path) -> Domain:
    settings.KMS_INDEX_DIR = tmp_path / "node-cache"
    settings.KMS_BM25_RETRY_SECONDS = 0
    index_cache.forget()
    for name, text in TEXTS.items():
        _add(domain, name, text)
    yield domain
    index_cache.forget()


def _bm25(query: str):
    return search(query, domain="healthcare", mode="bm25", access=OPERATOR)


@pytest.mark.django_db
def test_versions_move_forward_and_old_ones_go_after_the_grace_period(served, settings) -> None:
    index_store.build_index(served)
    index_store.build_index(served)
    rows = LexicalIndex.objects.filter(domain=served, level="chunks").order_by("version")
    assert [row.version for row in rows] == [1, 2]
    assert rows[1].entries == 3 and rows[1].parts.count() == 1 and len(rows[1].checksum) == 64
    assert index_cache.current_index("healthcare").version == "2"
    cached = list((settings.KMS_INDEX_DIR / "bm25" / "healthcare" / "chunks").glob("*.npz"))
    assert [path.name.split("-")[0] for path in cached] == ["2"]

    settings.KMS_BM25_GRACE_SECONDS = 3600
    index_store.build_index(served)
    assert LexicalIndex.objects.filter(domain=served, level="chunks").count() == 3
    settings.KMS_BM25_GRACE_SECONDS = 0
    index_store.build_index(served)
    versions = LexicalIndex.objects.filter(domain=served, level="chunks").values_list(
        "version", flat=True)
    assert sorted(versions) == [3, 4]
    assert not LexicalIndexPart.objects.filter(index__version__lt=3, index__domain=served).exists()


@pytest.mark.django_db
def test_staleness_is_decided_by_database_facts_alone(served) -> None:
    assert index_store.stale_domains([served.pk]) == {served.pk}  # served, never built
    index_store.build_index(served)
    assert index_store.stale_domains([served.pk]) == set()
    assert index_store.build_index(served, only_if_stale=True) is None

    Document.objects.get(source="warfarin.md").delete()
    assert index_store.stale_domains([served.pk]) == {served.pk}
    assert _bm25("warfarin").documents == []  # the old index's hit is filtered, not served
    index_store.build_index(served, only_if_stale=True)
    assert index_store.stale_domains([served.pk]) == set()
    assert index_cache.current_index("healthcare").version == "2"

    Document.objects.filter(source="insulin.md").update(
        title="Insulin", updated_at=timezone.now())
    assert index_store.stale_domains([served.pk]) == {served.pk}


@pytest.mark.django_db(transaction=True)
def test_overlapping_refreshes_publish_in_order_and_never_expose_a_partial_artifact(
    domain: Domain, settings, tmp_path, caplog
) -> None:
    settings.KMS_INDEX_DIR = tmp_path / "node-cache"
    settings.KMS_BM25_GRACE_SECONDS = 3600
    index_cache.forget()
    for name, text in TEXTS.items():
        _add(domain, name, text)
    seen: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def refresh(number: int) -> None:
        """Half build only if stale (skipping when a build already covered the change), half
        are forced builds, so at least ten versions overlap."""
        try:
            Document.objects.filter(source="sepsis.md").update(
                title=f"Sepsis {number}", updated_at=timezone.now())
            index_store.build_index(domain, only_if_stale=not number % 2)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    def read() -> None:
        try:
            while not done.is_set():
                index = index_cache.current_index("healthcare")
                if index is not None:
                    assert len(index) == 3
                    seen.append(index.version)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    reader = threading.Thread(target=read)
    reader.start()
    runs = [threading.Thread(target=refresh, args=(n,)) for n in range(20)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    done.set()
    reader.join(30)
    assert errors == []
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == []  # no bad loads
    assert len(seen) > 20
    rows = list(LexicalIndex.objects.filter(domain=domain, level="chunks").order_by("pk"))
    versions = [row.version for row in rows]
    assert versions == list(range(1, len(rows) + 1)) and len(rows) >= 10
    watermarks = [row.watermark for row in rows]
    assert watermarks == sorted(watermarks)
    assert [int(v) for v in seen] == sorted(int(v) for v in seen)
    assert index_store.stale_domains([domain.pk]) == set()
    latest = rows[-1]
    assert index_cache.current_index("healthcare").version == str(latest.version)
    index_cache.forget()


@pytest.mark.django_db(transaction=True)
def test_a_refresh_never_waits_on_another_nodes_build(domain: Domain, settings, tmp_path):
    """The task asks ``wait=False``: a worker slot is not spent idling on the lock."""
    settings.KMS_INDEX_DIR = tmp_path / "node-cache"
    _add(domain, "sepsis", TEXTS["sepsis"])
    holding, release = threading.Event(), threading.Event()

    def other_node() -> None:
        from django.db import transaction

        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                               [index_store._LOCK_CLASS, domain.pk])
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=other_node)
    thread.start()
    try:
        assert holding.wait(30)
        with pytest.raises(index_store.BuildInProgress, match="healthcare"):
            index_store.build_index(domain, wait=False)
    finally:
        release.set()
        thread.join(30)
    assert index_store.build_index(domain, wait=False) is not None
    index_cache.forget()


@pytest.mark.django_db
def test_a_damaged_artifact_is_never_served_and_search_says_so(
    served, settings, caplog
) -> None:
    settings.KMS_BM25_GRACE_SECONDS = 0
    index_store.build_index(served)
    first = LexicalIndex.objects.get(domain=served, level="chunks", version=1)
    LexicalIndexPart.objects.filter(index=first).update(data=b"not an index")
    index_cache.forget()

    response = _bm25("warfarin")
    assert response.documents == []
    assert "Keyword search (BM25) is unavailable" in response.message
    assert "the server log says why" in response.message
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "failed its checksum" in logged and "refresh_bm25" in logged

    index_store.build_index(served)  # recovers by itself with the next version
    assert _bm25("warfarin").documents[0].source == "warfarin.md"
    second = LexicalIndex.objects.get(domain=served, level="chunks", version=2)
    LexicalIndexPart.objects.filter(index=second).update(data=b"damaged")
    _add(served, "stroke", "Thrombolysis within four and a half hours.")
    index_store.build_index(served)
    third = LexicalIndex.objects.get(domain=served, level="chunks", version=3)
    LexicalIndexPart.objects.filter(index=third).update(data=b"damaged too")
    index_cache.forget()  # a node starting now: version 3 and 2 are damaged, 1 is gone
    assert LexicalIndex.objects.filter(domain=served, level="chunks").count() == 2
    assert "Keyword search (BM25) is unavailable" in _bm25("warfarin").message


@pytest.mark.django_db
def test_a_node_serves_the_last_good_version_while_the_store_is_unreachable(
    served, settings, tmp_path
) -> None:
    store = tmp_path / "object-store"
    settings.STORAGES = {**settings.STORAGES, "bm25": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(store)}}}
    settings.KMS_BM25_ARTIFACT_STORAGE = "bm25"
    index_store.build_index(served)
    row = LexicalIndex.objects.get(domain=served, level="chunks", version=1)
    assert row.storage_name and (store / row.storage_name).is_file()
    assert not row.parts.exists()
    assert _bm25("insulin").documents[0].source == "insulin.md"

    _add(served, "stroke", "Thrombolysis within four and a half hours.")
    index_store.build_index(served)
    store.rename(tmp_path / "away")  # the store is unreachable
    response = _bm25("insulin")
    assert response.documents[0].source == "insulin.md" and response.bm25_index_version == "1"
    assert _bm25("thrombolysis").documents == []

    (tmp_path / "away").rename(store)  # back: the next search loads version 2
    response = _bm25("thrombolysis")
    assert response.documents[0].source == "stroke.md" and response.bm25_index_version == "2"


@pytest.mark.django_db
def test_a_deleted_cache_directory_changes_nothing_for_search(served, settings) -> None:
    index_store.build_index(served)
    assert _bm25("sepsis").documents[0].source == "sepsis.md"
    shutil.rmtree(settings.KMS_INDEX_DIR)
    assert _bm25("sepsis").documents[0].source == "sepsis.md"  # from memory

    index_cache._loaded.clear()  # a restarted process with no cache: fetched again
    assert _bm25("sepsis").documents[0].source == "sepsis.md"
    assert list((settings.KMS_INDEX_DIR / "bm25" / "healthcare").glob("*/*.npz"))
