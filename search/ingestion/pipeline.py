"""Document processing: parse, chunk, embed, and the status each version moves through.

Every step is idempotent and works on a batch, so Celery can redeliver a task after a worker
dies (``acks_late``) and the version still ends with exactly one set of chunks:

* ``parse_versions``: stored file -> extracted text and structure (pending -> processing);
* ``chunk_versions``: text -> chunks without vectors (replaces any earlier chunks);
* ``embed_pending``: vectors for chunks that lack one, in batches across documents
  (``SKIP LOCKED``, so several workers share the work), then marks finished versions ready.

A file that cannot be parsed fails its version with the reason; the document keeps serving
its previous ready version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from kms.store.models import Chunk, Document, DocumentVersion, Status
from search.ingestion import signals
from search.ingestion.chunking import chunk_document, load_tokenizer
from search.ingestion.embedding import checked_model_path, get_embedder, passage_text
from search.ingestion.parsing import (
    Block,
    Page,
    ParsedDocument,
    ParseError,
    detect_media_type,
    parse,
)

logger = logging.getLogger(__name__)

OPEN_STATES = (Status.PENDING, Status.PROCESSING)


def parse_versions(version_ids: Iterable[int]) -> list[int]:
    """Extract text and structure; returns the ids that parsed (the others failed)."""
    ids = list(version_ids)
    versions = list(
        DocumentVersion.objects.filter(pk__in=ids, status__in=OPEN_STATES).select_related(
            "document"
        )
    )
    if not versions:
        return []
    _mark_processing(versions)
    parsed_ok: list[DocumentVersion] = []
    for version in versions:
        try:
            data = _read_file(version)
            version.media_type = version.media_type or detect_media_type(data, version.filename)
            parsed = parse(data, version.filename, version.media_type)
        except ParseError as exc:
            fail_version(version.pk, str(exc))
            continue
        version.extracted_text = parsed.text
        version.structure = {
            "title": parsed.title,
            "blocks": [[b.start, b.end, b.kind, b.level] for b in parsed.blocks],
            "pages": [[p.number, p.start, p.end] for p in parsed.pages],
        }
        version.page_count = len(parsed.pages) or None
        parsed_ok.append(version)
        document = version.document
        if parsed.title and document.title == default_title(version.filename):
            Document.objects.filter(pk=document.pk).update(title=parsed.title[:500])
    DocumentVersion.objects.bulk_update(
        parsed_ok, ["extracted_text", "structure", "page_count", "media_type"], batch_size=200
    )
    return [v.pk for v in parsed_ok]


def chunk_versions(version_ids: Iterable[int]) -> list[int]:
    """Replace each parsed version's chunks with a fresh set (without vectors yet)."""
    ids = list(version_ids)
    chunked: list[int] = []
    with transaction.atomic():
        versions = list(
            DocumentVersion.objects.select_for_update(of=("self",))
            .filter(pk__in=ids, status=Status.PROCESSING)
            .exclude(structure={})
            .select_related("document__domain")
            .order_by("pk")
        )
        new_chunks: list[Chunk] = []
        failed: list[tuple[int, str]] = []
        for version in versions:
            domain = version.document.domain
            pieces = chunk_document(
                parsed_from_version(version),
                load_tokenizer(_tokenizer_path()),
                max_tokens=domain.effective_chunk_tokens,
                overlap_tokens=domain.effective_chunk_overlap,
            )
            if not pieces:
                failed.append((version.pk, "The document has no text to index."))
                continue
            chunked.append(version.pk)
            new_chunks.extend(
                Chunk(
                    document_id=version.document_id,
                    version_id=version.pk,
                    domain_id=domain.pk,
                    is_current=version.pk == version.document.current_version_id,
                    ordinal=piece.ordinal,
                    text=piece.text,
                    start_offset=piece.start,
                    end_offset=piece.end,
                    page=piece.page,
                    page_end=piece.page_end,
                    heading=piece.heading[:1000],
                    token_count=piece.token_count,
                )
                for piece in pieces
            )
        Chunk.objects.filter(version_id__in=[v.pk for v in versions]).delete()
        Chunk.objects.bulk_create(new_chunks, batch_size=500)
    for version_id, reason in failed:
        fail_version(version_id, reason)
    return chunked


def embed_pending(claim_size: int | None = None, time_budget: float = 60.0) -> tuple[int, bool]:
    """Embed chunks that have no vector yet, batch by batch, for up to ``time_budget`` s.

    Claims are larger than one forward pass so the model can sort texts by length and pad
    little. Returns (chunks embedded, whether more are waiting). Rows are claimed with
    ``FOR UPDATE SKIP LOCKED`` so concurrent workers never embed the same chunk twice, and a
    worker that dies releases its claim with its connection.
    """
    from django.conf import settings

    embedder = get_embedder()
    size = claim_size or settings.KMS_EMBED_CLAIM_SIZE
    started = time.monotonic()
    total = 0
    while True:
        with transaction.atomic():
            rows = list(
                Chunk.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(embedding__isnull=True)
                .select_related("document")
                .order_by("pk")[:size]
            )
            if not rows:
                return total, False
            vectors = embedder.encode(
                [passage_text(c.document.title, c.heading, c.text) for c in rows]
            )
            now = timezone.now()
            for chunk, vector in zip(rows, vectors, strict=True):
                chunk.embedding = vector
                chunk.embedding_model = embedder.version
                chunk.embedded_at = now
            Chunk.objects.bulk_update(rows, ["embedding", "embedding_model", "embedded_at"])
        total += len(rows)
        finalize_versions({c.version_id for c in rows})
        if time.monotonic() - started > time_budget:
            return total, Chunk.objects.filter(embedding__isnull=True).exists()


def finalize_versions(version_ids: Iterable[int]) -> list[int]:
    """Mark processing versions whose chunks all have vectors ready, and serve them."""
    ready = list(
        DocumentVersion.objects.filter(pk__in=list(version_ids), status=Status.PROCESSING)
        .filter(chunks__isnull=False)
        .exclude(chunks__embedding__isnull=True)
        .distinct()
        .values_list("pk", flat=True)
    )
    for version_id in ready:
        with transaction.atomic():
            version = (
                DocumentVersion.objects.select_for_update()
                .filter(pk=version_id, status=Status.PROCESSING)
                .first()
            )
            if version is None:
                continue
            version.status = Status.READY
            version.status_message = ""
            version.processed_at = timezone.now()
            version.save(update_fields=["status", "status_message", "processed_at"])
            _sync_document(version.document_id)
    if ready:
        domain_ids = set(
            DocumentVersion.objects.filter(pk__in=ready).values_list(
                "document__domain_id", flat=True
            )
        )
        signals.send_on_commit(signals.versions_served, domain_ids=domain_ids)
    return ready


def fail_version(version_id: int, reason: str) -> None:
    """Record why a version failed; the document keeps serving its last ready version."""
    logger.info("Version %s failed: %s", version_id, reason)
    with transaction.atomic():
        updated = DocumentVersion.objects.filter(pk=version_id).exclude(status=Status.READY)
        document_ids = list(updated.values_list("document_id", flat=True))
        updated.update(
            status=Status.FAILED, status_message=reason[:2000], processed_at=timezone.now()
        )
        Chunk.objects.filter(version_id=version_id).delete()
        for document_id in document_ids:
            _sync_document(document_id)


def reset_versions(version_ids: Iterable[int]) -> int:
    """Put versions back to pending so the pipeline runs them again from the stored file."""
    ids = list(version_ids)
    with transaction.atomic():
        count = DocumentVersion.objects.filter(pk__in=ids).update(
            status=Status.PENDING, status_message=""
        )
        for document_id in set(
            DocumentVersion.objects.filter(pk__in=ids).values_list("document_id", flat=True)
        ):
            _sync_document(document_id)
    return count


def clear_embeddings(version_ids: Iterable[int]) -> int:
    """Drop the vectors of ready versions so ``embed_pending`` computes them again.

    The versions go back to processing until re-embedded; the chunks and their text stay.
    """
    ids = list(version_ids)
    with transaction.atomic():
        count = Chunk.objects.filter(version_id__in=ids).update(
            embedding=None, embedding_model="", embedded_at=None
        )
        DocumentVersion.objects.filter(pk__in=ids, status=Status.READY).update(
            status=Status.PROCESSING
        )
        for document_id in set(
            DocumentVersion.objects.filter(pk__in=ids).values_list("document_id", flat=True)
        ):
            _sync_document(document_id)
    return count


def stalled_versions(older_than_seconds: int) -> list[int]:
    """Versions still open long after upload: their task was lost (broker restart, purge)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return list(
        DocumentVersion.objects.filter(status__in=OPEN_STATES, created_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def parsed_from_version(version: DocumentVersion) -> ParsedDocument:
    """Rebuild the parse result stored on a version (re-chunking needs no re-parse)."""
    structure = version.structure
    return ParsedDocument(
        text=version.extracted_text,
        blocks=[Block(s, e, kind, level) for s, e, kind, level in structure.get("blocks", [])],
        pages=[Page(n, s, e) for n, s, e in structure.get("pages", [])],
        title=structure.get("title"),
    )


def default_title(filename: str) -> str:
    """A readable title from a file name, used until the parser finds a real one."""
    stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or filename


def _read_file(version: DocumentVersion) -> bytes:
    if not version.file:
        raise ParseError("No file is stored for this version.")
    try:
        with version.file.open("rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise ParseError(
            f"The stored file {version.file.name} is missing from KMS_DATA_DIR/media; "
            "upload the document again."
        ) from exc


def _mark_processing(versions: list[DocumentVersion]) -> None:
    with transaction.atomic():
        DocumentVersion.objects.filter(pk__in=[v.pk for v in versions]).update(
            status=Status.PROCESSING, status_message=""
        )
        Document.objects.filter(pk__in={v.document_id for v in versions}).update(
            status=Status.PROCESSING, status_message=""
        )


def _sync_document(document_id: int) -> None:
    """Mirror the newest version's status on the document and serve its newest ready one."""
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if document is None:
        return
    versions = list(document.versions.order_by("-number"))
    if not versions:
        return
    newest = versions[0]
    served = next((v for v in versions if v.status == Status.READY), None)
    reprocessing = next(
        (v for v in versions if v.pk == document.current_version_id and v.status in OPEN_STATES),
        None,
    )
    if served is None or (reprocessing and reprocessing.number > served.number):
        served = reprocessing or served  # keep serving it while it is processed again
    document.status = newest.status
    document.status_message = newest.status_message
    if newest.status == Status.FAILED and served is not None:
        document.status_message = (
            f"Version {newest.number} failed: {newest.status_message} "
            f"Version {served.number} is still served."
        )
    chunks = Chunk.objects.filter(document_id=document.pk)
    chunks.filter(is_current=True).exclude(version=served).update(is_current=False)
    if served is not None:  # also marks chunks re-created while the version was reprocessed
        chunks.filter(version=served, is_current=False).update(is_current=True)
    document.current_version = served
    if served is not None:
        document.content_hash = served.content_hash
        document.media_type = served.media_type
    document.save(
        update_fields=["status", "status_message", "current_version", "content_hash",
                       "media_type", "updated_at"]
    )


def _tokenizer_path() -> str:
    """The embedding model's tokenizer counts chunk tokens, so budgets match the model."""
    return str(checked_model_path())


__all__ = [
    "chunk_versions",
    "clear_embeddings",
    "embed_pending",
    "fail_version",
    "finalize_versions",
    "parse_versions",
    "reset_versions",
    "stalled_versions",
]
