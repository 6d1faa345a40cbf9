"""Encoder backends: ONNX exports of the real local model, run by ONNX Runtime.

Exports are made from the model the package ships (no hub). One export per backend is made
into a temporary cache for this module; the corruption test works on a copy of it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from kms.store.models import Chunk, ChunkVector, Domain
from search.ingestion.embedding import Embedder, checked_model_path, get_embedder
from search.ingestion.encoders.onnx_export import PROBE_TEXTS, export_directory, model_checksum
from search.retrieval import index_store
from search.retrieval.search import search
from tests.conftest import OPERATOR
from tests.test_pipeline import GUIDE, ingest

TEXTS = [
    "Screen every adult with a suspected infection using NEWS2.",
    "sepsis review",
    "Quarterly VAT returns are due one month and seven days after the period ends.",
    "A long passage. " * 200,  # past the 256-token limit: truncated like torch does
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.fixture
def exports(settings, cache_dir: Path) -> Path:
    settings.KMS_ENCODER_CACHE_DIR = cache_dir
    return cache_dir


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Embedder(checked_model_path(), "torch").encode(TEXTS)


def test_onnx_matches_torch_and_shares_its_space(exports, torch_vectors) -> None:
    torch_embedder = Embedder(checked_model_path(), "torch")
    onnx = Embedder(checked_model_path(), "onnx")
    vectors = onnx.encode(TEXTS)
    assert onnx.backend_used == "onnx"
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(vectors * torch_vectors, axis=1)) > 0.9999
    assert onnx.version == torch_embedder.version  # same space: no re-embedding needed
    manifest = onnx.encoder.export.manifest
    assert manifest["source_sha256"] == model_checksum(checked_model_path())
    assert manifest["agreement"]["texts"] == len(PROBE_TEXTS)


def test_int8_is_close_to_torch_but_a_space_of_its_own(exports, torch_vectors) -> None:
    int8 = Embedder(checked_model_path(), "onnx-int8")
    vectors = int8.encode(TEXTS)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert 0.98 < cosines.min() < 0.9999
    assert int8.version.endswith("+onnx-int8")
    assert int8.version.split("+")[0] == Embedder(checked_model_path(), "torch").version
    # the quantised graph really is smaller than the float one
    directory = int8.encoder.export.directory
    assert (directory / "model.onnx").stat().st_size < 0.8 * (
        directory.parent / "onnx" / "model.onnx").stat().st_size


def test_an_export_is_made_once_and_reused(exports) -> None:
    first = Embedder(checked_model_path(), "onnx-int8").encoder.export
    stamp = (first.model_file.stat().st_mtime_ns, first.manifest["created"])
    again = Embedder(checked_model_path(), "onnx-int8").encoder.export
    assert (again.model_file.stat().st_mtime_ns, again.manifest["created"]) == stamp


def test_a_corrupted_export_is_made_again_not_run(settings, exports, tmp_path,
                                                  torch_vectors, caplog) -> None:
    source = export_directory(checked_model_path(), "onnx",
                              exports, model_checksum(checked_model_path()))
    Embedder(checked_model_path(), "onnx").encoder  # noqa: B018 - make sure it exists
    copy = tmp_path / "cache"
    shutil.copytree(source.parent, copy / source.parent.name)
    broken = copy / source.parent.name / "onnx" / "model.onnx"
    data = bytearray(broken.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # zero a stretch of weights
    broken.write_bytes(bytes(data))
    settings.KMS_ENCODER_CACHE_DIR = copy
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(checked_model_path(), "onnx")
        vectors = embedder.encode(TEXTS)
    assert "does not match its manifest" in caplog.text
    assert embedder.backend_used == "onnx"
    assert np.min(np.sum(vectors * torch_vectors, axis=1)) > 0.9999


def test_an_export_of_another_model_is_not_used(exports) -> None:
    embedder = Embedder(checked_model_path(), "onnx")
    manifest_file = embedder.encoder.export.directory / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    from search.ingestion.encoders.onnx_export import load_export

    assert load_export(manifest_file.parent, manifest["source_sha256"]) is not None
    assert load_export(manifest_file.parent, "0" * 64) is None


def test_without_onnxruntime_the_backend_falls_back_to_torch(monkeypatch, exports,
                                                            torch_vectors, caplog) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(checked_model_path(), "onnx-int8")
        vectors = embedder.encode(TEXTS)
    assert "KMS_EMBEDDING_BACKEND=onnx-int8 is not available" in caplog.text
    assert "pip install onnxruntime" in caplog.text
    assert embedder.backend_used == "torch"
    assert "+" not in embedder.version  # its vectors are torch's, and say so
    np.testing.assert_allclose(vectors, torch_vectors, atol=1e-6)


def test_an_unknown_backend_is_refused(settings) -> None:
    from search.apps import check_embedding_model

    with pytest.raises(ValueError, match="Unknown embedding backend 'gpu'"):
        get_embedder(backend="gpu")
    settings.KMS_EMBEDDING_BACKEND = "gpu"
    assert [error.id for error in check_embedding_model()] == ["kms.E002"]


@pytest.mark.django_db
def test_a_backend_change_fills_a_new_space_beside_the_served_one(domain: Domain, settings,
                                                                  capsys) -> None:
    version = ingest(domain, "sepsis.md", GUIDE.encode())
    for n, text in enumerate(["Invoices are paid within thirty days.",
                              "Fire doors stay closed at all times."]):
        ingest(domain, f"other-{n}.md", text.encode())  # BM25 needs a corpus to weigh terms
    index_store.build_index(domain)
    query = "paediatric early warning score"

    def dense_hits() -> int:
        hits = search(query, domain=domain, access=OPERATOR, mode="dense").documents
        return sum(hit.document_id == version.document_id for hit in hits)

    assert dense_hits() == 1
    domain.refresh_from_db()
    served = domain.embedding_space
    settings.KMS_EMBEDDING_BACKEND = "torch" if served.backend != "torch" else "onnx-int8"
    call_command("reembed", "--dry-run")
    out = capsys.readouterr().out
    domain.refresh_from_db()
    target = domain.next_space
    assert target is not None and target != served and target.backend != served.backend
    assert f"{target.name} {Chunk.objects.filter(domain=domain, is_current=True).count()}" in out
    assert domain.embedding_space == served and dense_hits() == 1  # still the old vectors

    call_command("reembed", "--domain", domain.slug)
    assert f"now serves {target.name}" in capsys.readouterr().out
    domain.refresh_from_db()
    assert domain.embedding_space == target and domain.next_space is None
    assert dense_hits() == 1
    for chunk in Chunk.objects.filter(domain=domain, is_current=True):
        assert set(chunk.vectors.values_list("space", flat=True)) == {served.pk, target.pk}

    ChunkVector.objects.filter(chunk__version=version, space=target).delete()
    assert dense_hits() == 0  # its other space's vectors are never compared with this query
    assert search(query, domain=domain, access=OPERATOR, mode="bm25").documents
