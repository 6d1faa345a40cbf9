"""Trained models reach other nodes through the storage API (a real S3-compatible server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from kms.store import model_files
from kms.store.models import EmbeddingSpace, ModelRun
from search.ingestion import spaces
from search.ingestion.embedding import Embedder
from tests.conftest import S3Store
from tuning import registry

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(s3_store: S3Store, settings, tmp_path) -> Path:
    """A run directory under KMS_MODELS_DIR, published to the bucket by the "trainer"."""
    settings.KMS_MODELS_DIR = (tmp_path / "models").resolve()
    settings.KMS_MODEL_STORAGE = "default"
    directory = settings.KMS_MODELS_DIR / "healthcare" / "embedder-7"
    shutil.copytree(django_settings.KMS_EMBEDDING_MODEL, directory)
    assert model_files.publish(directory) == "models/healthcare/embedder-7.tar"
    assert s3_store.object_keys() == ["models/healthcare/embedder-7.tar"]
    return directory


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_node_without_the_directory_fetches_the_published_model(trained: Path) -> None:
    space = spaces.space_of(Embedder(trained, "torch"))
    original = _files(trained)
    shutil.rmtree(trained)  # node B: same KMS_MODELS_DIR path, nothing in it
    embedder = spaces.embedder_for(space)
    assert embedder.version == space.name
    assert _files(trained) == original
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".fetch-")]


def test_a_run_whose_files_are_gone_here_is_fetched_for_promotion(trained: Path, domain) -> None:
    run = ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.RERANKER,
                                  state=ModelRun.State.REJECTED, model_dir=str(trained))
    shutil.rmtree(trained)
    registry.promote(run)
    assert (trained / "config.json").is_file()
    run.refresh_from_db()
    assert run.state == ModelRun.State.PROMOTED


def test_a_run_in_no_store_is_reported_missing(trained: Path, domain, s3_store: S3Store) -> None:
    run = ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.RERANKER,
                                  state=ModelRun.State.REJECTED, model_dir=str(trained))
    shutil.rmtree(trained)
    s3_store.client().delete_object(Bucket=s3_store.bucket, Key="models/healthcare/embedder-7.tar")
    with pytest.raises(registry.RegistryError, match="files of run .* are missing"):
        registry.promote(run)


def test_a_damaged_archive_says_what_to_check_and_leaves_no_half_model(
    trained: Path, s3_store: S3Store
) -> None:
    space = spaces.space_of(Embedder(trained, "torch"))
    shutil.rmtree(trained)
    s3_store.client().put_object(Bucket=s3_store.bucket, Key="models/healthcare/embedder-7.tar",
                                 Body=b"not a tar archive" * 100)
    with pytest.raises(spaces.SpaceUnavailable, match="KMS_MODEL_STORAGE"):
        spaces.embedder_for(space)
    assert not trained.exists()
    assert [p.name for p in trained.parent.iterdir()] == [".embedder-7.lock"]  # no half model


def test_without_a_model_store_nothing_is_published_or_fetched(settings, tmp_path) -> None:
    settings.KMS_MODELS_DIR = (tmp_path / "models").resolve()
    settings.KMS_MODEL_STORAGE = ""
    directory = settings.KMS_MODELS_DIR / "run-1"
    shutil.copytree(django_settings.KMS_EMBEDDING_MODEL, directory)
    assert model_files.publish(directory) is None
    shutil.rmtree(directory)
    assert model_files.ensure_local(directory) is False
    assert model_files.storage_name(Path(django_settings.KMS_EMBEDDING_MODEL)) is None


def test_runs_trained_before_the_store_are_published_by_the_command(
    trained: Path, domain, s3_store: S3Store
) -> None:
    s3_store.client().delete_object(Bucket=s3_store.bucket, Key="models/healthcare/embedder-7.tar")
    ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.RERANKER,
                            state=ModelRun.State.PROMOTED, model_dir=str(trained))
    ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.EMBEDDER,
                            state=ModelRun.State.RETIRED, model_dir=str(trained.parent / "gone"))
    call_command("publish_models")
    assert s3_store.object_keys() == ["models/healthcare/embedder-7.tar"]


def test_an_unreachable_store_is_noted_on_the_run_not_fatal(trained: Path, domain, settings
                                                            ) -> None:
    settings.STORAGES = {**settings.STORAGES, "default": {
        **settings.STORAGES["default"],
        "OPTIONS": {**settings.STORAGES["default"]["OPTIONS"],
                    "endpoint_url": "http://127.0.0.1:9"}}}  # nothing listens there
    run = ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.RERANKER,
                                  state=ModelRun.State.TRAINING, model_dir=str(trained))
    registry.finish(run, model_dir=trained, data_counts={}, loss_curve=[], metrics={},
                    passed=True)
    run.refresh_from_db()
    assert run.state == ModelRun.State.PROMOTED
    assert "Not published to the model store" in run.message
    shutil.rmtree(trained)
    with pytest.raises(spaces.SpaceUnavailable, match="KMS_MODEL_STORAGE"):
        spaces.embedder_for(EmbeddingSpace(name="x", model_path=str(trained), backend="torch",
                                           dimensions=384))
