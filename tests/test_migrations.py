"""The data migrations keep what was there: served chunks stay served, accounts see the same."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from kms.access import Access, visible_documents
from kms.store import models
from kms.store.models import Chunk, ChunkVector, Document, DocumentVersion
from search.ingestion import pipeline

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("store", "0003_chunk_domain_is_current")]


def migrate(target: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)
    return executor.loader.project_state(target).apps


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def test_accounts_and_served_chunks_survive_the_migrations(django_user_model) -> None:
    old = migrate(BEFORE)
    Domain, Document_, Version, Chunk_ = (old.get_model("store", name) for name in (
        "Domain", "Document", "DocumentVersion", "Chunk"))
    Group, User = old.get_model("auth", "Group"), old.get_model("auth", "User")
    healthcare = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    clinicians = Group.objects.create(name="clinicians")
    nurse = User.objects.create(username="nurse")
    nurse.groups.add(clinicians)
    User.objects.create(username="porter")
    served = {}
    # The third is being processed again: its chunks are still the ones served.
    for source, groups, status in (("open.md", [], "ready"), ("warfarin.md", [clinicians], "ready"),
                                   ("rota.md", [], "processing")):
        document = Document_.objects.create(domain=healthcare, title=source, source=source,
                                            status=status)
        document.access_groups.set(groups)
        version = Version.objects.create(document=document, number=1, filename=source,
                                         content_hash=source, size_bytes=1, status=status,
                                         extracted_text="Some text.")
        document.current_version = version
        document.save()
        chunk = Chunk_.objects.create(document=document, version=version, domain=healthcare,
                                      is_current=True, ordinal=0, text="Some text.",
                                      start_offset=0, end_offset=10, token_count=3)
        served[source] = chunk.pk

    migrate(latest())

    for source, chunk_id in served.items():
        chunk = Chunk.objects.get(pk=chunk_id)
        version = DocumentVersion.objects.get(pk=chunk.version_id)
        assert chunk.is_current and version.active_chunks_id == chunk.chunk_set_id, source
    sees = {
        name: set(visible_documents(Access.for_user(django_user_model.objects.get(
            username=name))).values_list("source", flat=True))
        for name in ("nurse", "porter")
    }
    assert sees == {"nurse": {"open.md", "warfarin.md", "rota.md"},
                    "porter": {"open.md", "rota.md"}}
    newcomer = django_user_model.objects.create_user("newcomer")
    assert not visible_documents(Access.for_user(newcomer)).exists()  # closed from now on
    assert Document.objects.count() == 3

    # Back again, with a set being built beside an active one: chunks are unique per version
    # again, and the served ones are what is kept.
    ready = DocumentVersion.objects.get(document__source="open.md")
    assert pipeline.rebuild_vectors([ready.pk]) == 1
    old = migrate(BEFORE)
    assert list(old.get_model("store", "Chunk").objects.filter(version_id=ready.pk)
                .values_list("pk", flat=True)) == [served["open.md"]]
    migrate(latest())


def test_vectors_move_into_embedding_spaces_and_back() -> None:
    old = migrate([("store", "0006_chunk_embedding_backend")])
    Domain, Document_, Version, ChunkSet_, Chunk_ = (old.get_model("store", name) for name in (
        "Domain", "Document", "DocumentVersion", "ChunkSet", "Chunk"))
    healthcare = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    document = Document_.objects.create(domain=healthcare, title="t", source="t.md",
                                        status="ready")
    version = Version.objects.create(document=document, number=1, filename="t.md",
                                     content_hash="t", size_bytes=1, status="ready")
    chunk_set = ChunkSet_.objects.create(version=version, state="active")
    vector = np.random.default_rng(0).normal(size=384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    chunk = Chunk_.objects.create(
        document=document, version=version, chunk_set=chunk_set, domain=healthcare,
        is_current=True, ordinal=0, text="Some text.", start_offset=0, end_offset=10,
        token_count=3, embedding=vector, embedding_model="model@0123456789ab+onnx-int8",
        embedding_backend="onnx-int8")

    migrate(latest())
    (moved,) = ChunkVector.objects.filter(chunk_id=chunk.pk).select_related("space")
    assert moved.space.name == "model@0123456789ab+onnx-int8"
    assert moved.space.backend == "onnx-int8" and moved.space.dimensions == 384
    np.testing.assert_allclose(np.asarray(moved.embedding), vector, atol=1e-6)
    assert models.Domain.objects.get(pk=healthcare.pk).embedding_space_id == moved.space_id
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                       [moved.space.index_name])
        assert f"WHERE (space_id = {moved.space_id})" in cursor.fetchone()[0]

    back = migrate([("store", "0006_chunk_embedding_backend")])
    restored = back.get_model("store", "Chunk").objects.get(pk=chunk.pk)
    assert restored.embedding_model == "model@0123456789ab+onnx-int8"
    np.testing.assert_allclose(np.asarray(restored.embedding), vector, atol=1e-6)
    migrate(latest())
