"""Uploaded originals through Django's storage API, on a real S3-compatible server."""

from __future__ import annotations

import pytest

from kms.store.models import DocumentVersion, Status
from search.ingestion.documents import add_document, reprocess
from search.ingestion.progress import process_inline
from search.retrieval import index_store
from search.retrieval.search import search
from tests.conftest import OPERATOR, S3Store

pytestmark = pytest.mark.django_db

POLICY = b"# Hand hygiene\n\nUse alcohol rub for twenty seconds before every patient contact.\n"


def test_originals_live_in_the_object_store_and_are_read_back_from_it(
    s3_store: S3Store, domain, settings, tmp_path
) -> None:
    settings.MEDIA_ROOT = tmp_path / "node-media"  # must stay empty: no local copy
    result = add_document(domain, uploader=OPERATOR, source="hh.md", filename="hh.md",
                          content=POLICY, queue=False)
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert s3_store.object_keys() == [version.file.name]
    others = [add_document(domain, uploader=OPERATOR, source=f"{n}.md", filename=f"{n}.md",
                           content=f"# {n}\n\nReview {n} daily.\n".encode(), queue=False)
              for n in ("falls", "sedation")]  # BM25's idf needs terms in under half
    process_inline([result.version_id] + [o.version_id for o in others])
    version.refresh_from_db()
    assert version.status == Status.READY, version.status_message
    index_store.build_index(domain)
    hits = search("patient contact", domain="healthcare", mode="bm25", access=OPERATOR)
    assert [hit.source for hit in hits.documents] == ["hh.md"]
    assert not (tmp_path / "node-media").exists()

    s3_store.client().delete_object(Bucket=s3_store.bucket, Key=version.file.name)
    reprocess([result.version_id])
    process_inline([result.version_id])
    version.refresh_from_db()
    assert version.status == Status.FAILED
    assert f"missing from the file store (S3 bucket {s3_store.bucket})" in version.status_message
    assert search("patient contact", domain="healthcare", mode="bm25",
                  access=OPERATOR).documents[0].source == "hh.md"  # still served


def test_bm25_artifacts_can_live_beside_the_files(s3_store: S3Store, domain, settings) -> None:
    settings.KMS_BM25_ARTIFACT_STORAGE = "default"
    result = add_document(domain, uploader=OPERATOR, source="hh.md", filename="hh.md",
                          content=POLICY, queue=False)
    process_inline([result.version_id])
    index_store.build_index(domain)
    artifacts = [key for key in s3_store.object_keys() if key.startswith("bm25/healthcare/")]
    assert sorted(key.split("/")[2] for key in artifacts) == ["chunks", "documents"]


def test_an_unreachable_object_store_is_retried_not_blamed_on_the_file(
    s3_store: S3Store, domain, settings, monkeypatch
) -> None:
    import socket

    from botocore.exceptions import EndpointConnectionError

    from search.ingestion.pipeline import parse_versions

    result = add_document(domain, uploader=OPERATOR, source="hh.md", filename="hh.md",
                          content=POLICY, queue=False)
    with socket.socket() as probe:  # a port nothing listens on: the store is down
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    options = settings.STORAGES["default"]["OPTIONS"]
    settings.STORAGES = {**settings.STORAGES, "default": {
        **settings.STORAGES["default"], "OPTIONS": {**options, "endpoint_url": dead}}}
    with pytest.raises(EndpointConnectionError):
        parse_versions([result.version_id])  # the task retries this (TRANSIENT_ERRORS)
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status != Status.FAILED and version.attempts == 0
